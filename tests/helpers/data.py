"""Tiny data sets in each format kdlight reads: IDX (MNIST family), image folders and trees,
Tiny-ImageNet's layout, CIFAR-100's pickles; learnable toy images (each class lights a band)."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np

from kdlight.data.datasets.cifar10 import CIFAR10_CLASSES


def idx_bytes(array: np.ndarray) -> bytes:
    """Encode a uint8 array as IDX: magic 0x0800 + ndim (0x0803 images, 0x0801 labels), big-endian dims, data."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = struct.pack(">I", 0x0800 + array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.tobytes()


def write_idx(path: Path, array: np.ndarray, gz: bool | None = None) -> Path:
    """Write ``array`` in the IDX format, gzip-compressed when ``gz`` (default: when the name ends in .gz)."""
    data = idx_bytes(array)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.name.endswith(".gz") if gz is None else gz:
        data = gzip.compress(data)
    path.write_bytes(data)
    return path


def make_images(
    n: int, size: int, channels: int, num_classes: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Learnable toy images: each class lights a different band of rows, plus noise."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % num_classes
    rng.shuffle(y)
    x = rng.integers(0, 60, size=(n, size, size, channels), dtype=np.int64)
    band = max(1, size // num_classes)
    for i, c in enumerate(y):
        x[i, c * band : (c + 1) * band] += 180
    return np.clip(x, 0, 255).astype(np.uint8), y.astype(np.uint8)


def write_mnist_like(
    root: Path, name: str = "fashion_mnist", n_train: int = 300, n_test: int = 100
) -> Path:
    d = root / name
    for split, n, seed in (("train", n_train, 0), ("t10k", n_test, 1)):
        x, y = make_images(n, 28, 1, 10, seed)
        write_idx(d / f"{split}-images-idx3-ubyte.gz", x[..., 0])
        write_idx(d / f"{split}-labels-idx1-ubyte.gz", y)
    return root


def write_image_folder(root: Path, n_train: int = 200, n_test: int = 60, size: int = 32) -> Path:
    from PIL import Image

    classes = list(CIFAR10_CLASSES)
    for split, n, seed in (("train", n_train, 0), ("test", n_test, 1)):
        x, y = make_images(n, size, 3, 10, seed)
        for i, (img, c) in enumerate(zip(x, y, strict=True)):
            p = root / split / classes[c] / f"{i:04d}.png"
            p.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(p)
    return root


def write_cifar100_pickles(
    folder: Path, n_train: int = 200, n_test: int = 100, protocol: int = 2
) -> Path:
    """Write ``train``, ``test``, ``meta`` in CIFAR-100's python pickle format (bytes keys,
    ``data`` uint8 N x 3072 of R, G, B planes, fine and coarse labels, file names)."""
    import pickle

    folder.mkdir(parents=True, exist_ok=True)
    for split, n, seed in (("train", n_train, 0), ("test", n_test, 1)):
        x, y = make_images(n, 32, 3, 100, seed)
        record = {
            b"filenames": [f"img_{split}_{i:05d}.png".encode() for i in range(n)],
            b"batch_label": f"{split}ing batch 1 of 1".encode(),
            b"fine_labels": [int(c) for c in y],
            b"coarse_labels": [int(c) // 5 for c in y],
            b"data": np.ascontiguousarray(x.transpose(0, 3, 1, 2)).reshape(n, 3072),
        }
        (folder / split).write_bytes(pickle.dumps(record, protocol=protocol))
    meta = {
        b"fine_label_names": [f"fine_{i:02d}".encode() for i in range(100)],
        b"coarse_label_names": [f"coarse_{i:02d}".encode() for i in range(20)],
    }
    (folder / "meta").write_bytes(pickle.dumps(meta, protocol=protocol))
    return folder


#: (width, height) of the images write_class_images cycles through: square and not, up and down.
MIXED_SIZES = ((64, 64), (80, 60), (48, 96), (100, 75))


def write_class_images(
    folder: Path, classes: list[str], per_class: int, seed: int, sizes=MIXED_SIZES, sub: str = ""
) -> None:
    """Write ``folder/<class>/<sub>/<i>.png|.jpg``: PNG and JPEG alternating, ``sizes`` cycling."""
    from PIL import Image

    x, _ = make_images(len(classes) * per_class, 96, 3, len(classes), seed)
    for i, img in enumerate(x):
        cls = classes[i % len(classes)]
        name = f"{cls}_{i:04d}.{'png' if i % 2 else 'jpg'}"
        path = folder / cls / sub / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).resize(sizes[i % len(sizes)]).save(path)


def write_image_tree(root: Path, n_classes: int = 5, per_class: int = 14, n_test: int = 2) -> Path:
    """An ImageNet-style tree: ``train/<wnid>/*`` and ``val/<wnid>/*``, mixed sizes and formats."""
    classes = [f"n{i:08d}" for i in range(n_classes)]
    write_class_images(root / "train", classes, per_class, seed=0)
    write_class_images(root / "val", classes, n_test, seed=1)
    return root


def write_tiny_imagenet(
    root: Path, n_classes: int = 5, per_class: int = 14, n_val: int = 10
) -> Path:
    """Tiny-ImageNet's layout: ``train/<wnid>/images/*``, ``val/images/*.JPEG`` + ``val_annotations.txt``."""
    from PIL import Image

    classes = [f"n{i:08d}" for i in range(n_classes)]
    write_class_images(root / "train", classes, per_class, seed=0, sizes=((64, 64),), sub="images")
    (root / "wnids.txt").write_text("\n".join(classes) + "\n")
    (root / "val" / "images").mkdir(parents=True)
    x, _ = make_images(n_val, 64, 3, n_classes, seed=1)
    lines = []
    for i, img in enumerate(x):
        Image.fromarray(img).save(root / "val" / "images" / f"val_{i}.JPEG", format="JPEG")
        lines.append(f"val_{i}.JPEG\t{classes[i % n_classes]}\t0\t0\t63\t63")
    (root / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    return root
