"""Tiny-ImageNet-200 (64 x 64 JPEG, 200 classes) in its own layout, decoded per batch.

``root/train/<wnid>/images/*.JPEG``; ``root/val/images/*.JPEG`` labelled by
``root/val/val_annotations.txt`` (tab-separated: file, wnid, box); the unlabelled ``test/``
is not used. The labelled ``val/`` is the test split, and ``data.val_size`` images are held
out of ``train/`` for model selection, as for CIFAR.
"""

from __future__ import annotations

import os
from pathlib import Path

from kdlight.data.formats.image_files import (
    ImageFiles,
    image_files,
    list_images,
    scan_class_folders,
    split_folder,
)
from kdlight.data.modules.image_folder import ImageFolderDataModule
from kdlight.errors import DataError

ANNOTATIONS = "val_annotations.txt"


def read_val_annotations(
    root: Path, classes: list[str], layout: str
) -> tuple[list[bytes], list[int]]:
    """Files and labels of ``val/images`` from ``val/val_annotations.txt``, in file-name order."""
    val = split_folder(root, ("val",), layout)
    table = val / ANNOTATIONS
    if not table.is_file():
        raise DataError(f"{val} has no {ANNOTATIONS}; expected {layout}.")
    images = set(list_images(val / "images", root)) if (val / "images").is_dir() else set()
    index = {c: i for i, c in enumerate(classes)}
    rows = []
    for n, line in enumerate(table.read_text().splitlines(), 1):
        parts = line.split("\t")
        if not line.strip():
            continue
        if len(parts) < 2 or parts[1] not in index or parts[0] not in images:
            what = (
                "has fewer than 2 tab-separated fields"
                if len(parts) < 2
                else f"names class {parts[1]!r}, not a train/ class"
                if parts[1] not in index
                else f"names {parts[0]}, not an image in {val / 'images'}"
            )
            raise DataError(f"line {n} of {table} {what}; fix or remove it.")
        rows.append((parts[0], index[parts[1]]))
    if not rows:
        raise DataError(f"{table} labels no images; expected {layout}.")
    rows.sort()
    return [os.fsencode(f"val/images/{f}") for f, _ in rows], [y for _, y in rows]


class TinyImageNetDataModule(ImageFolderDataModule):
    """Tiny-ImageNet-200; everything but the layout is :class:`ImageFolderDataModule`'s."""

    name = "tiny_imagenet"
    layout = "train/<wnid>/images/*.JPEG, val/images/*.JPEG and val/val_annotations.txt"

    def scan(self, root: Path) -> ImageFiles:
        train = split_folder(root, ("train",), self.layout)
        tr_files, tr_y, classes = scan_class_folders(root, train, None, self.layout, sub="images")
        te_files, te_y = read_val_annotations(root, classes, self.layout)
        return image_files(root, (tr_files, tr_y), (te_files, te_y), classes)
