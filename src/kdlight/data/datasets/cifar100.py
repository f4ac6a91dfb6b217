"""CIFAR-100 (fine labels): the CIFAR-10 data module with CIFAR-100's files and statistics."""

from __future__ import annotations

import os
from pathlib import Path

from kdlight.data.datasets import fetch
from kdlight.data.datasets.cifar10 import CIFAR10DataModule, CifarSpec, load_cifar
from kdlight.data.formats.arrays import ImageArrays
from kdlight.data.formats.cifar import NUM_CLASSES, read_cifar_pickles

BATCHES = "cifar-100-python"


def _cifar100_download(data_dir: Path) -> ImageArrays:
    """Download ``cifar-100-python.tar.gz`` (torchvision's URL, MD5-checked), then read it safely."""
    cifar100 = fetch.torchvision_dataset("CIFAR100")
    fetch.download_archive(cifar100.url, data_dir, cifar100.filename, cifar100.tgz_md5)
    return read_cifar_pickles(data_dir / BATCHES)


CIFAR100 = CifarSpec(
    "CIFAR-100",
    NUM_CLASSES,
    "cifar100-jpeg.tar.gz",
    "cifar100",
    BATCHES,
    "KDLIGHT_CIFAR100_ARCHIVE",
    originals=(f"{BATCHES}.tar.gz",),
    is_batches=lambda path: (
        (path.is_dir() and (path / "meta").is_file()) or path.name.startswith(BATCHES)
    ),
    read_batches=read_cifar_pickles,
    download=_cifar100_download,
)


def load_cifar100(
    data_dir: str | os.PathLike,
    download: bool = True,
    archive: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    progress: bool | None = None,
) -> ImageArrays:
    """Load CIFAR-100 (fine labels) from the first source found; uint8 (N, 3, 32, 32).

    Order: (a) ``archive`` when given: an image-folder tree or archive (``train/<class>/*``,
    ``test/<class>/*``; the 100 class names sort into the standard label order), a
    ``cifar-100-python/`` folder or the original ``cifar-100-python.tar.gz``; (b) in
    ``data_dir``: ``cifar100-jpeg.tar.gz``, ``cifar100/``, ``cifar-100-python/``,
    ``cifar-100-python.tar.gz``; (c) ``$KDLIGHT_CIFAR100_ARCHIVE``; (d) torchvision's download
    (URL and checksum of ``torchvision.datasets.CIFAR100``) into ``data_dir`` when
    ``download``. The pickles are read by :func:`read_cifar_pickles`, which never runs code.
    """
    return load_cifar(CIFAR100, data_dir, download, archive, cache_dir, progress, ())


class CIFAR100DataModule(CIFAR10DataModule):
    """CIFAR-100, 100 fine classes; everything but the source and statistics is CIFAR-10's.

    ``archive`` may name an image-folder tree or archive, a ``cifar-100-python/`` folder or
    the original ``cifar-100-python.tar.gz``; otherwise ``data_dir`` is searched, then
    torchvision's URL is downloaded. The pickles are read without running code
    (:func:`kdlight.data.formats.cifar.read_cifar_pickles`). Labelled fraction, unlabeled training,
    validation split, views and the teacher store behave as for CIFAR-10.
    """

    name = "cifar100"
    load = staticmethod(load_cifar100)

    def __init__(
        self,
        archive: str | None = None,
        mean=(0.5071, 0.4865, 0.4409),
        std=(0.2673, 0.2564, 0.2762),
        num_classes: int = 100,
        **kwargs,
    ) -> None:
        super().__init__(archive=archive, mean=mean, std=std, num_classes=num_classes, **kwargs)
