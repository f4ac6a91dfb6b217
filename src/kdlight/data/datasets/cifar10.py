"""CIFAR-10 (torchvision's format, or an image-folder tree / archive) as an :class:`ArrayDataModule`.

The search through ``archive``, ``data_dir``, an environment variable, shared archives and
torchvision's download (:func:`load_cifar`) is shared with CIFAR-100 (:mod:`.cifar100`) through
a :class:`CifarSpec`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from kdlight.data.datasets import fetch
from kdlight.data.formats.arrays import ImageArrays
from kdlight.data.formats.image_tree import load_image_folder
from kdlight.data.modules.array import ArrayDataModule
from kdlight.errors import DataError

CIFAR10_ARCHIVE_NAME = "cifar10-jpeg.tar.gz"
CIFAR10_ARCHIVE_ENV = "KDLIGHT_CIFAR10_ARCHIVE"
#: Shared image-folder archives tried after ``data_dir``: relative to the working directory,
#: then relative to a source checkout of kdlight.
CIFAR10_FALLBACK_ARCHIVES: tuple[Path, ...] = (
    Path("../shared/data") / CIFAR10_ARCHIVE_NAME,
    Path(__file__).resolve().parents[4].parent / "shared" / "data" / CIFAR10_ARCHIVE_NAME,
)
CIFAR10_CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)


@dataclass(frozen=True)
class CifarSpec:
    """What differs between CIFAR-10 and CIFAR-100 where they are looked for and checked.

    ``archive_name``/``folder``: an image-folder archive / tree in ``data_dir``; ``batches``:
    torchvision's pickle folder; ``originals``: further names tried in ``data_dir`` (CIFAR-100's
    ``<batches>.tar.gz``, the original download); ``env``: the variable naming an archive.
    ``is_batches(path)``: whether ``path`` is in the pickle format, read by
    ``read_batches(path)``; ``download(data_dir)``: torchvision's download, then read.
    """

    title: str
    num_classes: int
    archive_name: str
    folder: str
    batches: str
    env: str
    originals: tuple[str, ...]
    is_batches: Callable[[Path], bool]
    read_batches: Callable[[Path], ImageArrays]
    download: Callable[[Path], ImageArrays]


def load_cifar(
    spec: CifarSpec, data_dir, download: bool, archive, cache_dir, progress, fallbacks
) -> ImageArrays:
    """The first source of ``spec``'s dataset found (see :func:`load_cifar10`), or DataError listing each."""
    data_dir = Path(data_dir).expanduser()
    if archive is not None and str(archive) != "":
        path = Path(archive).expanduser()
        if not path.exists():
            raise DataError(
                f"data.archive={archive} does not exist; give a {spec.title} image-folder archive "
                f"(.tar.gz of train/<class>/*.jpg, test/<class>/*.jpg) or folder, or leave it "
                f"unset to use data_dir and torchvision."
            )
        return _cifar_from_path(spec, path, cache_dir, progress)

    looked: list[str] = []
    names = (spec.archive_name, spec.folder, spec.batches, *spec.originals)
    candidates = [data_dir / name for name in names]
    if os.environ.get(spec.env):
        candidates.append(Path(os.environ[spec.env]).expanduser())
    candidates += [p for p in fallbacks if p.resolve() not in {c.resolve() for c in candidates}]
    for path in candidates:
        if path.exists():
            return _cifar_from_path(spec, path, cache_dir, progress)
        looked.append(str(path))

    if download:
        try:
            return spec.download(data_dir)
        except Exception as exc:  # noqa: BLE001 - any download failure falls through to our message
            looked.append(
                f"torchvision download into {data_dir} (failed: {type(exc).__name__}: {exc})"
            )
    else:
        looked.append("torchvision download (skipped: data.download=false)")
    raise DataError(
        f"{spec.title} not found; looked at: {'; '.join(looked)}; provide it with "
        f"data.download=true (torchvision, needs the network) or an image-folder archive "
        f"via data.archive=/path/to/{spec.archive_name} (or ${spec.env})."
    )


def _cifar_from_path(spec: CifarSpec, path: Path, cache_dir, progress) -> ImageArrays:
    """CIFAR from torchvision's pickle folder (or CIFAR-100's original tarball) or an image
    folder / archive, checked for shape and number of classes."""
    if spec.is_batches(path):
        return spec.read_batches(path)
    arrays = load_image_folder(path, cache_dir=cache_dir, progress=progress)
    shape = tuple(arrays.train_x.shape[1:])
    if len(arrays.classes) != spec.num_classes or shape != (3, 32, 32):
        raise DataError(
            f"{path} is not {spec.title}: it holds {len(arrays.classes)} classes of "
            f"{shape[2]}x{shape[1]} images, expected {spec.num_classes} classes of 32x32 RGB images."
        )
    return arrays


def _cifar10_torchvision(root: Path, download: bool) -> ImageArrays:
    """CIFAR-10 via ``torchvision.datasets.CIFAR10`` (its ``.data`` is N x 32 x 32 x 3 uint8)."""
    cifar10 = fetch.torchvision_dataset("CIFAR10")
    try:
        train = cifar10(root=str(root), train=True, download=download)
        test = cifar10(root=str(root), train=False, download=False)
    except RuntimeError as exc:
        if download:
            raise
        raise DataError(
            f"{root / 'cifar-10-batches-py'} is incomplete or corrupt ({exc}); delete it and "
            f"download again, or give an image-folder archive via data.archive=..."
        ) from exc

    def nchw(data) -> torch.Tensor:
        return torch.from_numpy(
            np.ascontiguousarray(np.asarray(data, dtype=np.uint8).transpose(0, 3, 1, 2))
        )

    return ImageArrays(
        train_x=nchw(train.data),
        train_y=torch.as_tensor(np.asarray(train.targets), dtype=torch.int64),
        test_x=nchw(test.data),
        test_y=torch.as_tensor(np.asarray(test.targets), dtype=torch.int64),
        classes=list(train.classes),
        source=str(root / "cifar-10-batches-py"),
    )


CIFAR10 = CifarSpec(
    "CIFAR-10",
    10,
    CIFAR10_ARCHIVE_NAME,
    "cifar10",
    "cifar-10-batches-py",
    CIFAR10_ARCHIVE_ENV,
    originals=(),
    is_batches=lambda path: path.is_dir() and path.name == "cifar-10-batches-py",
    read_batches=lambda path: _cifar10_torchvision(path.parent, download=False),
    download=lambda data_dir: _cifar10_torchvision(data_dir, download=True),
)


def load_cifar10(
    data_dir: str | os.PathLike,
    download: bool = True,
    archive: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    progress: bool | None = None,
) -> ImageArrays:
    """Load CIFAR-10 from the first source found; uint8 (N, 3, 32, 32), labels in standard order.

    Order: (a) ``archive`` (image-folder archive or folder) when given; (b) in ``data_dir``:
    ``cifar10-jpeg.tar.gz``, ``cifar10/``, torchvision's ``cifar-10-batches-py/``; (c)
    ``$KDLIGHT_CIFAR10_ARCHIVE``, then :data:`CIFAR10_FALLBACK_ARCHIVES`; (d) torchvision's
    download into ``data_dir`` when ``download``. Image folders are decoded by
    :func:`load_image_folder` (cached). Raises :class:`DataError` listing every place looked
    at when nothing is found.
    """
    return load_cifar(
        CIFAR10, data_dir, download, archive, cache_dir, progress, CIFAR10_FALLBACK_ARCHIVES
    )


_CACHE: dict[tuple[str, str, str | None], ImageArrays] = {}


class CIFAR10DataModule(ArrayDataModule):
    """CIFAR-10, decoded once into a cached uint8 array.

    ``archive`` may name an image-folder tree (``train/<class>/*``, ``test/<class>/*``) or a
    ``.tar``/``.tar.gz`` of one; otherwise ``data_dir`` is searched, then torchvision downloads.
    Subclasses for other CIFAR-format datasets set ``name`` and ``load`` (see
    :mod:`kdlight.data.datasets.cifar100`).
    """

    name = "cifar10"
    load = staticmethod(load_cifar10)

    def __init__(
        self,
        archive: str | None = None,
        mean=(0.4914, 0.4822, 0.4465),
        std=(0.2470, 0.2435, 0.2616),
        **kwargs,
    ) -> None:
        super().__init__(mean=mean, std=std, **kwargs)
        self.archive = archive

    def load_arrays(self) -> ImageArrays:
        key = (self.name, self.data_dir, self.archive)
        if key not in _CACHE:
            _CACHE[key] = self.load(self.data_dir, download=self.download, archive=self.archive)
        return _CACHE[key]
