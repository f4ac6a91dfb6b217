"""MNIST and Fashion-MNIST (IDX files) as an :class:`ArrayDataModule`."""

from __future__ import annotations

from kdlight.data.base import ArrayDataModule
from kdlight.data.sources import load_mnist_family

_CACHE: dict[tuple[str, str], object] = {}


class MNISTDataModule(ArrayDataModule):
    """MNIST-format data: ``name`` is ``mnist`` or ``fashion_mnist``.

    Files are looked for under ``data_dir``, then (Fashion-MNIST) in Debian's
    ``/usr/share/datasets/fashion-mnist``, then downloaded by torchvision.
    """

    def __init__(
        self,
        name: str = "fashion_mnist",
        mean=(0.1307,),
        std=(0.3081,),
        **kwargs,
    ) -> None:
        super().__init__(mean=mean, std=std, **kwargs)
        self.name = name

    def load_arrays(self):
        key = (self.name, self.data_dir)
        if key not in _CACHE:
            _CACHE[key] = load_mnist_family(self.name, self.data_dir, download=self.download)
        return _CACHE[key]
