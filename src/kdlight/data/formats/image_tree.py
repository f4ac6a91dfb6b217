"""Image trees, ``train/<class>/*`` and ``test/<class>/*`` in a folder or a tar archive, decoded
whole into an :class:`ImageArrays` once and then read from the decoded-array cache."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import sys
import tarfile
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import PIL
import torch
from PIL import Image

from kdlight.data.formats.arrays import ImageArrays
from kdlight.data.formats.cache import CACHE_FORMAT_VERSION, cache_paths, read_cache, write_cache
from kdlight.errors import DataError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")
SPLITS = ("train", "test")


def load_image_folder(
    path: str | os.PathLike,
    cache_dir: str | os.PathLike | None = None,
    progress: bool | None = None,
) -> ImageArrays:
    """Decode ``train/<class>/*`` and ``test/<class>/*`` images (folder or tar archive) once, then cache.

    ``path`` is a folder or a ``.tar``/``.tar.gz``/``.tgz`` archive holding ``train/`` and
    ``test/`` at its top level or under one top-level folder. Classes sort alphabetically into
    label indices; files sort by name within a class. Images are decoded with PIL as RGB and
    must all share one size. The arrays are cached as ``<name>.kdlight-cache.npz`` in
    ``cache_dir`` if given, else beside ``path`` or, where that is not writable, in
    ``$KDLIGHT_CACHE_DIR`` (default ``~/.cache/kdlight``). A cache whose format version or
    source fingerprint (archive size + mtime; folder file names, sizes, mtimes) differs is
    rebuilt. ``progress=None`` shows a progress bar only when stderr is a terminal.
    Raises :class:`DataError` for a missing, malformed or corrupt source.
    """
    src = Path(path).expanduser()
    if not src.exists():
        raise DataError(f"image folder or archive {src} does not exist.")
    src = src.resolve()
    if src.is_dir():
        entries, fingerprint = _scan_folder(src)
    elif _archive_stem(src) is not None:
        st = src.stat()
        entries = None
        fingerprint = {"kind": "tar", "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    else:
        raise DataError(
            f"{src} is neither a folder nor a .tar/.tar.gz/.tgz archive of train/<class>/*.jpg "
            f"and test/<class>/*.jpg images."
        )
    fingerprint["version"] = CACHE_FORMAT_VERSION
    paths = cache_paths(src, _archive_stem(src) or src.name, cache_dir)
    # what the arrays' content digest is cached under (the data fingerprint)
    signature = json.dumps(
        {"source": os.fsdecode(src), "pillow": PIL.__version__, **fingerprint}, sort_keys=True
    )
    for cache_path in paths:
        arrays = read_cache(cache_path, fingerprint)
        if arrays is not None:
            log.debug("loaded %s from cache %s", src, cache_path)
            arrays.source = str(src)  # the data may have moved along with its cache
            arrays.signature = signature
            return arrays

    show = sys.stderr.isatty() if progress is None else bool(progress)
    with _progress_bar(show) as bar:
        if entries is None:
            entries = _scan_tar(src, bar)
        arrays = _decode_layout(_layout(entries, src), src, bar)
    write_cache(arrays, fingerprint, paths)
    arrays.signature = signature
    return arrays


def _archive_stem(path: Path) -> str | None:
    """Name of ``path`` without its archive suffix, or None when it is not a tar archive name."""
    lower = path.name.lower()
    for suffix in ARCHIVE_SUFFIXES:
        if lower.endswith(suffix) and len(lower) > len(suffix):
            return path.name[: -len(suffix)]
    return None


# An entry is a member path split into parts, and its content: bytes (archive member), a Path
# (file in a folder) or None (a directory).
_Entry = tuple[tuple[str, ...], object]


def inside_tree(path: Path, real_root: Path, root: Path) -> None:
    """Refuse a file or folder of an image tree that a symlink takes outside the tree, or
    a link that loops."""
    try:
        real = path.resolve()
        path.stat()
    except FileNotFoundError:  # a dangling link: nothing there to read, as before
        return
    except (RuntimeError, OSError) as exc:  # Python < 3.13 says RuntimeError, later ones ELOOP
        raise DataError(
            f"{path} in the image folder {root} is a symbolic link that loops or cannot be "
            "followed; remove it."
        ) from exc
    if real != real_root and not real.is_relative_to(real_root):
        raise DataError(
            f"{path} in the image folder {root} is a link to {real}, outside the folder; "
            "copy the file into the folder or remove the link."
        )


def _scan_folder(root: Path) -> tuple[list[_Entry], dict]:
    """List files and folders up to ``top/split/class/file`` depth, with a fingerprint of them."""
    entries: list[_Entry] = []
    names = hashlib.sha1()
    n_files = n_bytes = newest = 0
    real_root = root.resolve()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        rel = Path(dirpath).relative_to(root).parts
        inside_tree(Path(dirpath), real_root, root)
        if len(rel) >= 3:  # deeper than top/split/class: nothing we read lives there
            dirnames[:] = []
        dirnames.sort()
        if rel:
            entries.append((rel, None))
        for name in sorted(filenames):
            if not name.lower().endswith(IMAGE_SUFFIXES):
                continue
            file = Path(dirpath, name)
            inside_tree(file, real_root, root)
            st = file.stat()
            entries.append(((*rel, name), file))
            names.update(os.fsencode("/".join((*rel, name))) + b"\0")
            n_files += 1
            n_bytes += st.st_size
            newest = max(newest, st.st_mtime_ns)
    fingerprint = {
        "kind": "folder",
        "files": n_files,
        "size": n_bytes,
        "mtime_ns": newest,
        "names": names.hexdigest(),
    }
    return entries, fingerprint


def _scan_tar(path: Path, bar) -> list[_Entry]:
    """Read every member of a tar archive in one streaming pass (no extraction to disk)."""
    entries: list[_Entry] = []
    task = bar.add_task(f"reading {path.name}", total=path.stat().st_size) if bar else None
    try:
        with open(path, "rb") as raw, tarfile.open(fileobj=raw, mode="r|*") as tar:
            for i, member in enumerate(tar):
                parts = tuple(p for p in member.name.split("/") if p not in ("", "."))
                if not parts:
                    continue
                if member.isdir():
                    entries.append((parts, None))
                elif member.isfile() and parts[-1].lower().endswith(IMAGE_SUFFIXES):
                    entries.append((parts, tar.extractfile(member).read()))
                if bar and i % 512 == 0:
                    bar.update(task, completed=raw.tell())
            if bar:
                bar.update(task, completed=raw.tell())
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        raise DataError(
            f"cannot read archive {path} ({exc}); expected a valid .tar/.tar.gz/.tgz file."
        ) from exc
    return entries


def _layout(entries: list[_Entry], where: Path) -> dict[str, dict[str, list[tuple[str, object]]]]:
    """Group entries into ``{split: {class: [(member name, content), ...]}}``, checking the layout."""
    ignored = ("__MACOSX",)
    visible = [(p, c) for p, c in entries if not p[0].startswith(".") and p[0] not in ignored]
    tops = {p[0] for p, _ in visible}
    if tops & set(SPLITS):
        depth, top = 0, ""
    elif len(tops) == 1 and any(len(p) > 1 and p[1] in SPLITS for p, _ in visible):
        depth, top = 1, f"{next(iter(tops))}/"  # one top-level folder, e.g. cifar10/train/...
    else:
        raise DataError(
            f"{where} has no train/ and test/ folders at its top level or under a single "
            f"top-level folder (found: {', '.join(sorted(tops)) or 'nothing'}); expected "
            f"train/<class>/*.jpg and test/<class>/*.jpg."
        )
    layout: dict[str, dict[str, list[tuple[str, object]]]] = {}
    for parts, content in visible:
        rest = parts[depth:]
        if len(rest) < 2 or rest[0] not in SPLITS or rest[1].startswith("."):
            continue
        classes = layout.setdefault(rest[0], {})
        files = classes.setdefault(rest[1], [])
        if len(rest) == 3 and content is not None:
            files.append(("/".join(parts), content))
    for split in SPLITS:
        prefix = top + split
        if not layout.get(split):
            raise DataError(
                f"{where} has no class folders in {prefix}/; expected {prefix}/<class>/*.jpg "
                f"(also .jpeg or .png)."
            )
        for cls, files in layout[split].items():
            if not files:
                raise DataError(
                    f"class folder {prefix}/{cls} in {where} holds no .jpg/.jpeg/.png images; "
                    f"remove it or add images."
                )
            files.sort(key=lambda item: item[0])
    if set(layout["train"]) != set(layout["test"]):
        raise DataError(
            f"{where}: the classes in train/ ({', '.join(sorted(layout['train']))}) and in test/ "
            f"({', '.join(sorted(layout['test']))}) must be the same."
        )
    return layout


def _decode_layout(layout, where: Path, bar) -> ImageArrays:
    """Decode every image into uint8 NCHW arrays; labels follow the sorted class names."""
    classes = sorted(layout["train"])
    total = sum(len(files) for split in SPLITS for files in layout[split].values())
    task = bar.add_task("decoding images", total=total) if bar else None
    shape: list = []  # (H, W, name of the first image), set by the first decode
    out = {}
    done = 0
    for split in SPLITS:
        items = [item for cls in classes for item in layout[split][cls]]
        counts = [len(layout[split][cls]) for cls in classes]
        x = None
        for i, (name, content) in enumerate(items):
            img = _decode_image(name, content, where)
            if not shape:
                shape.extend((*img.shape[:2], name))
            if img.shape[:2] != tuple(shape[:2]):
                raise DataError(
                    f"image {name} in {where} is {img.shape[1]}x{img.shape[0]} pixels but "
                    f"{shape[2]} is {shape[1]}x{shape[0]}; all images must have the same size."
                )
            if x is None:
                x = np.empty((len(items), *img.shape), dtype=np.uint8)
            x[i] = img
            if bar and i % 512 == 511:
                bar.update(task, completed=done + i + 1)
        done += len(items)
        if bar:
            bar.update(task, completed=done)
        out[f"{split}_x"] = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
        out[f"{split}_y"] = torch.from_numpy(
            np.repeat(np.arange(len(classes), dtype=np.int64), counts)
        )
    return ImageArrays(**out, classes=classes, source=str(where))


def _decode_image(name: str, content, where: Path) -> np.ndarray:
    """Decode one JPEG/PNG to an (H, W, 3) uint8 array, or raise DataError naming it."""
    fp = io.BytesIO(content) if isinstance(content, bytes) else content
    try:
        with Image.open(fp, formats=("JPEG", "PNG")) as img:
            return np.asarray(img if img.mode == "RGB" else img.convert("RGB"))
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(
            f"image {name} in {where} is corrupt or not a JPEG/PNG ({exc}); replace or remove it."
        ) from exc


@contextlib.contextmanager
def _progress_bar(enabled: bool) -> Iterator:
    """A rich Progress on stderr when enabled, else None."""
    if not enabled:
        yield None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn())
    with Progress(*columns, TimeElapsedColumn(), console=Console(stderr=True)) as bar:
        yield bar
