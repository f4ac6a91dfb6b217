"""Writing the teacher store: a view's missing shards computed in one pass and published atomically.

Each shard goes to a temp file in the store folder (flocked while its writer lives), is
fsynced, checksummed, moved into place with ``os.replace`` (with the mode a plain new file gets
under the umask: others sharing the store read it), then its meta is written, then its checksum
joins the view's manifest (``view_<v>-checksums.json``); the store's reader
(:mod:`kdlight.teacher.store`) trusts a shard only when all three agree.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import stat
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kdlight.errors import KdlightError
from kdlight.io import _umask_mode, atomic_write_text, fsync_dir
from kdlight.teacher.tables import LOGITS, Table
from kdlight.teacher.topk import TOPK_TABLES, topk_compress

_CHUNK = 1 << 20
#: A store's JSON files (key, metas, manifests) larger than this are not read: none is written so.
MAX_JSON_BYTES = 16 << 20


class LostTemp(Exception):
    """A writer's temp file vanished before it was published (removed by another process)."""


def checksum_file(f) -> str:
    """``"blake2b:" + hex`` of an open binary file from its start, read in 1 MiB chunks."""
    digest = hashlib.blake2b(digest_size=16)
    f.seek(0)
    for chunk in iter(lambda: f.read(_CHUNK), b""):
        digest.update(chunk)
    return "blake2b:" + digest.hexdigest()


def read_json(path: Path) -> Any:
    """The JSON value in the regular file ``path`` (not a link), or None if it is absent, not a
    regular file, over :data:`MAX_JSON_BYTES` or not JSON (a FIFO or device never blocks)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    with open(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_JSON_BYTES:
            return None
        try:
            return json.loads(f.read(MAX_JSON_BYTES + 1))
        except (OSError, ValueError, RecursionError):
            return None


def manifest_file(store, view: int) -> Path:
    """The view's manifest: the checksum of every data file its writers published (no table's
    file name has this form: theirs continue ``view_<v>.``)."""
    return store.path / f"view_{view}-checksums.json"


def read_manifest(store, view: int) -> dict[str, str]:
    """Data file name -> checksum from the view's manifest ({} if absent, damaged or not this key's)."""
    manifest = read_json(manifest_file(store, view))
    if not isinstance(manifest, dict) or manifest.get("key_hash") != store.key_hash:
        return {}
    files = manifest.get("files")
    return {k: v for k, v in files.items() if isinstance(v, str)} if isinstance(files, dict) else {}


def _record_checksums(store, view: int, checksums: Mapping[str, str]) -> None:
    """Add ``checksums`` (data file name -> checksum) to the view's manifest (under the view's lock)."""
    files = {**read_manifest(store, view), **checksums}
    text = json.dumps({"key_hash": store.key_hash, "view": view, "files": files}, indent=2)
    path = manifest_file(store, view)
    with contextlib.suppress(OSError):
        if not stat.S_ISREG(os.lstat(path).st_mode):
            path.unlink()  # a planted link or FIFO: the store's own name, replaced like a table
    atomic_write_text(path, text + "\n")


@contextlib.contextmanager
def _progress(description: str, total: int, enabled: bool) -> Iterator[Callable[[], None]]:
    """Yield an ``advance()`` callback that drives a rich progress bar if ``enabled`` and stderr is a TTY."""
    if not (enabled and sys.stderr.isatty()):
        yield lambda: None
        return
    from rich.console import Console
    from rich.progress import Progress

    with Progress(console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(description, total=total)
        yield lambda: bar.advance(task)


def _clean_stale(store, view: int) -> None:
    """Remove temp files of view ``view`` that no live writer holds (its flock is free)."""
    for pattern in (f".view_{view}.npy.*.tmp", f".view_{view}.*.npy.*.tmp"):
        for stale in store.path.glob(pattern):
            try:
                # a planted FIFO or link is not opened (it would block, or lock another file)
                fd = os.open(stale, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
            except OSError:
                continue
            with open(fd, "rb") as f:
                try:
                    if stat.S_ISREG(os.fstat(fd).st_mode):
                        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                        stale.unlink()
                except OSError:
                    continue  # gone already, or a writer is still at work on it


def fill(
    store,
    view: int,
    missing: list[tuple[Table, int]],
    compute: Callable[[torch.Tensor], Any],
    batch_size: int,
    progress: bool,
) -> None:
    """Compute the missing (table, shard) pairs, one pass per shard; call with the lock held."""
    _clean_stale(store, view)
    by_shard: dict[int, list[Table]] = {}
    for table, shard in missing:
        by_shard.setdefault(shard, []).append(table)
    total = sum(-(-(b - a) // batch_size) for a, b in map(store.shard_range, by_shard))
    with _progress(f"teacher outputs, view {view}", total, progress) as advance:
        for shard, tables in sorted(by_shard.items()):
            _fill_shard(store, view, shard, tables, compute, batch_size, advance)


def _fill_shard(
    store,
    view: int,
    shard: int,
    tables: list[Table],
    compute: Callable[[torch.Tensor], Any],
    batch_size: int,
    advance: Callable[[], None],
) -> None:
    """Write ``tables`` of one shard to temp files, then publish each (data, then meta)."""
    start, stop = store.shard_range(shard)
    temps: dict[str, tuple[Path, int, np.memmap]] = {}
    try:
        for table in tables:
            base = store._base(view, table.name, shard)
            fd, name = tempfile.mkstemp(dir=store.path, prefix=f".{base}.npy.", suffix=".tmp")
            os.fchmod(fd, _umask_mode())  # mkstemp's 0600 would hide the table from a team
            fcntl.flock(fd, fcntl.LOCK_EX)  # tells _clean_stale this writer is alive
            out = np.lib.format.open_memmap(
                name, mode="w+", dtype=np.dtype(table.dtype), shape=(stop - start, *table.row_shape)
            )  # fmt: skip
            temps[table.name] = (Path(name), fd, out)
        for a in range(start, stop, batch_size):
            b = min(a + batch_size, stop)
            outputs = _outputs(store, compute(torch.arange(a, b, dtype=torch.long)), view, a, b)
            for table in tables:
                temps[table.name][2][a - start : b - start] = _cast(
                    store, table, outputs.get(table.name), view, a, b
                )
            advance()
        published = {}
        for table in tables:
            name, checksum = _publish(store, view, table, shard, *temps[table.name])
            published[name] = checksum
        _record_checksums(store, view, published)
    finally:
        for tmp, fd, _ in temps.values():
            with contextlib.suppress(OSError):
                os.close(fd)
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()


def _publish(
    store, view: int, table: Table, shard: int, tmp: Path, fd: int, out
) -> tuple[str, str]:
    """Move the table's temp file into place and write its meta; ``(data file name, checksum)``."""
    data, meta_file = store._files(view, table.name, shard)
    out.flush()
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
        meta = {**store._expected_meta(view, table, shard), "checksum": checksum_file(f)}
    # No trusted state at any instant: drop the old meta, publish data, then meta.
    with contextlib.suppress(FileNotFoundError):
        meta_file.unlink()
    try:
        os.replace(tmp, data)
    except FileNotFoundError as exc:
        raise LostTemp from exc
    atomic_write_text(meta_file, json.dumps(meta, indent=2) + "\n")
    fsync_dir(store.path)
    return data.name, meta["checksum"]


def _outputs(store, result: Any, view: int, start: int, stop: int) -> dict[str, torch.Tensor]:
    """``compute``'s result as table name -> tensor; top-k tables derived from the logits."""
    outputs = dict(result) if isinstance(result, Mapping) else {LOGITS: result}
    logits = outputs.get(LOGITS)
    expected = (stop - start, store.num_classes)
    if not isinstance(logits, torch.Tensor) or tuple(logits.shape) != expected:
        got = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise KdlightError(
            f"teacher compute for samples {start}..{stop - 1} returned {got}, expected a tensor of shape {expected}."
        )
    logits = logits.detach().to(device="cpu", dtype=torch.float32)
    if not torch.isfinite(logits).all():
        raise KdlightError(
            f"teacher logits for view {view}, samples {start}..{stop - 1} contain NaN or Inf; check the teacher checkpoint."
        )
    outputs[LOGITS] = logits
    if store.top_k is not None:
        outputs.update(zip(TOPK_TABLES, topk_compress(logits, store.top_k), strict=True))
    return outputs


def _cast(store, table: Table, value: Any, view: int, start: int, stop: int) -> np.ndarray:
    """``value`` as a numpy array of the table's dtype, or raise if mis-shaped or non-finite."""
    what = "logits" if table.name in (LOGITS, *TOPK_TABLES) else f"teacher {table.name}"
    expected = (stop - start, *table.row_shape)
    if not isinstance(value, torch.Tensor) or tuple(value.shape) != expected:
        got = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
        raise KdlightError(
            f"teacher compute for samples {start}..{stop - 1} returned {got} for {table.name}, "
            f"expected a tensor of shape {expected}."
        )
    np_dtype = np.dtype(table.dtype)
    if np_dtype.kind == "i":
        return value.detach().cpu().numpy().astype(np_dtype)
    arr = value.detach().to(device="cpu", dtype=torch.float32).numpy()
    if not np.isfinite(arr).all():
        raise KdlightError(
            f"{what} for view {view}, samples {start}..{stop - 1} contain NaN or Inf; check the teacher checkpoint."
        )
    with np.errstate(over="ignore"):  # overflow is reported below, as one clear error
        cast = arr.astype(np_dtype)
    if not np.isfinite(cast).all():
        raise KdlightError(
            f"{what} for view {view} exceed the {table.dtype} range (max |value| "
            f"{float(np.abs(arr).max()):.3g}); use dtype float32."
        )
    return cast
