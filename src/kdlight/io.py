"""kdlight's plumbing, one of each: atomic writes, the file lock, the key hash.

- :func:`atomic_write_text` / :func:`atomic_write_json` / :func:`atomic_torch_save`: readers
  see the old file or the whole new one, never a half-written one (a temp file in the same
  folder, fsync, ``os.replace``).
- :func:`file_lock`: an exclusive ``fcntl.flock`` between processes on one machine, released
  when the block ends or the process dies (``flock`` may not be honoured on some network file
  systems). :func:`try_lock` takes it without waiting.
- :func:`key_hash`: ``sha256(json.dumps(key, sort_keys=True))``, first 16 hex digits; the name
  of every keyed folder (stored teachers, teacher logits, data-free statistics).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

KEY_HASH_LENGTH = 16


def key_hash(key: Any) -> str:
    """First 16 hex digits of ``sha256(json.dumps(key, sort_keys=True, default=str))``."""
    canonical = json.dumps(key, sort_keys=True, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:KEY_HASH_LENGTH]


def _umask_mode() -> int:
    """The mode a plain ``open(path, "w")`` would give a new file (mkstemp's is 0600)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def fsync_dir(path: str | Path) -> None:
    """Make the renames inside ``path`` durable (a no-op where directories cannot be opened)."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _atomic_write(path: str | Path, write: Callable[[IO], None], mode: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.fchmod(fd, _umask_mode())
    try:
        with os.fdopen(fd, mode) as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` so that readers see the old file or the whole new one."""
    _atomic_write(path, lambda fh: fh.write(text), "w")


def atomic_write_json(path: str | Path, obj: Any) -> None:
    """:func:`atomic_write_text` of ``obj`` as indented, key-sorted JSON."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` to a temporary file in the same folder, fsync, then rename into place."""
    import torch

    _atomic_write(path, lambda fh: torch.save(obj, fh), "wb")


def _open_lock_file(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    return open(path, "a")


@contextlib.contextmanager
def file_lock(path: str | Path) -> Iterator[None]:
    """An exclusive inter-process lock on ``path`` (created if needed), released on exit."""
    with _open_lock_file(Path(path)) as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def try_lock(path: str | Path, note: str = "") -> IO | None:
    """Take the lock on ``path`` without waiting; the open file holding it, or None when another
    process holds it. ``note`` (e.g. ``"pid 123"``) is written into the file for whoever finds it
    locked (:func:`lock_note`); the lock lasts until the file is closed or the process ends."""
    fh = _open_lock_file(Path(path))
    try:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.close()
        return None
    fh.truncate(0)
    fh.write(note)
    fh.flush()
    return fh


def lock_note(path: str | Path) -> str:
    """What the holder of the lock on ``path`` wrote there (see :func:`try_lock`), or ``""``."""
    try:
        return Path(path).read_text().strip()
    except OSError:
        return ""
