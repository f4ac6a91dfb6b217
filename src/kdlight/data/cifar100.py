"""CIFAR-100 (fine labels): the CIFAR-10 data module with CIFAR-100's files and statistics."""

from __future__ import annotations

from kdlight.data.cifar10 import CIFAR10DataModule
from kdlight.data.sources import load_cifar100


class CIFAR100DataModule(CIFAR10DataModule):
    """CIFAR-100, 100 fine classes; everything but the source and statistics is CIFAR-10's.

    ``archive`` may name an image-folder tree or archive, a ``cifar-100-python/`` folder or
    the original ``cifar-100-python.tar.gz``; otherwise ``data_dir`` is searched, then
    torchvision's URL is downloaded. The pickles are read without running code
    (:func:`kdlight.data.sources.read_cifar_pickles`). Labelled fraction, unlabeled training,
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
