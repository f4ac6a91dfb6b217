"""Writing an image folder as LitData shards: the same samples, read by index from a few large files.

``kdlight-shards convert SRC OUT`` (or ``python -m kdlight.cli.shards convert SRC OUT``) scans
``SRC`` exactly as ``data=image_folder`` (or ``tiny_imagenet``) does and writes, with LitData's
writer, one shard folder per split: ``OUT/train`` and ``OUT/val`` (the test split). Each item is
``{"index": int, "label": int, "image": bytes}``, the image being the file's own JPEG/PNG bytes
(nothing re-encoded, so it decodes to the folder's pixels). ``OUT/kdlight_shards.json`` holds the
classes, file names and labels, so a data module knows every label without reading a shard
(:mod:`kdlight.data.shards.read`).
"""

from __future__ import annotations

import contextlib
import glob
import io
import json
import logging
import os
import shutil
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from kdlight.data.datasets.tiny_imagenet import ANNOTATIONS, TinyImageNetDataModule
from kdlight.data.formats.digest import hash_bytes
from kdlight.data.formats.image_files import check_root
from kdlight.data.modules.image_folder import ImageFolderDataModule
from kdlight.data.shards.read import FORMAT, MANIFEST, SPLIT_DIRS, VERSION, require_litdata
from kdlight.errors import ConfigError, DataError, KdlightError
from kdlight.io import lock_note, try_lock

log = logging.getLogger(__name__)

LAYOUTS = ("auto", "image_folder", "tiny_imagenet")


def _module_for(src: Path, layout: str):
    """The data module class whose scan reads ``src`` (``auto``: Tiny-ImageNet's when it has its table)."""
    if layout not in LAYOUTS:
        raise ConfigError(f"--layout {layout!r} is invalid; valid: {', '.join(LAYOUTS)}.")
    if layout == "auto":
        layout = "tiny_imagenet" if (src / "val" / ANNOTATIONS).is_file() else "image_folder"
    cls = TinyImageNetDataModule if layout == "tiny_imagenet" else ImageFolderDataModule
    return layout, cls(root=str(src), num_classes=1)


def _check_out(out: Path, src: Path) -> None:
    """Refuse an ``out`` that holds anything, is a file, or lies inside ``src``."""
    if out.exists() or out.is_symlink():
        if not out.is_dir() or out.is_symlink():
            raise KdlightError(f"OUT {out} is a file, not a folder; name a new or empty folder.")
        held = sorted(os.listdir(out))
        if held:
            raise KdlightError(
                f"OUT {out} already holds {len(held)} {'entry' if len(held) == 1 else 'entries'} "
                f"({', '.join(held[:3])}"
                f"{', ...' if len(held) > 3 else ''}); name a new or empty folder, nothing is "
                "overwritten."
            )
    real = out.resolve()
    if real == src or real.is_relative_to(src):
        raise KdlightError(
            f"OUT {out} is inside SRC {src}, where it would become part of the image folder; "
            "name a folder outside SRC."
        )


def _check_image(data: bytes, name: str) -> None:
    """Refuse a file whose header is not JPEG or PNG (the folder's loader would refuse it too)."""
    try:
        with Image.open(io.BytesIO(data), formats=("JPEG", "PNG")):
            pass
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        why = "no JPEG/PNG header" if isinstance(exc, UnidentifiedImageError) else exc
        raise DataError(
            f"image {name} is corrupt or not a JPEG/PNG ({why}); replace or remove it."
        ) from exc


def _write_split(
    litdata, folder: Path, root: Path, files: np.ndarray, labels: torch.Tensor, chunk_bytes, bar
) -> list[str]:
    """Write one split's items in index order; the content digest of each image."""
    from litdata.streaming import Cache

    cache = Cache(input_dir=str(folder), chunk_bytes=chunk_bytes)
    names = [os.fsdecode(f) for f in files.tolist()]
    ys = labels.tolist()
    digests: list[str] = []
    block = 256  # files read ahead on threads (I/O bound); written strictly in index order
    with ThreadPoolExecutor(8) as pool:
        for start in range(0, len(names), block):
            part = names[start : start + block]
            for k, data in enumerate(pool.map(lambda n: (root / n).read_bytes(), part)):
                i = start + k
                _check_image(data, str(root / names[i]))
                cache[i] = {"index": i, "label": int(ys[i]), "image": data}
                digests.append(hash_bytes(data))
            bar.update(len(part))
    cache.done()
    cache.merge()
    return digests


def convert(
    src: str | os.PathLike,
    out: str | os.PathLike,
    layout: str = "auto",
    chunk_bytes: str = "128MB",
    progress: bool = True,
) -> dict[str, Any]:
    """Write the image folder ``src`` as shards in ``out`` (new or empty); returns the manifest.

    The samples, their order and labels are those ``data=image_folder`` (or ``tiny_imagenet``)
    reads from ``src``; ``out`` is written under a temporary name and renamed when complete.
    One conversion into ``out`` at a time (a lock beside it); the partial folder of one that
    was killed is removed by the next.
    """
    litdata = require_litdata()
    src_path = Path(src).expanduser()
    if not src_path.is_dir():
        raise DataError(
            f"SRC {src_path} does not exist or is not a folder; give the image folder holding "
            "train/<class>/* and val/<class>/* (or Tiny-ImageNet's layout)."
        )
    out_path = Path(out).expanduser().absolute()
    layout, module = _module_for(src_path, layout)
    root = check_root(src_path, module.layout)
    _check_out(out_path, root)
    files = module.load_files()  # exactly the folder's samples, order and labels
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with _converting(out_path):
        _check_out(out_path, root)  # again, now that no other conversion can write it
        return _convert(litdata, files, root, out_path, layout, chunk_bytes, progress)


@contextlib.contextmanager
def _converting(out: Path) -> Iterator[None]:
    """Hold the lock of conversions into ``out``; remove what a killed conversion left.

    Conversions write ``.<OUT>.partial-<pid>`` beside ``out``; under the lock no other one
    runs, so any such folder is a killed conversion's and goes.
    """
    lock = out.parent / f".{out.name}.kdlight-shards.lock"
    held = try_lock(lock, f"pid {os.getpid()}")
    if held is None:
        who = lock_note(lock) or "another process"
        raise KdlightError(
            f"another kdlight-shards convert ({who}) is writing OUT {out}; wait for it to end or "
            "name another folder."
        )
    try:
        for stale in out.parent.glob(f".{glob.escape(out.name)}.partial-*"):
            log.warning("removing %s, left by a conversion that did not finish", stale)
            shutil.rmtree(stale, ignore_errors=True)
        yield
    finally:
        held.close()


def _convert(litdata, files, root: Path, out_path: Path, layout, chunk_bytes, progress) -> dict:
    from tqdm import tqdm

    tmp = out_path.parent / f".{out_path.name}.partial-{os.getpid()}"
    splits = {"train": (files.train_files, files.train_y), "test": (files.test_files, files.test_y)}
    total = sum(len(names) for names, _ in splits.values())
    try:
        with tqdm(total=total, desc="shards", unit="img", disable=not progress) as bar:
            digests = {
                split: _write_split(
                    litdata, tmp / SPLIT_DIRS[split], root, names, ys, chunk_bytes, bar
                )
                for split, (names, ys) in splits.items()
            }
        manifest = {
            "format": FORMAT,
            "version": VERSION,
            "layout": layout,
            "source": str(root),
            "litdata": getattr(litdata, "__version__", "?"),
            "classes": files.classes,
            "splits": {
                split: {
                    "dir": SPLIT_DIRS[split],
                    "files": [os.fsdecode(f) for f in names.tolist()],
                    "labels": ys.tolist(),
                    "digests": digests[split],
                }
                for split, (names, ys) in splits.items()
            },
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest))
        if out_path.is_dir():
            out_path.rmdir()  # checked empty above
        os.replace(tmp, out_path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return manifest
