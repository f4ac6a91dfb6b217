"""CIFAR-10 (torchvision's format, or an image-folder tree / archive) as an :class:`ArrayDataModule`."""

from __future__ import annotations

from kdlight.data.base import ArrayDataModule
from kdlight.data.sources import ImageArrays, load_cifar10

_CACHE: dict[tuple[str, str, str | None], ImageArrays] = {}


class CIFAR10DataModule(ArrayDataModule):
    """CIFAR-10, decoded once into a cached uint8 array.

    ``archive`` may name an image-folder tree (``train/<class>/*``, ``test/<class>/*``) or a
    ``.tar``/``.tar.gz`` of one; otherwise ``data_dir`` is searched, then torchvision downloads.
    Subclasses for other CIFAR-format datasets set ``name`` and ``load`` (see
    :mod:`kdlight.data.cifar100`).
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
