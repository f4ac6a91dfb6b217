"""On-disk store of teacher outputs per (view, sample): logits and the compact features methods
read, computed once and shared by every run of a sweep."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import math
import os
import re
import sys
import tempfile
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kdlight.errors import ConfigError, DataError, KdlightError
from kdlight.io import atomic_write_text, file_lock, fsync_dir, key_hash

_DTYPES = {"float16": np.float16, "float32": np.float32}
_FORMAT = 1
_CHUNK = 1 << 20
_MAX_OPEN_VIEWS = 2
#: Rows per shard file unless ``teacher_store.shard_rows`` says otherwise: CIFAR-sized training
#: sets (up to 65,536 rows) stay one file per view and table.
DEFAULT_SHARD_ROWS = 65536
#: Raw teacher maps a run would store over its views beyond this (GiB) are not stored: the
#: teacher runs online for them (compact forms are always stored).
DEFAULT_MAX_GB = 4.0
#: Tables of one view up to this size move to the training device for the epoch (larger ones
#: stay memory-mapped on the host and rows are gathered there).
DEVICE_MAX_BYTES = 1 << 30
LOGITS = "logits"
TOPK_TABLES = ("topk_values", "topk_indices", "topk_lse_rest")
_SAFE = re.compile(r"[A-Za-z0-9_.-]+")


def _checksum_file(f) -> str:
    """``"blake2b:" + hex`` of an open binary file from its start, read in 1 MiB chunks."""
    digest = hashlib.blake2b(digest_size=16)
    f.seek(0)
    for chunk in iter(lambda: f.read(_CHUNK), b""):
        digest.update(chunk)
    return "blake2b:" + digest.hexdigest()


def _checksum(path: Path) -> str:
    """Return ``"blake2b:" + hex`` of the whole file (header included)."""
    with open(path, "rb") as f:
        return _checksum_file(f)


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


def _positive_int(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, int) and value > 0


def check_store_options(
    dtype: Any,
    batch_size: Any,
    top_k: Any = None,
    shard_rows: Any = DEFAULT_SHARD_ROWS,
    max_gb: Any = DEFAULT_MAX_GB,
) -> None:
    """Raise :class:`ConfigError` unless every ``teacher_store`` option has a valid value."""
    if dtype not in _DTYPES:
        raise ConfigError(f"teacher_store.dtype must be one of {sorted(_DTYPES)}, got {dtype!r}.")
    if not _positive_int(batch_size):
        raise ConfigError(
            f"teacher_store.batch_size must be a positive integer, got {batch_size!r}."
        )
    if top_k is not None and not _positive_int(top_k):
        raise ConfigError(
            f"teacher_store.top_k must be null (exact logits) or a positive integer, got {top_k!r}."
        )
    if not _positive_int(shard_rows):
        raise ConfigError(
            f"teacher_store.shard_rows must be a positive integer, got {shard_rows!r}."
        )
    if (
        isinstance(max_gb, bool)
        or not isinstance(max_gb, (int, float))
        or not max_gb >= 0
        or math.isinf(max_gb)
    ):
        raise ConfigError(
            f"teacher_store.max_gb must be a finite number >= 0 (0: store no raw maps), got {max_gb!r}."
        )


def topk_compress(logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(values, indices, lse_rest)`` of (N, C) logits: the k largest per row and the log-sum-exp
    of the other C - k (``k < C``)."""
    values, indices = logits.topk(k, dim=1)
    rest = logits.scatter(1, indices, float("-inf"))
    return values, indices, torch.logsumexp(rest, dim=1)


def topk_expand(
    values: torch.Tensor, indices: torch.Tensor, lse_rest: torch.Tensor, num_classes: int
) -> torch.Tensor:
    """(N, C) float32 logits rebuilt from :func:`topk_compress`: an approximation.

    The k kept classes get their logits; each of the other C - k gets
    ``lse_rest - log(C - k)``, so the rest's total mass exp(lse_rest) is spread evenly over
    them. The softmax of the result equals the teacher's on the kept classes (and in total on
    the rest) at temperature 1; at T != 1, and within the rest, it is approximate.
    """
    k = values.shape[1]
    fill = lse_rest.float() - math.log(num_classes - k)
    out = fill[:, None].expand(values.shape[0], num_classes).clone()
    return out.scatter_(1, indices.long(), values.float())


@dataclass(frozen=True)
class Table:
    """One per-sample table of a view: its name, the shape of one row and its dtype."""

    name: str
    row_shape: tuple[int, ...]
    dtype: str  # a numpy dtype name: float16, float32, int16, int32

    @property
    def row_bytes(self) -> int:
        return math.prod(self.row_shape) * np.dtype(self.dtype).itemsize


class StoredView:
    """The tables of one view (each a list of row shards), served by position.

    :meth:`logits` rebuilds full logits from a top-k table (:func:`topk_expand`) and
    :meth:`rows` returns any table's rows (a feature form's, in the store dtype).
    """

    def __init__(
        self,
        tables: dict[str, list[torch.Tensor]],
        shard_rows: int,
        num_classes: int,
        top_k: int | None,
    ) -> None:
        self.tables = tables
        self.shard_rows = int(shard_rows)
        self.num_classes = int(num_classes)
        self.top_k = top_k

    def to(self, device: torch.device | str, max_bytes: int = DEVICE_MAX_BYTES) -> StoredView:
        """A view whose tables of at most ``max_bytes`` are one tensor on ``device``.

        On the host, memory maps stay memory maps (no copy); larger tables stay on the host.
        """
        device = torch.device(device)
        moved = {}
        for name, shards in self.tables.items():
            size = sum(s.numel() * s.element_size() for s in shards)
            if device.type == "cpu" or size > max_bytes:
                moved[name] = shards
            else:
                moved[name] = [torch.cat(shards).to(device) if len(shards) > 1 else shards[0].to(device)]  # fmt: skip
        return StoredView(moved, self.shard_rows, self.num_classes, self.top_k)

    def rows(self, name: str, pos: torch.Tensor) -> torch.Tensor:
        """Rows ``pos`` (positions in the store) of table ``name``, in its dtype, on ``pos``'s device."""
        shards = self.tables[name]
        if len(shards) == 1:
            table = shards[0]
            out = table.index_select(0, pos if pos.device == table.device else pos.to(table.device))
            return out.to(pos.device)
        where = pos.cpu()
        shard = where // self.shard_rows
        out = torch.empty((where.numel(), *shards[0].shape[1:]), dtype=shards[0].dtype)
        for s in torch.unique(shard).tolist():
            mask = shard == s
            out[mask] = shards[s].index_select(0, where[mask] - s * self.shard_rows).to("cpu")
        return out.to(pos.device)

    def logits(self, pos: torch.Tensor) -> torch.Tensor:
        """(len(pos), C) float32 teacher logits (exact, or rebuilt from the top-k table)."""
        if self.top_k is None:
            return self.rows(LOGITS, pos).float()
        values, indices, lse = (self.rows(n, pos) for n in TOPK_TABLES)
        return topk_expand(values, indices, lse, self.num_classes)

    def full_logits(self) -> torch.Tensor:
        """All rows' logits: the memory map itself for an exact one-shard view."""
        if self.top_k is None:
            shards = self.tables[LOGITS]
            return shards[0] if len(shards) == 1 else torch.cat(shards)
        cat = [torch.cat(self.tables[n]) for n in TOPK_TABLES]
        return topk_expand(*cat, self.num_classes)


class _LostTemp(Exception):
    """A writer's temp file vanished before it was published (removed by another process)."""


class TeacherLogitStore:
    """Teacher outputs for every (view, sample), computed once, kept on disk memory-mapped.

    Layout: ``root / key_hash / {key.json, view_<v>[.<table>][.shard<k>].{npy,json}, view_<v>.lock}``,
    where ``key_hash`` is the first 16 hex digits of ``sha256(json.dumps(key, sort_keys=True))``.
    ``key`` must identify everything the outputs depend on (teacher weights hash, dataset and
    split, augmentation name, seed and version); the store adds ``top_k`` and ``shard_rows``
    when they change what is stored, and checks only that ``key.json`` equals the result.

    Tables of a view: the logits (``view_<v>.npy``, (num_samples, num_classes) in ``dtype``) or,
    with ``top_k`` = K < num_classes, the K largest logits per row, their class indices and the
    log-sum-exp of the other classes (an approximation, see :func:`topk_expand`; K >=
    num_classes stores exact logits and shares their files); plus feature tables
    ``<teacher layer>/<form>`` that a method reads (see :meth:`get_view`), in ``dtype``. The
    table name (layer and form) and the view are in each file's name and meta.

    Each table is split into shards of ``shard_rows`` rows (one shard unless ``num_samples >
    shard_rows``), each an ``.npy`` file with its own meta. A shard is trusted only if its meta
    names this key hash, view, table, row range, shape and dtype and a blake2b checksum equal to
    the data file's, and the file served is the one checksummed (read through one open file, so
    a file replaced meanwhile is never served unchecked); anything else (missing meta,
    half-written or corrupt data, leftover temp files) counts as missing and only that shard is
    recomputed, never served. A shard is written to a temp file in the same folder and
    published with ``os.replace``, then its meta; writers of one view serialise on an
    ``fcntl.flock`` (an optimisation: where ``flock`` is not honoured, e.g. some network file
    systems under ``KDLIGHT_STORE``, concurrent writers of a shard write the same bytes, so the
    race only costs time).

    Opening the same key with another shape or dtype makes existing views look invalid and
    recomputes them in place; put whatever distinguishes the two into ``key`` instead.
    """

    def __init__(
        self,
        root: str | Path,
        key: dict,
        num_samples: int,
        num_classes: int,
        dtype: str = "float16",
        batch_size: int = 256,
        top_k: int | None = None,
        shard_rows: int = DEFAULT_SHARD_ROWS,
        max_gb: float = DEFAULT_MAX_GB,
    ) -> None:
        check_store_options(dtype, batch_size, top_k, shard_rows, max_gb)
        if num_samples <= 0 or num_classes <= 0:
            raise ConfigError(
                f"teacher logit store needs num_samples > 0 and num_classes > 0, got {num_samples} and {num_classes}."
            )
        self.num_samples = int(num_samples)
        self.num_classes = int(num_classes)
        self.top_k = None if top_k is None or top_k >= num_classes else int(top_k)
        self.shard_rows = int(shard_rows)
        self.max_gb = float(max_gb)
        layout = {}
        if self.top_k is not None:
            layout["top_k"] = self.top_k
        if self.num_samples > self.shard_rows:
            layout["shard_rows"] = self.shard_rows
        try:
            canonical = json.dumps({**key, **({"store": layout} if layout else {})}, sort_keys=True)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"teacher logit store key must be JSON-serialisable: {exc}.") from exc
        self.key: dict = json.loads(canonical)
        self.key_hash: str = key_hash(self.key)
        self.dtype = dtype
        self.batch_size = batch_size  # the default of get(): 128-256 is fastest on CPU
        self.path: Path = Path(root) / self.key_hash
        self._cache: OrderedDict[int, StoredView] = OrderedDict()
        self._init_dir()

    def _init_dir(self) -> None:
        """Create the directory and ``key.json``, or check that an existing ``key.json`` is ours."""
        key_file = self.path / "key.json"
        if key_file.exists():
            try:
                stored = json.loads(key_file.read_text())
            except (OSError, ValueError):
                stored = None  # unreadable: key.json is written atomically, so it was tampered with
            if stored is not None:
                if stored != self.key:
                    raise KdlightError(
                        f"teacher logit store {self.path} holds key {stored}, not {self.key} "
                        "(a hash collision); use another store root."
                    )
                return
        self.path.mkdir(parents=True, exist_ok=True)
        atomic_write_text(key_file, json.dumps(self.key, sort_keys=True, indent=2) + "\n")

    # ---- tables and files ----------------------------------------------------------------
    @property
    def logit_tables(self) -> tuple[Table, ...]:
        """The tables that hold the logits: exact, or the three top-k tables."""
        if self.top_k is None:
            return (Table(LOGITS, (self.num_classes,), self.dtype),)
        index = "int16" if self.num_classes <= np.iinfo(np.int16).max else "int32"
        return (
            Table(TOPK_TABLES[0], (self.top_k,), self.dtype),
            Table(TOPK_TABLES[1], (self.top_k,), index),
            Table(TOPK_TABLES[2], (), "float32"),
        )

    def feature_table(self, layer: str, form: str, row_shape: tuple[int, ...]) -> Table:
        """The table of ``form`` of teacher layer ``layer`` (rows of ``row_shape``, store dtype)."""
        return Table(f"{layer}/{form}", tuple(int(d) for d in row_shape), self.dtype)

    @property
    def num_shards(self) -> int:
        return -(-self.num_samples // self.shard_rows)

    def shard_range(self, shard: int) -> tuple[int, int]:
        start = shard * self.shard_rows
        return start, min(start + self.shard_rows, self.num_samples)

    def _base(self, view: int, table: str, shard: int) -> str:
        if not isinstance(view, int) or isinstance(view, bool) or view < 0:
            raise ValueError(f"view must be a non-negative int, got {view!r}")
        name = f"view_{view}"
        if table != LOGITS:
            if _SAFE.fullmatch(table):
                name += f".{table}"
            else:  # layer names hold ':' or '/': keep what is safe, make it unique with a hash
                safe = re.sub(r"[^A-Za-z0-9_.-]", "_", table)
                name += f".{safe}-{hashlib.sha256(table.encode()).hexdigest()[:8]}"
        if self.num_shards > 1:
            name += f".shard{shard:05d}"
        return name

    def _files(self, view: int, table: str = LOGITS, shard: int = 0) -> tuple[Path, Path]:
        base = self._base(view, table, shard)
        return self.path / f"{base}.npy", self.path / f"{base}.json"

    def _expected_meta(self, view: int, table: Table, shard: int) -> dict[str, Any]:
        start, stop = self.shard_range(shard)
        meta = {
            "format": _FORMAT,
            "key_hash": self.key_hash,
            "view": view,
            "shape": [stop - start, *table.row_shape],
            "dtype": table.dtype,
            "complete": True,
        }
        if table.name != LOGITS:
            meta["table"] = table.name
        if self.num_shards > 1:
            meta["rows"] = [start, stop]
        return meta

    def _read(self, view: int, table: Table, shard: int) -> torch.Tensor | None:
        """The shard as a copy-on-write memory map if it validates, else None.

        The checksum is computed on the very file that is then mapped (one open file), so a
        file replaced after the check is never served unchecked.
        """
        data, meta_file = self._files(view, table.name, shard)
        try:
            meta = json.loads(meta_file.read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(meta, dict):
            return None
        expected = self._expected_meta(view, table, shard)
        if any(meta.get(k) != v for k, v in expected.items()):
            return None
        try:
            with open(data, "rb") as f:
                if meta.get("checksum") != _checksum_file(f):
                    return None
                f.seek(0)
                version = np.lib.format.read_magic(f)
                read_header = (
                    np.lib.format.read_array_header_1_0
                    if version == (1, 0)
                    else np.lib.format.read_array_header_2_0
                )
                shape, fortran, dtype = read_header(f)
                if fortran or list(shape) != expected["shape"] or dtype != np.dtype(table.dtype):
                    return None
                # copy-on-write: writes to the tensor stay private and never reach the file
                arr = np.memmap(f, dtype=dtype, mode="c", offset=f.tell(), shape=shape)
        except (OSError, ValueError):
            return None
        return torch.from_numpy(arr)

    def _read_all(
        self, view: int, tables: tuple[Table, ...]
    ) -> tuple[dict[str, list[torch.Tensor | None]], list[tuple[Table, int]]]:
        """Every shard of ``tables`` that validates, and the (table, shard) pairs that do not."""
        found: dict[str, list[torch.Tensor | None]] = {}
        missing = []
        for table in tables:
            found[table.name] = [self._read(view, table, k) for k in range(self.num_shards)]
            missing += [(table, k) for k, t in enumerate(found[table.name]) if t is None]
        return found, missing

    # ---- public API ----------------------------------------------------------------------
    def has(self, view: int) -> bool:
        """Return True iff the logits of view ``view`` are on disk, complete, and every shard's
        meta and checksum validate (reads the data once: about 1 ms per MB)."""
        self._base(view, LOGITS, 0)
        return not self._read_all(view, self.logit_tables)[1]

    def load(self, view: int) -> torch.Tensor:
        """Return view ``view``'s logits as a (num_samples, num_classes) tensor.

        Exact and one shard: the float16/float32 memory map itself (copy-on-write,
        ``mode="c"``: reads share the page cache with other processes, writes to the tensor stay
        private to this process). Several shards: their concatenation; top-k: the rebuilt
        float32 logits. Raises :class:`DataError` if the view is missing or does not validate.
        """
        return self._stored_logits(view).full_logits()

    def _stored_logits(self, view: int) -> StoredView:
        """View ``view``'s logit tables as stored; :class:`DataError` if missing or invalid."""
        found, missing = self._read_all(view, self.logit_tables)
        if missing:
            raise DataError(
                f"teacher logits for view {view} in {self.path} are missing or corrupt; "
                "compute them with TeacherLogitStore.get()."
            )
        return self._view(found)

    def _view(self, found: Mapping[str, list[torch.Tensor | None]]) -> StoredView:
        return StoredView(dict(found), self.shard_rows, self.num_classes, self.top_k)  # type: ignore[arg-type]

    def get(
        self,
        view: int,
        compute: Callable[[torch.Tensor], torch.Tensor],
        batch_size: int | None = None,
        progress: bool = True,
    ) -> torch.Tensor:
        """Return view ``view``'s logits (as :meth:`load`), first computing and storing them if needed.

        ``compute(idx)`` gets a CPU LongTensor of consecutive sample indices (in batches of
        ``batch_size`` within each shard; None: the store's own) and must return the teacher's
        (len(idx), num_classes) logits for those samples under this view; the caller chooses
        device, inference mode and augmentation. Exactly one process (per machine) computes a
        view: the others block on the view's lock file, then load the result. Output that is
        mis-shaped, NaN/Inf, or beyond the store dtype's range raises :class:`KdlightError` and
        leaves nothing behind.
        """
        return self.get_view(view, compute, {}, batch_size, progress).full_logits()

    def get_view(
        self,
        view: int,
        compute: Callable[[torch.Tensor], torch.Tensor | dict[str, torch.Tensor]],
        features: Mapping[str, tuple[int, ...]] | None = None,
        batch_size: int | None = None,
        progress: bool = True,
    ) -> StoredView:
        """The logits and feature tables ``features`` (name -> row shape, names from
        :meth:`feature_table`) of view ``view``, computing the missing shards first.

        ``compute(idx)`` returns the logits (a tensor), or a dict with ``"logits"`` and one
        (len(idx), *row_shape) tensor per feature table name. Only shards that are missing or
        do not validate are computed, in one pass over their rows (under the view's lock).
        """
        batch_size = self.batch_size if batch_size is None else int(batch_size)
        if batch_size <= 0:
            raise ConfigError(f"teacher logit batch_size must be > 0, got {batch_size}.")
        tables = (
            *self.logit_tables,
            *(Table(n, tuple(int(d) for d in s), self.dtype) for n, s in (features or {}).items()),
        )
        found, missing = self._read_all(view, tables)
        for _attempt in range(3):
            if not missing:
                break
            with self._lock(view):
                found, missing = self._read_all(view, tables)  # another writer may be done
                if missing:
                    try:
                        self._fill(view, missing, compute, batch_size, progress)
                    except _LostTemp:
                        pass  # another process removed our temp file: read what it published
                    found, missing = self._read_all(view, tables)
            self._cache.pop(view, None)
        if missing:
            table, shard = missing[0]
            raise DataError(
                f"teacher table {table.name!r} of view {view}, shard {shard} in {self.path} does "
                "not validate after it was written; check the file system (free space, other "
                "writers)."
            )
        return self._view(found)

    def gather(self, view: int, idx: torch.Tensor) -> torch.Tensor:
        """Return rows ``idx`` of view ``view``'s logits as float32 on ``idx``'s device.

        The view must already be stored (see :meth:`get`); the last two views used stay open.
        """
        served = self._cache.get(view)
        if served is None:
            served = self._stored_logits(view)
            self._cache[view] = served
            while len(self._cache) > _MAX_OPEN_VIEWS:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(view)
        return served.logits(idx.cpu()).to(idx.device)

    def __getstate__(self) -> dict[str, Any]:
        # Open memory maps would be pickled as full copies (e.g. into DataLoader workers).
        state = self.__dict__.copy()
        state["_cache"] = OrderedDict()
        return state

    def _lock(self, view: int) -> contextlib.AbstractContextManager[None]:
        """Hold an exclusive ``flock`` on ``view_<v>.lock`` (released when the process dies, too)."""
        return file_lock(self.path / f"view_{view}.lock")

    # ---- writing -------------------------------------------------------------------------
    def _clean_stale(self, view: int) -> None:
        """Remove temp files of view ``view`` that no live writer holds (its flock is free)."""
        for pattern in (f".view_{view}.npy.*.tmp", f".view_{view}.*.npy.*.tmp"):
            for stale in self.path.glob(pattern):
                try:
                    with open(stale, "rb") as f:
                        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                        stale.unlink()
                except (OSError, BlockingIOError):
                    continue  # gone already, or a writer is still at work on it

    def _fill(
        self,
        view: int,
        missing: list[tuple[Table, int]],
        compute: Callable[[torch.Tensor], Any],
        batch_size: int,
        progress: bool,
    ) -> None:
        """Compute the missing (table, shard) pairs, one pass per shard; call with the lock held."""
        self._clean_stale(view)
        by_shard: dict[int, list[Table]] = {}
        for table, shard in missing:
            by_shard.setdefault(shard, []).append(table)
        total = sum(-(-(b - a) // batch_size) for a, b in map(self.shard_range, by_shard))
        with _progress(f"teacher outputs, view {view}", total, progress) as advance:
            for shard, tables in sorted(by_shard.items()):
                self._fill_shard(view, shard, tables, compute, batch_size, advance)

    def _fill_shard(
        self,
        view: int,
        shard: int,
        tables: list[Table],
        compute: Callable[[torch.Tensor], Any],
        batch_size: int,
        advance: Callable[[], None],
    ) -> None:
        """Write ``tables`` of one shard to temp files, then publish each (data, then meta)."""
        start, stop = self.shard_range(shard)
        temps: dict[str, tuple[Path, int, np.memmap]] = {}
        try:
            for table in tables:
                base = self._base(view, table.name, shard)
                fd, name = tempfile.mkstemp(dir=self.path, prefix=f".{base}.npy.", suffix=".tmp")
                fcntl.flock(fd, fcntl.LOCK_EX)  # tells _clean_stale this writer is alive
                out = np.lib.format.open_memmap(
                    name, mode="w+", dtype=np.dtype(table.dtype), shape=(stop - start, *table.row_shape)
                )  # fmt: skip
                temps[table.name] = (Path(name), fd, out)
            for a in range(start, stop, batch_size):
                b = min(a + batch_size, stop)
                outputs = self._outputs(compute(torch.arange(a, b, dtype=torch.long)), view, a, b)
                for table in tables:
                    temps[table.name][2][a - start : b - start] = self._cast(
                        table, outputs.get(table.name), view, a, b
                    )
                advance()
            for table in tables:
                self._publish(view, table, shard, *temps[table.name])
        finally:
            for tmp, fd, _ in temps.values():
                with contextlib.suppress(OSError):
                    os.close(fd)
                with contextlib.suppress(FileNotFoundError):
                    tmp.unlink()

    def _publish(self, view: int, table: Table, shard: int, tmp: Path, fd: int, out) -> None:
        data, meta_file = self._files(view, table.name, shard)
        out.flush()
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
            meta = {**self._expected_meta(view, table, shard), "checksum": _checksum_file(f)}
        # No trusted state at any instant: drop the old meta, publish data, then meta.
        with contextlib.suppress(FileNotFoundError):
            meta_file.unlink()
        try:
            os.replace(tmp, data)
        except FileNotFoundError as exc:
            raise _LostTemp from exc
        atomic_write_text(meta_file, json.dumps(meta, indent=2) + "\n")
        fsync_dir(self.path)

    def _outputs(self, result: Any, view: int, start: int, stop: int) -> dict[str, torch.Tensor]:
        """``compute``'s result as table name -> tensor; top-k tables derived from the logits."""
        outputs = dict(result) if isinstance(result, Mapping) else {LOGITS: result}
        logits = outputs.get(LOGITS)
        expected = (stop - start, self.num_classes)
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
        if self.top_k is not None:
            outputs.update(zip(TOPK_TABLES, topk_compress(logits, self.top_k), strict=True))
        return outputs

    def _cast(self, table: Table, value: Any, view: int, start: int, stop: int) -> np.ndarray:
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
