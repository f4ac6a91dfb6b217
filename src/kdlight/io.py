"""kdlight's plumbing, one of each: atomic writes, the file lock, the key hash.

- :func:`atomic_write_text` / :func:`atomic_write_json` / :func:`atomic_torch_save`: readers
  see the old file or the whole new one, never a half-written one (a temp file in the same
  folder, fsync, ``os.replace``).
- :func:`file_lock`: an exclusive ``fcntl.flock`` between processes on one machine, released
  when the block ends or the process dies (``flock`` may not be honoured on some network file
  systems). :func:`try_lock` takes it without waiting.
- :func:`key_hash`: ``sha256(json.dumps(key, sort_keys=True))``, first 16 hex digits; the name
  of every keyed folder (stored teachers, teacher logits, data-free statistics).
- :func:`cached`: a keyed, locked, atomic file computed once (``folder/<key hash>/<name>``).
- :func:`refuse_link` / :func:`own_folder`: kdlight writes only regular files it created; a
  symbolic link (or a device, FIFO, hard-linked file) planted where it writes is refused in one
  sentence (:class:`UnsafeFileError`), never written through. Locks are opened ``O_NOFOLLOW``.
- :func:`load_yaml_bounded`: someone else's YAML read with a size and an expanded-node limit
  (an alias bomb is refused before OmegaConf expands it).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import logging
import os
import stat
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from kdlight.errors import DataError

KEY_HASH_LENGTH = 16
log = logging.getLogger(__name__)


class UnsafeFileError(DataError):
    """A path kdlight would write is a symbolic link or not a regular file it may replace."""


def refuse_link(path: str | Path, what: str = "") -> None:
    """Raise :class:`UnsafeFileError` when ``path`` is a symbolic link or exists as something
    other than a regular file: kdlight never writes through a file it did not create."""
    path = Path(path)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    except OSError:  # e.g. a parent that is a file: the write itself reports it
        return
    name = f"{what} {path}" if what else str(path)
    if stat.S_ISLNK(st.st_mode):
        raise UnsafeFileError(
            f"{name} is a symbolic link (to {os.readlink(path)}); kdlight writes only regular "
            "files it created, so remove the link or choose another output folder."
        )
    if not stat.S_ISREG(st.st_mode) and not stat.S_ISDIR(st.st_mode):
        raise UnsafeFileError(
            f"{name} is not a regular file; kdlight writes only regular files it created, so "
            "remove it or choose another output folder."
        )


def own_folder(path: str | Path, what: str = "output folder") -> Path:
    """Create the folder ``path`` (and its parents); refuse it when it is a symbolic link, so a
    link planted in someone else's run folder cannot send kdlight's files elsewhere."""
    path = Path(path)
    refuse_link(path, f"the {what}")
    path.mkdir(parents=True, exist_ok=True)
    if not path.is_dir():
        raise UnsafeFileError(f"the {what} {path} is not a folder; choose another output folder.")
    return path


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


@contextlib.contextmanager
def atomic_output(path: str | Path) -> Iterator[Path]:
    """A fresh temporary file beside ``path`` for a writer that wants a file name (ONNX,
    TorchScript, a figure); renamed over ``path`` when the block ends without an error, removed
    otherwise. ``path`` must not be a symbolic link or a non-regular file (:func:`refuse_link`)."""
    path = Path(path)
    refuse_link(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # the temp file keeps the suffix: some writers (ONNX) choose the format from it
    fd, tmp = tempfile.mkstemp(
        dir=path.parent, prefix=f".{path.name}.", suffix=f".tmp{path.suffix}"
    )
    os.fchmod(fd, _umask_mode())
    os.close(fd)
    try:
        yield Path(tmp)
        fd = os.open(tmp, os.O_RDONLY | os.O_NOFOLLOW)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def _atomic_write(path: str | Path, write: Callable[[IO], None], mode: str) -> None:
    path = Path(path)
    refuse_link(path)  # os.replace would replace a link, not follow it; say so instead
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


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the whole new one."""
    _atomic_write(path, lambda fh: fh.write(data), "wb")


def atomic_write_json(path: str | Path, obj: Any) -> None:
    """:func:`atomic_write_text` of ``obj`` as indented, key-sorted JSON."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` to a temporary file in the same folder, fsync, then rename into place."""
    import torch

    _atomic_write(path, lambda fh: torch.save(obj, fh), "wb")


def _open_lock_file(path: Path):
    """The lock file, opened without following a link and without blocking; refused unless it
    is a regular file with one name (a planted link or hard link would be truncated by
    :func:`try_lock`). Another user's lock file in a shared store (mode 0644) is opened
    read-only: ``flock`` works on any open descriptor."""
    path.parent.mkdir(parents=True, exist_ok=True)
    flags = os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    mode = "r+"
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | flags, 0o666)
    except PermissionError:
        if os.path.islink(path):
            refuse_link(path, "the lock file")
        fd, mode = os.open(path, os.O_RDONLY | flags), "r"
    except OSError as exc:
        if os.path.islink(path):
            refuse_link(path, "the lock file")
        raise exc
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_nlink > 1:
        os.close(fd)
        kind = "not a regular file" if not stat.S_ISREG(st.st_mode) else "a hard link"
        raise UnsafeFileError(
            f"the lock file {path} is {kind}; kdlight locks only files it created, so remove it."
        )
    return os.fdopen(fd, mode)


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
    if fh.writable():  # a lock file of another user's stays as it is
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


def _torch_load(path: Path) -> Any:
    import torch

    return torch.load(path, map_location="cpu", weights_only=True)


def cached(
    folder: str | Path,
    key: Any,
    compute: Callable[[Path], Any],
    *,
    name: str = "value.pt",
    load: Callable[[Path], Any] | None = None,
    what: str = "cached file",
) -> tuple[Path, Any, bool]:
    """``folder/key_hash(key)/name``, computed once: ``(path, value, computed)``.

    Contract: a file that ``load`` (default: a weights-only ``torch.load``) reads to a value
    other than None is served as it is, without taking the lock (a read-only store works).
    Otherwise, under the entry's lock (``<name>.lock``: concurrent processes compute it once),
    ``compute(entry)`` is called with the entry folder (for its scratch files) and its result is
    ``torch.save``d atomically, then the key is written beside it as ``key.json``; readers never
    see half a file. A file ``load`` rejects (None) or cannot read (raises; logged once, as an
    unreadable ``what``) is recomputed, never served.
    """
    load = load or _torch_load
    entry = Path(folder) / key_hash(key)
    path = entry / name
    refuse_link(entry, "the store entry")  # kdlight creates it: a link is planted

    def read(warn: bool) -> Any:
        if not path.is_file():
            return None
        try:
            return load(path)
        except Exception:  # noqa: BLE001 - an unreadable entry is recomputed, never trusted
            if warn:
                log.warning("ignoring unreadable %s %s", what, path)
            return None

    value = read(warn=False)  # judged (and reported) again under the lock
    if value is not None:
        return path, value, False
    with file_lock(entry / f"{name}.lock"):
        value = read(warn=True)  # another process may have computed it meanwhile
        if value is not None:
            return path, value, False
        atomic_torch_save(compute(entry), path)
        atomic_write_json(entry / "key.json", key)
        value = load(path)
    return path, value, True


#: What reading someone else's YAML (a run's saved config) may cost.
YAML_MAX_BYTES = 4 << 20
YAML_MAX_NODES = 200_000


def _expanded_nodes(root: Any, limit: int) -> int:
    """The number of nodes of ``root`` with every alias expanded; stops past ``limit``."""
    import yaml

    memo: dict[int, int] = {}
    active: set[int] = set()

    def count(node) -> int:
        key = id(node)
        if key in memo:
            return memo[key]
        if key in active:
            raise ValueError("an alias refers to the node that holds it")
        active.add(key)
        if isinstance(node, yaml.MappingNode):
            n = 1 + sum(count(k) + count(v) for k, v in node.value)
        elif isinstance(node, yaml.SequenceNode):
            n = 1 + sum(count(v) for v in node.value)
        else:
            n = 1
        active.discard(key)
        memo[key] = n
        if n > limit:
            raise OverflowError(n)
        return n

    return count(root) if root is not None else 0


def load_yaml_bounded(
    path: str | Path, max_bytes: int = YAML_MAX_BYTES, max_nodes: int = YAML_MAX_NODES
):
    """``OmegaConf.load(path)`` for a file someone else wrote, bounded: a regular file of at
    most ``max_bytes``, at most ``max_nodes`` nodes with its aliases expanded (a 500-byte alias
    bomb expands to billions), no recursive alias. Else :class:`DataError`, one sentence."""
    import yaml
    from omegaconf import OmegaConf
    from omegaconf._utils import get_yaml_loader

    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise DataError(f"{path} cannot be read ({exc.strerror}).") from None
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise DataError(f"{path} is not a regular file; a run's config must be one.")
        data = fh.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise DataError(
            f"{path} is larger than {max_bytes >> 20} MiB, far more than a run's config; it was "
            "not read."
        )
    try:
        text = data.decode("utf-8")
        node = yaml.compose(text, Loader=get_yaml_loader())
        n = _expanded_nodes(node, max_nodes)
    except OverflowError:
        raise DataError(
            f"{path} expands to more than {max_nodes} YAML nodes through its aliases (an alias "
            "bomb?); it was not read."
        ) from None
    except (ValueError, RecursionError, yaml.YAMLError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"{path} is not readable YAML ({first}).") from None
    del n
    return OmegaConf.load(io.StringIO(text))
