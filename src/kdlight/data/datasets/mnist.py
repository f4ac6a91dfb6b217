"""MNIST and Fashion-MNIST: IDX files looked for locally (or torchvision's download), as an :class:`ArrayDataModule`."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from kdlight.data.datasets import fetch
from kdlight.data.formats.arrays import ImageArrays
from kdlight.data.formats.digest import stat_signature
from kdlight.data.formats.idx import IDX_IMAGES_MAGIC, IDX_LABELS_MAGIC, read_idx_array
from kdlight.data.modules.array import ArrayDataModule
from kdlight.errors import DataError

#: Dataset name -> torchvision class (and its folder name under ``data_dir``).
MNIST_FAMILY = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST"}
MNIST_CLASSES = {
    "mnist": tuple(str(d) for d in range(10)),
    "fashion_mnist": (
        "T-shirt/top",
        "Trouser",
        "Pullover",
        "Dress",
        "Coat",
        "Sandal",
        "Shirt",
        "Sneaker",
        "Bag",
        "Ankle boot",
    ),
}
#: The four IDX files, each also accepted with a ``.gz`` suffix.
IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
#: Debian's ``dataset-fashion-mnist`` package installs the four ``.gz`` files here.
DEBIAN_FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")


def load_mnist_family(name: str, data_dir: str | os.PathLike, download: bool = True) -> ImageArrays:
    """Load ``mnist`` or ``fashion_mnist`` from IDX files: x uint8 (N, 1, 28, 28), y int64 (N,).

    Looks for the four :data:`IDX_FILES` (raw or ``.gz``) in ``data_dir/<name>``,
    ``data_dir/<name>/raw``, ``data_dir/<MNIST|FashionMNIST>/raw`` (torchvision's layout), then
    for Fashion-MNIST in :data:`DEBIAN_FASHION_MNIST_DIR`; then torchvision downloads into
    ``data_dir`` when ``download``. Raises :class:`DataError` for an unknown name, a corrupt or
    mismatched file, or when no source is found.
    """
    if name not in MNIST_FAMILY:
        raise DataError(f"unknown dataset name {name!r}; valid names: {', '.join(MNIST_FAMILY)}.")
    data_dir = Path(data_dir).expanduser()
    dirs = [data_dir / name, data_dir / name / "raw", data_dir / MNIST_FAMILY[name] / "raw"]
    if name == "fashion_mnist":
        dirs.append(Path(DEBIAN_FASHION_MNIST_DIR))
    looked = []
    for folder in dirs:
        files = [_find_idx(folder, stem) for stem in IDX_FILES]
        if all(files):
            return _load_idx_set(name, files)
        if not folder.is_dir():
            looked.append(f"{folder} (no such folder)")
        else:
            missing = [stem for stem, file in zip(IDX_FILES, files, strict=True) if file is None]
            looked.append(f"{folder} (missing {', '.join(missing)})")

    if download:
        try:
            return _mnist_torchvision(name, data_dir)
        except Exception as exc:  # noqa: BLE001 - any download failure falls through to our message
            looked.append(
                f"torchvision download into {data_dir} (failed: {type(exc).__name__}: {exc})"
            )
    else:
        looked.append("torchvision download (skipped: data.download=false)")
    hint = " or install Debian's dataset-fashion-mnist package" if name == "fashion_mnist" else ""
    raise DataError(
        f"{name} not found: expected {', '.join(IDX_FILES)} (each raw or .gz); looked at "
        f"{'; '.join(looked)}; put the files in {data_dir / name}{hint}, or set "
        f"data.download=true with network access."
    )


def _find_idx(folder: Path, stem: str) -> Path | None:
    """``folder/stem`` or ``folder/stem.gz`` (the raw file first: it is faster), if present."""
    for candidate in (folder / stem, folder / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _load_idx_set(name: str, files: list[Path]) -> ImageArrays:
    """Read and cross-check the four IDX files (train/test images/labels)."""
    out = {}
    classes = MNIST_CLASSES[name]
    for split, images_file, labels_file in (("train", *files[:2]), ("test", *files[2:])):
        magic, x = read_idx_array(images_file)
        if magic != IDX_IMAGES_MAGIC:
            raise DataError(
                f"{images_file} has IDX magic 0x{magic:08x} but an image file needs "
                f"0x{IDX_IMAGES_MAGIC:08x} (uint8, N x H x W)."
            )
        magic, y = read_idx_array(labels_file)
        if magic != IDX_LABELS_MAGIC:
            raise DataError(
                f"{labels_file} has IDX magic 0x{magic:08x} but a label file needs "
                f"0x{IDX_LABELS_MAGIC:08x} (uint8, N)."
            )
        if len(x) != len(y):
            raise DataError(
                f"{images_file} holds {len(x)} images but {labels_file} holds {len(y)} labels; "
                f"they must match."
            )
        if len(y) and int(y.max()) >= len(classes):
            raise DataError(
                f"{labels_file} has label {int(y.max())}; {name} labels must be 0..{len(classes) - 1}."
            )
        out[f"{split}_x"] = torch.from_numpy(x).unsqueeze(1)
        out[f"{split}_y"] = torch.from_numpy(y.astype(np.int64))
    return ImageArrays(
        **out, classes=list(classes), source=str(files[0].parent), signature=stat_signature(files)
    )


def _mnist_torchvision(name: str, data_dir: Path) -> ImageArrays:
    """Download with torchvision (``MNIST``/``FashionMNIST``) and take its ``.data``/``.targets``."""
    cls = fetch.torchvision_dataset(MNIST_FAMILY[name])
    train = cls(root=str(data_dir), train=True, download=True)
    test = cls(root=str(data_dir), train=False, download=False)
    return ImageArrays(
        train_x=train.data.to(torch.uint8).unsqueeze(1).contiguous(),
        train_y=train.targets.to(torch.int64),
        test_x=test.data.to(torch.uint8).unsqueeze(1).contiguous(),
        test_y=test.targets.to(torch.int64),
        classes=list(MNIST_CLASSES[name]),
        source=str(data_dir / MNIST_FAMILY[name]),
    )


_CACHE: dict[tuple[str, str], ImageArrays] = {}


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

    def load_arrays(self) -> ImageArrays:
        key = (self.name, self.data_dir)
        if key not in _CACHE:
            _CACHE[key] = load_mnist_family(self.name, self.data_dir, download=self.download)
        return _CACHE[key]
