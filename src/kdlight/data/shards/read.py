"""Reading LitData shards written by :mod:`kdlight.data.shards.convert`: the same samples as the folder.

``data=image_folder data.shards=OUT`` reads item ``i`` with LitData's ``StreamingDataset``
(random access by index) and applies the folder's transforms, splits and (seed, view, index)
augmentation unchanged. ``OUT`` may be a folder (local or mounted) or, once uploaded as is
(e.g. ``aws s3 sync OUT s3://bucket/OUT``), a URL LitData downloads from (``s3://``, ``gs://``,
``azure://``, ``r2://``; ``local:PATH`` goes through the same code): the manifest and index
files are fetched afresh at setup, chunks on demand, into ``$KDLIGHT_CACHE_DIR/shards``
(default ``~/.cache/kdlight/shards``).

Each split's items are ``{"index": int, "label": int, "image": bytes}``. Reading never runs
code from the shards: only LitData's ``int`` and ``bytes`` deserialisers are enabled (every
other one, ``pickle`` included, is replaced by one that refuses), and each split's
``index.json`` must declare exactly that item layout.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import threading
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from kdlight.data.formats.cache import default_cache_dir
from kdlight.data.formats.digest import hash_bytes
from kdlight.data.formats.image_files import (
    ImageFiles,
    decode_rgb,
    image_files,
    samples_fingerprint,
)
from kdlight.errors import DataError, KdlightError

# LitData asks PyPI for a newer version when told to; a cluster node may have no network
os.environ.setdefault("LITDATA_DISABLE_VERSION_CHECK", "1")

MANIFEST = "kdlight_shards.json"
FORMAT = "kdlight-shards"
VERSION = 2  # 2: each split lists its images' content digests (1 is still read)
SPLIT_DIRS = {"train": "train", "test": "val"}  # kdlight's split -> folder under OUT
ITEM_FORMAT = ["int", "int", "bytes"]  # index, label, encoded image: what index.json must declare
ITEM_KEYS = ["index", "label", "image"]
_CHUNK_NAME = re.compile(r"^[A-Za-z0-9_.-]+\.bin$")
_DIGEST = re.compile(r"^[0-9a-f]{32}$")
_INSTALL = "install LitData with pip install 'kdlight[shards]' (or pip install litdata)"


def require_litdata():
    """The ``litdata`` module, or KdlightError saying how to install it."""
    try:
        import litdata
    except ImportError as exc:
        raise KdlightError(f"shards need LitData, which is not installed; {_INSTALL}.") from exc
    return litdata


def _refusing_serializers() -> dict[str, Any]:
    """LitData serializers that enable ``int`` and ``bytes`` only; any other format raises."""
    require_litdata()
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
    return default_cache_dir() / "shards" / hashlib.sha256(location.encode()).hexdigest()[:16]


def _fetch_meta(location: str) -> Path:
    """Download remote shards' manifest and index files (afresh) into the cache; that folder.

    The chunks themselves are downloaded by LitData when an image needs them.
    """
    require_litdata()
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
        expected = [int(c["chunk_bytes"]) for c in chunks]
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
    if not is_remote(str(shards)):  # LitData would wait for a missing or short chunk, then time out
        for name, want in zip(names, expected, strict=True):
            file = folder / str(name)
            size = file.stat().st_size if file.is_file() else None
            if size != want:
                what = "is missing" if size is None else f"has {size} bytes"
                raise _not_shards(
                    shards,
                    f"is damaged: {file} {what} but {folder.name}/index.json lists {want}; copy "
                    "the shards again or convert the folder again",
                )
    return index


def read_manifest(shards: str | os.PathLike) -> ImageFiles:
    """The :class:`~kdlight.data.formats.image_files.ImageFiles` of a shards folder, from its manifest."""
    text = str(shards)
    # imported once here: forked DataLoader workers inherit it (an import takes seconds)
    require_litdata()
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
        digests: dict[str, list[str]] = {}
        for split, sub in SPLIT_DIRS.items():
            s = m["splits"][split]
            names, labels = [str(f) for f in s["files"]], [int(y) for y in s["labels"]]
            if s["dir"] != sub or len(names) != len(labels) or not names:
                raise ValueError(f"split {split} is inconsistent")
            if min(labels) < 0 or max(labels) >= len(classes):
                raise ValueError(f"split {split} has labels outside 0..{len(classes) - 1}")
            _check_index(path / sub, len(names), where)
            parts.append(([os.fsencode(n) for n in names], labels))
            found = s.get("digests")  # absent from version-1 manifests
            if found is not None:
                if len(found) != len(names) or not all(_DIGEST.match(str(d)) for d in found):
                    raise ValueError(f"split {split} has malformed digests")
                digests[split] = [str(d) for d in found]
    except (KeyError, TypeError, ValueError) as exc:
        raise _not_shards(where, f"has a {MANIFEST} kdlight cannot read ({exc})") from exc
    files = image_files(path.resolve(), parts[0], parts[1], classes)
    files.root = text if remote else str(path.resolve())  # what ShardImages reads from
    files.source = f"shards:{files.root}"
    files.digests = digests or None
    return files


def fingerprint(shards: str | os.PathLike, files) -> str:
    """A short hash of the shards' samples: that of the image folder they were converted from
    (names, labels, each image's content digest); version-1 shards: each split's chunk list."""
    if files.digests is not None:
        return samples_fingerprint(files.train_y, files.train_files, files.digests["train"])
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

    def __init__(
        self,
        shards: str | os.PathLike,
        split: str,
        files: np.ndarray,
        digests: list[str] | None = None,
    ) -> None:
        self.folder = split_location(str(shards), split)
        # remote shards: LitData downloads chunks into kdlight's cache, not its own default
        remote = is_remote(str(shards))
        self.cache_dir = (
            str(_cache_for(str(shards)) / "chunks" / SPLIT_DIRS[split]) if remote else None
        )
        self.files = files
        self.digests = digests  # each image's content digest at conversion (None: not checked)
        self._state: tuple[int, Any, threading.Lock] | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_state": None}

    def _dataset(self):
        if self._state is None or self._state[0] != os.getpid():
            litdata = require_litdata()
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
        try:
            with lock:
                item = ds[int(i)]
        except DataError:
            raise
        except Exception as exc:  # noqa: BLE001 - a missing or short chunk, in the backend's words
            why = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise DataError(
                f"cannot read {os.fsdecode(self.files[i])} from shards {self.folder} ({why}); "
                "copy the shards again or convert the image folder again."
            ) from exc
        if int(item["index"]) != i:
            raise DataError(
                f"shards {self.folder} return sample {item['index']} at position {i}; they are "
                "damaged or reordered, convert the image folder again."
            )
        if self.digests is not None and hash_bytes(item["image"]) != self.digests[i]:
            raise DataError(
                f"image {os.fsdecode(self.files[i])} in shards {self.folder} is not the image "
                "converted (its content digest differs from the manifest's); convert the image "
                "folder again."
            )
        return item["image"]

    def __call__(self, i: int) -> Image.Image:
        name = f"{os.fsdecode(self.files[i])} in shards {self.folder}"
        return decode_rgb(io.BytesIO(self.read(i)), name)
