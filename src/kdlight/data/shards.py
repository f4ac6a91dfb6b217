"""Image folders as LitData shards: the same samples, read by index from a few large files.

``kdlight-shards convert SRC OUT`` (or ``python -m kdlight.data.shards convert SRC OUT``) scans
``SRC`` exactly as ``data=image_folder`` (or ``tiny_imagenet``) does and writes, with LitData's
writer, one shard folder per split: ``OUT/train`` and ``OUT/val`` (the test split). Each item is
``{"index": int, "label": int, "image": bytes}``, the image being the file's own JPEG/PNG bytes
(nothing re-encoded, so it decodes to the folder's pixels). ``OUT/kdlight_shards.json`` holds the
classes, file names and labels, so a data module knows every label without reading a shard.

``data=image_folder data.shards=OUT`` then reads item ``i`` with LitData's ``StreamingDataset``
(random access by index) and applies the folder's transforms, splits and (seed, view, index)
augmentation unchanged. ``OUT`` may be a folder (local or mounted) or, once uploaded as is
(e.g. ``aws s3 sync OUT s3://bucket/OUT``), a URL LitData downloads from (``s3://``, ``gs://``,
``azure://``, ``r2://``; ``local:PATH`` goes through the same code): the manifest and index
files are fetched afresh at setup, chunks on demand, into ``$KDLIGHT_CACHE_DIR/shards``
(default ``~/.cache/kdlight/shards``).

Reading never runs code from the shards: only LitData's ``int`` and ``bytes`` deserialisers are
enabled (every other one, ``pickle`` included, is replaced by one that refuses), and each
split's ``index.json`` must declare exactly the item layout above.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import re
import shutil
import sys
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from kdlight.errors import ConfigError, DataError, KdlightError, user_errors_exit

# LitData asks PyPI for a newer version when told to; a cluster node may have no network
os.environ.setdefault("LITDATA_DISABLE_VERSION_CHECK", "1")

MANIFEST = "kdlight_shards.json"
FORMAT = "kdlight-shards"
VERSION = 1
SPLIT_DIRS = {"train": "train", "test": "val"}  # kdlight's split -> folder under OUT
ITEM_FORMAT = ["int", "int", "bytes"]  # index, label, encoded image: what index.json must declare
ITEM_KEYS = ["index", "label", "image"]
LAYOUTS = ("auto", "image_folder", "tiny_imagenet")
_CHUNK_NAME = re.compile(r"^[A-Za-z0-9_.-]+\.bin$")
_INSTALL = "install LitData with pip install 'kdlight[shards]' (or pip install litdata)"


def _litdata():
    try:
        import litdata
    except ImportError as exc:
        raise KdlightError(f"shards need LitData, which is not installed; {_INSTALL}.") from exc
    return litdata


# ---- writing -----------------------------------------------------------------------------


def _module_for(src: Path, layout: str):
    """The data module class whose scan reads ``src`` (``auto``: Tiny-ImageNet's when it has its table)."""
    from kdlight.data.image_folder import ImageFolderDataModule
    from kdlight.data.tiny_imagenet import ANNOTATIONS, TinyImageNetDataModule

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
) -> None:
    from litdata.streaming import Cache

    cache = Cache(input_dir=str(folder), chunk_bytes=chunk_bytes)
    names = [f.decode() for f in files.tolist()]
    ys = labels.tolist()
    block = 256  # files read ahead on threads (I/O bound); written strictly in index order
    with ThreadPoolExecutor(8) as pool:
        for start in range(0, len(names), block):
            part = names[start : start + block]
            for k, data in enumerate(pool.map(lambda n: (root / n).read_bytes(), part)):
                i = start + k
                _check_image(data, str(root / names[i]))
                cache[i] = {"index": i, "label": int(ys[i]), "image": data}
            bar.update(len(part))
    cache.done()
    cache.merge()


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
    """
    from tqdm import tqdm

    from kdlight.data.image_folder import check_root

    litdata = _litdata()
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
    tmp = out_path.parent / f".{out_path.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    splits = {"train": (files.train_files, files.train_y), "test": (files.test_files, files.test_y)}
    total = sum(len(names) for names, _ in splits.values())
    try:
        with tqdm(total=total, desc="shards", unit="img", disable=not progress) as bar:
            for split, (names, ys) in splits.items():
                _write_split(litdata, tmp / SPLIT_DIRS[split], root, names, ys, chunk_bytes, bar)
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
                    "files": [f.decode() for f in names.tolist()],
                    "labels": ys.tolist(),
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


# ---- reading -----------------------------------------------------------------------------


def _refusing_serializers() -> dict[str, Any]:
    """LitData serializers that enable ``int`` and ``bytes`` only; any other format raises."""
    _litdata()
    from litdata.streaming import serializers as s

    class Refused(s.Serializer):
        def __init__(self, name: str) -> None:
            self.name = name

        def serialize(self, item):
            raise TypeError(f"kdlight writes no {self.name!r} items")

        def deserialize(self, data):
            raise DataError(
                f"a shard declares {self.name!r} items, which kdlight does not read (it only reads "
                "int and bytes, never pickle); convert the image folder with kdlight-shards."
            )

        def can_serialize(self, item) -> bool:
            return False

    names = set(getattr(s, "_SERIALIZERS", {})) | {
        "pickle", "graph", "json", "numpy", "tensor", "file", "video", "audio", "pil", "jpeg",
        "image", "str", "text", "float", "bool", "no_header_numpy", "no_header_tensor",
        "jpeg_array", "tifffile", "nifti", "mesh", "pdf",
    }  # fmt: skip
    out: dict[str, Any] = {n: Refused(n) for n in names - {"int", "bytes"}}
    out["int"], out["bytes"] = s.IntegerSerializer(), s.BytesSerializer()
    return out


def is_remote(location: str) -> bool:
    """True for an object-store URL LitData downloads from (``s3://``, ``gs://``, ``local:`` ...)."""
    return "://" in location or location.startswith("local:")


def split_location(location: str, split: str) -> str:
    """Where ``split``'s shards are: ``location/train`` or ``location/val``, a path or a URL."""
    sub = SPLIT_DIRS[split]
    return f"{location.rstrip('/')}/{sub}" if is_remote(location) else str(Path(location) / sub)


def _cache_for(location: str) -> Path:
    """The local folder for remote shards' metadata and downloaded chunks (``$KDLIGHT_CACHE_DIR``)."""
    from kdlight.data.sources import default_cache_dir

    return default_cache_dir() / "shards" / hashlib.sha256(location.encode()).hexdigest()[:16]


def _fetch_meta(location: str) -> Path:
    """Download remote shards' manifest and index files (afresh) into the cache; that folder.

    The chunks themselves are downloaded by LitData when an image needs them.
    """
    _litdata()
    from litdata.streaming.downloader import get_downloader

    meta = _cache_for(location) / "meta"
    for name in [MANIFEST, *(f"{sub}/index.json" for sub in SPLIT_DIRS.values())]:
        local = meta / name
        local.parent.mkdir(parents=True, exist_ok=True)
        part = local.with_name(f"{local.name}.part-{os.getpid()}")
        try:
            downloader = get_downloader(location, str(meta), [])
            downloader.download_file(f"{location.rstrip('/')}/{name}", str(part))
        except Exception as exc:  # noqa: BLE001 - any backend's failure is the same user error
            raise _not_shards(location, f"could not be read ({name}: {exc})") from exc
        os.replace(part, local)
    return meta


def _meta_dir(location: str) -> Path:
    return _cache_for(location) / "meta" if is_remote(location) else Path(location).expanduser()


def _not_shards(path: Path | str, why: str) -> DataError:
    return DataError(
        f"data.shards={path} {why}; set it to a folder written by kdlight-shards convert SRC OUT."
    )


def _check_index(folder: Path, count: int, shards: Path | str) -> dict[str, Any]:
    """Read ``folder/index.json``; refuse any item layout but kdlight's and chunk names with paths."""
    try:
        index = json.loads((folder / "index.json").read_text())
        config, chunks = index["config"], index["chunks"]
        names = [c["filename"] for c in chunks]
        sizes = [int(c["chunk_size"]) for c in chunks]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise _not_shards(shards, f"has no readable {folder.name}/index.json ({exc})") from exc
    layout = (config.get("data_format"), config.get("compression"), config.get("encryption"))
    if layout != (ITEM_FORMAT, None, None) or not all(_CHUNK_NAME.match(str(n)) for n in names):
        raise _not_shards(
            shards,
            f"holds {folder.name}/ shards of another layout (items {config.get('data_format')}, "
            f"compression {config.get('compression')}; kdlight writes {ITEM_FORMAT}, uncompressed)",
        )
    if sum(sizes) != count:
        raise _not_shards(
            shards, f"has {sum(sizes)} items in {folder.name}/ but its manifest lists {count}"
        )
    return index


def read_manifest(shards: str | os.PathLike):
    """The :class:`~kdlight.data.image_folder.ImageFiles` of a shards folder, from its manifest."""
    from kdlight.data.image_folder import image_files

    text = str(shards)
    _litdata()  # imported once here: forked DataLoader workers inherit it (an import takes seconds)
    remote = is_remote(text)
    path = _fetch_meta(text) if remote else Path(text).expanduser()
    where = text if remote else path  # what messages name
    if not path.is_dir():
        raise _not_shards(where, "does not exist or is not a folder")
    try:
        m = json.loads((path / MANIFEST).read_text())
    except FileNotFoundError as exc:
        raise _not_shards(where, f"holds no {MANIFEST}") from exc
    except (OSError, ValueError) as exc:
        raise _not_shards(where, f"has an unreadable {MANIFEST} ({exc})") from exc
    try:
        if m["format"] != FORMAT or int(m["version"]) > VERSION:
            raise ValueError(f"format {m['format']!r} version {m['version']}")
        classes = [str(c) for c in m["classes"]]
        parts = []
        for split, sub in SPLIT_DIRS.items():
            s = m["splits"][split]
            names, labels = [str(f) for f in s["files"]], [int(y) for y in s["labels"]]
            if s["dir"] != sub or len(names) != len(labels) or not names:
                raise ValueError(f"split {split} is inconsistent")
            if min(labels) < 0 or max(labels) >= len(classes):
                raise ValueError(f"split {split} has labels outside 0..{len(classes) - 1}")
            _check_index(path / sub, len(names), where)
            parts.append(([n.encode() for n in names], labels))
    except (KeyError, TypeError, ValueError) as exc:
        raise _not_shards(where, f"has a {MANIFEST} kdlight cannot read ({exc})") from exc
    files = image_files(path.resolve(), parts[0], parts[1], classes)
    files.root = text if remote else str(path.resolve())  # what ShardImages reads from
    files.source = f"shards:{files.root}"
    return files


def fingerprint(shards: str | os.PathLike, files) -> str:
    """A short hash of the shards' samples: names, labels and each split's chunk list."""
    path = _meta_dir(str(shards))
    h = hashlib.sha256()
    h.update(files.train_y.numpy().tobytes())
    h.update(b"\0".join(files.train_files.tolist()))
    index = json.loads((path / SPLIT_DIRS["train"] / "index.json").read_text())
    h.update(json.dumps(index["chunks"], sort_keys=True).encode())
    return h.hexdigest()[:16]


class ShardImages:
    """``images(i)``: sample ``i`` of one split's shards, decoded to RGB (a picklable callable).

    The ``StreamingDataset`` is opened lazily in each process (DataLoader workers open their
    own); reads are serialised by a lock so the data module's decoding threads can share it.
    """

    def __init__(self, shards: str | os.PathLike, split: str, files: np.ndarray) -> None:
        self.folder = split_location(str(shards), split)
        # remote shards: LitData downloads chunks into kdlight's cache, not its own default
        remote = is_remote(str(shards))
        self.cache_dir = (
            str(_cache_for(str(shards)) / "chunks" / SPLIT_DIRS[split]) if remote else None
        )
        self.files = files
        self._state: tuple[int, Any, threading.Lock] | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_state": None}

    def _dataset(self):
        if self._state is None or self._state[0] != os.getpid():
            litdata = _litdata()
            ds = litdata.StreamingDataset(
                self.folder, cache_dir=self.cache_dir, serializers=_refusing_serializers()
            )
            if len(ds) != len(self.files):
                raise DataError(
                    f"shards {self.folder} hold {len(ds)} items but the manifest lists "
                    f"{len(self.files)}; convert the image folder again."
                )
            self._state = (os.getpid(), ds, threading.Lock())
        return self._state

    def read(self, i: int) -> bytes:
        """The encoded bytes of sample ``i``, checked to be that sample."""
        _, ds, lock = self._dataset()
        with lock:
            item = ds[int(i)]
        if int(item["index"]) != i:
            raise DataError(
                f"shards {self.folder} return sample {item['index']} at position {i}; they are "
                "damaged or reordered, convert the image folder again."
            )
        return item["image"]

    def __call__(self, i: int) -> Image.Image:
        from kdlight.data.image_folder import decode_rgb

        name = f"{self.files[i].decode()} in shards {self.folder}"
        return decode_rgb(io.BytesIO(self.read(i)), name)


# ---- CLI ----------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="kdlight-shards",
        description="Image folders as LitData shards (read with data.shards=OUT).",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser(
        "convert",
        help="write the image folder SRC (train/<class>/*, val/<class>/*) as shards in OUT",
        description="Write the image folder SRC as shards in OUT (a new or empty folder); "
        "the samples, order and labels are those data=image_folder reads.",
    )
    c.add_argument(
        "src", type=Path, help="train/<class>/* and val/<class>/* (or Tiny-ImageNet's zip layout)"
    )
    c.add_argument("out", type=Path, help="a new or empty folder for the shards")
    c.add_argument("--layout", default="auto", choices=LAYOUTS, help="SRC's layout (default: auto)")
    c.add_argument("--chunk-bytes", default="128MB", help="largest shard file (default: 128MB)")
    c.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser.parse_args(argv)


@user_errors_exit
def main(argv: Sequence[str] | None = None) -> int:
    """``kdlight-shards convert SRC OUT``; exits 2 with one sentence on a user error."""
    args = parse_args(argv)
    m = convert(args.src, args.out, args.layout, args.chunk_bytes, progress=not args.quiet)
    n = {s: len(v["files"]) for s, v in m["splits"].items()}
    print(
        f"wrote {n['train']} train/ and {n['test']} val/ images of {len(m['classes'])} classes "
        f"({m['layout']} layout) to {Path(args.out).expanduser()}; train with "
        f"data.shards={Path(args.out).expanduser()}",
        file=sys.stdout,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
