"""Class-folder trees as file lists, decoded one image at a time (ImageNet-scale folders).

Only the file names and labels are held in memory (:class:`ImageFiles`); :class:`FolderImages`
decodes sample ``i`` when a batch needs it. Scanning refuses links that leave the tree.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import PIL
import torch
from PIL import Image

from kdlight.data.formats.image_tree import IMAGE_SUFFIXES, inside_tree
from kdlight.errors import DataError


@dataclass
class ImageFiles:
    """A labelled image dataset as file paths relative to ``root`` (decoded when a batch needs them).

    ``train_files``/``test_files``: numpy byte strings (one array, not a million Python
    objects that every DataLoader worker would copy); ``train_y``/``test_y``: int64 labels
    indexing ``classes``; ``digests``: each file's content digest per split, where known
    without reading the files (shards record them). Named like :class:`~kdlight.data.formats.arrays.ImageArrays`' labels,
    which is all the engine reads of a data module's ``arrays``.
    """

    root: str
    train_files: np.ndarray
    train_y: torch.Tensor
    test_files: np.ndarray
    test_y: torch.Tensor
    classes: list[str]
    source: str = field(default="", compare=False)
    digests: dict[str, list[str]] | None = field(default=None, compare=False)  # shards: per split


# ---- scanning ----------------------------------------------------------------------------


def list_images(folder: Path, root: Path) -> list[str]:
    """Sorted names of the JPEG/PNG files in ``folder``; a link leaving ``root`` is refused."""
    names = []
    with os.scandir(folder) as entries:
        for e in entries:
            if e.name.startswith(".") or not e.name.lower().endswith(IMAGE_SUFFIXES):
                continue
            if e.is_symlink():
                inside_tree(Path(e.path), root, root)
            if _is(e.is_file):
                names.append(e.name)
    return sorted(names)


def list_folders(folder: Path, root: Path) -> list[str]:
    """Sorted names of the visible sub-folders of ``folder``; a link leaving ``root`` is refused."""
    names = []
    with os.scandir(folder) as entries:
        for e in entries:
            if e.name.startswith(".") or not _is(e.is_dir):
                if e.is_symlink() and not e.name.startswith("."):
                    inside_tree(Path(e.path), root, root)  # a looping link is named, not skipped
                continue
            if e.is_symlink():
                inside_tree(Path(e.path), root, root)
            names.append(e.name)
    return sorted(names)


def _is(test) -> bool:
    """``DirEntry.is_file``/``is_dir``, False where the entry cannot be followed."""
    try:
        return test()
    except OSError:
        return False


def check_root(root: str | os.PathLike, layout: str) -> Path:
    """``root`` resolved; DataError in one sentence when it is not a folder."""
    path = Path(root).expanduser()
    if not path.is_dir():
        raise DataError(
            f"image folder {path} does not exist or is not a folder; set data.root to a folder "
            f"holding {layout}."
        )
    return path.resolve()


def split_folder(root: Path, names: Sequence[str], layout: str) -> Path:
    """The first of ``root/<name>`` that exists (``train``; ``val`` or ``test``), checked to stay inside."""
    for name in names:
        folder = root / name
        if folder.is_dir():
            inside_tree(folder, root, root)
            return folder
    raise DataError(
        f"{root} has no {' or '.join(n + '/' for n in names)} folder; expected {layout}."
    )


def scan_class_folders(
    root: Path, split: Path, classes: list[str] | None, layout: str, sub: str = ""
) -> tuple[list[bytes], list[int], list[str]]:
    """Files of ``split/<class>/<sub>*`` as root-relative paths, their labels and the classes.

    ``classes`` None: the split's class folders define them (sorted); else each folder must be
    one of ``classes``.
    """
    found = list_folders(split, root)
    if not found:
        raise DataError(f"{split} holds no class folders; expected {layout}.")
    if classes is None:
        classes = found
    index = {c: i for i, c in enumerate(classes)}
    files: list[bytes] = []
    labels: list[int] = []
    for cls in found:
        if cls not in index:
            raise DataError(
                f"class folder {split / cls} is not among the {len(classes)} training classes "
                f"(train/ has {', '.join(classes[:3])}, ...); remove it or add it to train/."
            )
        folder = split / cls / sub if sub else split / cls
        if sub and not folder.is_dir():
            raise DataError(f"{split / cls} has no {sub} folder; expected {layout}.")
        names = list_images(folder, root)
        if not names:
            raise DataError(
                f"class folder {folder} holds no .jpg/.jpeg/.png images; remove it or add images."
            )
        prefix = folder.relative_to(root).as_posix() + "/"
        files += [os.fsencode(prefix + n) for n in names]
        labels += [index[cls]] * len(names)
    return files, labels, classes


def image_files(root: Path, train: tuple, test: tuple, classes: list[str]) -> ImageFiles:
    """Pack two (files, labels) lists into an :class:`ImageFiles`."""
    return ImageFiles(
        root=str(root),
        train_files=np.array(train[0], dtype=bytes),
        train_y=torch.tensor(train[1], dtype=torch.long),
        test_files=np.array(test[0], dtype=bytes),
        test_y=torch.tensor(test[1], dtype=torch.long),
        classes=classes,
        source=str(root),
    )


def samples_fingerprint(labels: torch.Tensor, files: np.ndarray, digests: list[str]) -> str:
    """16 hex digits of sha256 over the labels, the file names and each file's content digest."""
    h = hashlib.sha256()
    h.update(labels.numpy().tobytes())
    h.update(b"\0".join(files.tolist()))
    h.update(",".join(digests).encode())
    return h.hexdigest()[:16]


def decode_rgb(path: Path | io.BytesIO, name: str | None = None) -> Image.Image:
    """Open and decode one JPEG/PNG (a file, or its bytes) as RGB, or raise DataError naming it."""
    try:
        with Image.open(path, formats=("JPEG", "PNG")) as img:
            return img.convert("RGB")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        # an in-memory file would be named by its repr: say what is wrong instead
        unknown = isinstance(exc, PIL.UnidentifiedImageError) and not isinstance(path, Path)
        raise DataError(
            f"image {name or path} is corrupt or not a JPEG/PNG "
            f"({'no JPEG/PNG header' if unknown else exc}); replace or remove it."
        ) from exc


class FolderImages:
    """``images(i)``: the file ``root/files[i]`` decoded to RGB (a picklable callable)."""

    def __init__(self, root: str, files: np.ndarray) -> None:
        self.root = Path(root)
        self.files = files

    def __call__(self, i: int) -> Image.Image:
        return decode_rgb(self.root / os.fsdecode(self.files[i]))
