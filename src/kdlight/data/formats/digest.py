"""Content digests of a data set's every byte, computed once and cached by (path, size, mtime_ns).

The data fingerprint (teacher and store keys) must change when any pixel changes, yet a run
should not re-read a data set it read before. Two caches, both in ``$KDLIGHT_CACHE_DIR/digests``
(default ``~/.cache/kdlight/digests``), both only a speed-up (an unreadable or unwritable cache
is ignored):

- :func:`cached_digest`: the digest of decoded arrays, keyed by a ``signature`` of their source
  files (path, size, ``mtime_ns`` of each: :func:`stat_signature`);
- :func:`file_digests`: one digest per file of an image folder, keyed by the file's path,
  size and ``mtime_ns`` (a file rewritten with its old size and mtime is not noticed).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from kdlight.data.formats.cache import default_cache_dir
from kdlight.errors import DataError

log = logging.getLogger(__name__)

#: Bump when what a digest covers changes; older cached digests are then not used.
DIGEST_VERSION = 1
_BLOCK = 1 << 20


def digest_dir() -> Path:
    return default_cache_dir() / "digests"


def array_digest(*arrays: torch.Tensor | np.ndarray) -> str:
    """sha256 over each array's dtype, shape and every byte (hex)."""
    h = hashlib.sha256()
    for a in arrays:
        arr = a.numpy() if isinstance(a, torch.Tensor) else np.asarray(a)
        arr = np.ascontiguousarray(arr)
        h.update(f"{arr.dtype.str}{arr.shape};".encode())
        h.update(memoryview(arr).cast("B"))
    return h.hexdigest()


def stat_signature(paths: Sequence[str | os.PathLike], **extra) -> str | None:
    """JSON of (resolved path, size, mtime_ns) of each file, plus ``extra``; None if one is missing."""
    entries = []
    try:
        for p in paths:
            real = Path(p).resolve()
            st = real.stat()
            entries.append([os.fsdecode(real), st.st_size, st.st_mtime_ns])
    except OSError:
        return None
    return json.dumps({"files": entries, **extra}, sort_keys=True)


def _read(path: Path) -> str | None:
    with contextlib.suppress(OSError, UnicodeDecodeError):
        return path.read_text().strip()
    return None


def _write(path: Path, text: str) -> None:
    """Write ``text`` atomically; a failure only costs a re-hash next time."""
    try:
        from kdlight.io import atomic_write_text

        atomic_write_text(path, text)
    except OSError as exc:
        log.debug("cannot cache a digest in %s (%s)", path, exc)


def cached_digest(signature: str | None, compute: Callable[[], str]) -> str:
    """``compute()``, cached under ``signature`` (None: computed every time)."""
    if signature is None:
        return compute()
    key = hashlib.sha256(f"v{DIGEST_VERSION}:{signature}".encode()).hexdigest()[:32]
    path = digest_dir() / f"arrays-{key}.txt"
    cached = _read(path)
    if cached and len(cached) == 64 and all(c in "0123456789abcdef" for c in cached):
        return cached
    digest = compute()
    _write(path, digest)
    return digest


def _hash_file(path: str | bytes | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_BLOCK):
            h.update(chunk)
    return h.hexdigest()[:32]


def hash_bytes(data: bytes) -> str:
    """The digest :func:`file_digests` gives a file holding ``data``."""
    return hashlib.sha256(data).hexdigest()[:32]


def file_digests(root: str | os.PathLike, names: Sequence[bytes], workers: int = 8) -> list[str]:
    """The content digest of each file ``root/name``, re-reading only files whose size or
    ``mtime_ns`` changed since they were last hashed (cache: one JSON per folder)."""
    root = Path(root).resolve()
    key = hashlib.sha256(os.fsencode(root)).hexdigest()[:32]
    cache_path = digest_dir() / f"files-{key}.json"
    try:
        cache = json.loads(_read(cache_path) or "{}")
        if cache.get("version") != DIGEST_VERSION or not isinstance(cache.get("files"), dict):
            cache = {}
    except ValueError:
        cache = {}
    known: dict = cache.get("files", {})
    base = os.fsencode(root)
    rows: list[list] = []  # [name, size, mtime_ns, digest or None]
    stale: list[int] = []
    for n in names:
        path = os.path.join(base, n)
        try:
            st = os.stat(path)
        except OSError as exc:
            raise _unreadable(path, exc) from exc
        name = os.fsdecode(n)
        entry = known.get(name)
        fresh_entry = isinstance(entry, list) and entry[:2] == [st.st_size, st.st_mtime_ns]
        rows.append([name, st.st_size, st.st_mtime_ns, str(entry[2]) if fresh_entry else None])
        if not fresh_entry:
            stale.append(len(rows) - 1)

    def block(part: list[int]) -> None:
        for i in part:
            path = os.path.join(base, os.fsencode(rows[i][0]))
            try:
                rows[i][3] = _hash_file(path)
            except OSError as exc:
                raise _unreadable(path, exc) from exc

    if stale:  # hashlib and file reads release the GIL: threads read files side by side
        parts = [stale[k : k + 256] for k in range(0, len(stale), 256)]
        with ThreadPoolExecutor(max(1, workers)) as pool:
            list(pool.map(block, parts))
    fresh = {name: [size, mtime, d] for name, size, mtime, d in rows}
    if fresh != known:  # the folder's current files only: removed ones do not accumulate
        _write(cache_path, json.dumps({"version": DIGEST_VERSION, "files": fresh}))
    return [row[3] for row in rows]


def _unreadable(path: bytes, exc: OSError) -> DataError:
    return DataError(
        f"cannot read {os.fsdecode(path)} ({exc.strerror or exc}); restore the file or remove it "
        "from the folder."
    )


__all__ = [
    "array_digest",
    "cached_digest",
    "digest_dir",
    "file_digests",
    "hash_bytes",
    "stat_signature",
]
