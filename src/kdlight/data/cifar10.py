"""CIFAR-10 (torchvision's format, or an image-folder tree / archive) as an :class:`ArrayDataModule`."""

from __future__ import annotations

from kdlight.data.base import ArrayDataModule
from kdlight.data.sources import load_cifar10

_CACHE: dict[tuple[str, str | None], object] = {}


class CIFAR10DataModule(ArrayDataModule):
    """CIFAR-10, decoded once into a cached uint8 array.

    ``archive`` may name an image-folder tree (``train/<class>/*``, ``test/<class>/*``) or a
    ``.tar``/``.tar.gz`` of one; otherwise ``data_dir`` is searched, then torchvision downloads.
    """

    name = "cifar10"

    def __init__(
        self,
        archive: str | None = None,
        mean=(0.4914, 0.4822, 0.4465),
        std=(0.2470, 0.2435, 0.2616),
        **kwargs,
    ) -> None:
        super().__init__(mean=mean, std=std, **kwargs)
        self.archive = archive

    def load_arrays(self):
        key = (self.data_dir, self.archive)
        if key not in _CACHE:
            _CACHE[key] = load_cifar10(self.data_dir, download=self.download, archive=self.archive)
        return _CACHE[key]
