"""On-disk store of teacher outputs per (view, sample): logits and the compact features methods
read, computed once and shared by every run of a sweep."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import re
from collections import OrderedDict
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kdlight.errors import ConfigError, DataError, KdlightError
from kdlight.io import atomic_write_text, file_lock, key_hash
from kdlight.teacher.fill import (
    LostTemp,
    fill,
    manifest_file,
    read_json,
    read_manifest,
)
from kdlight.teacher.tables import LOGITS, StoredView, Table
from kdlight.teacher.topk import TOPK_TABLES
from kdlight.teacher.validate import read_shard

log = logging.getLogger(__name__)

_DTYPES = {"float16": np.float16, "float32": np.float32}
#: 2: a view's checksums are also in its manifest (``view_<v>-checksums.json``); a format-1
#: shard (no manifest) is recomputed once.
_FORMAT = 2
_MAX_OPEN_VIEWS = 2
#: Rows per shard file unless ``teacher_store.shard_rows`` says otherwise: CIFAR-sized training
#: sets (up to 65,536 rows) stay one file per view and table.
DEFAULT_SHARD_ROWS = 65536
#: Raw teacher maps a run would store over its views beyond this (GiB) are not stored: the
#: teacher runs online for them (compact forms are always stored).
DEFAULT_MAX_GB = 4.0
_SAFE = re.compile(r"[A-Za-z0-9_.-]+")


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
    the data file's and to the one the view's manifest (``view_<v>-checksums.json``, written by
    the process that computed the shard) records, its values are possible (finite; top-k
    indices in [0, num_classes) and distinct per row), and the file served is the one
    checksummed (a regular file, not a link, read through one open file, so a file replaced
    meanwhile is never served unchecked); anything else (missing meta, half-written, corrupt or
    forged data, leftover temp files) counts as missing and only that shard is recomputed, with
    a warning naming the file, never served. Where it cannot be recomputed (:meth:`load`,
    :meth:`gather`, a folder this process cannot write) it is refused with a
    :class:`DataError` naming the file. This guards against accidents, partial copies, other
    runs and casual edits, not against someone who can rewrite every file of the folder: the
    store trusts its folder's owner. A shard is written to a temp file in the same folder and
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
        """Create the directory and ``key.json``, or check that an existing ``key.json`` is ours.

        ``key.json`` is written atomically, so one that is unreadable, or holds a key whose hash
        is not the folder's name, was damaged or edited: the folder is refused (delete it). Only
        a key of the same hash that is not ours is a hash collision.
        """
        key_file = self.path / "key.json"
        if key_file.exists() or key_file.is_symlink():
            stored = read_json(key_file)
            if stored == self.key:
                return
            if isinstance(stored, dict) and key_hash(stored) == self.key_hash:
                raise KdlightError(
                    f"teacher logit store {self.path} holds key {stored}, not {self.key}, of the "
                    "same hash (a hash collision); use another store root."
                )
            what = "unreadable" if stored is None else "damaged (it holds another folder's key)"
            raise KdlightError(
                f"teacher store key file {key_file} is {what}; delete the folder {self.path} "
                "(a cache: the next run recomputes its teacher outputs)."
            )
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

    def _read(
        self, view: int, table: Table, shard: int, manifest: Mapping[str, Any]
    ) -> tuple[torch.Tensor | None, str | None]:
        """``(the shard as a copy-on-write memory map, None)`` if it validates, else ``(None,
        why)``; ``why`` is None when the shard is simply absent, else one clause naming the file.
        The meta must describe this table; the file itself is checked by
        :func:`kdlight.teacher.validate.read_shard`.
        """
        data, meta_file = self._files(view, table.name, shard)
        if not (meta_file.exists() or meta_file.is_symlink() or data.exists() or data.is_symlink()):
            return None, None
        meta = read_json(meta_file)
        if not isinstance(meta, dict):
            return None, f"{meta_file} is missing or unreadable"
        expected = self._expected_meta(view, table, shard)
        differ = sorted(k for k, v in expected.items() if meta.get(k) != v)
        if differ:
            return None, f"{meta_file} does not describe this table ({', '.join(differ)} differ)"
        indices = self.top_k is not None and table.name == TOPK_TABLES[1]
        return read_shard(
            data,
            meta,
            meta_file.name,
            manifest,
            manifest_file(self, view).name,
            expected["shape"],
            table.dtype,
            self.num_classes if indices else None,
        )

    def _read_all(
        self, view: int, tables: tuple[Table, ...]
    ) -> tuple[dict[str, list[torch.Tensor | None]], list[tuple[Table, int]], list[str]]:
        """Every shard of ``tables`` that validates, the (table, shard) pairs that do not, and
        why those present did not."""
        files = read_manifest(self, view)
        found: dict[str, list[torch.Tensor | None]] = {}
        missing, problems = [], []
        for table in tables:
            found[table.name] = []
            for k in range(self.num_shards):
                tensor, why = self._read(view, table, k, files)
                found[table.name].append(tensor)
                if tensor is None:
                    missing.append((table, k))
                if why:
                    problems.append(why)
        return found, missing, problems

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
        found, missing, problems = self._read_all(view, self.logit_tables)
        if problems:
            raise DataError(
                f"teacher logits for view {view} are not trusted: {problems[0]}; compute them "
                "again with TeacherLogitStore.get()."
            )
        if missing:
            raise DataError(
                f"teacher logits for view {view} in {self.path} are missing; "
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
        found, missing, problems = self._read_all(view, tables)
        if missing and not os.access(self.path, os.W_OK):
            raise DataError(
                f"teacher store folder {self.path} is not writable and "
                + (problems[0] if problems else f"lacks view {view}'s {missing[0][0].name!r}")
                + "; set paths.store_dir (or KDLIGHT_STORE) to a folder you can write, or ask "
                "the store's owner to fill it."
            )
        for _attempt in range(3):
            if not missing:
                break
            with self._lock(view):
                # another writer may be done; judged (and reported) again under the lock
                found, missing, problems = self._read_all(view, tables)
                for why in problems:
                    log.warning("teacher store: %s; it is recomputed, not served.", why)
                if missing:
                    try:
                        fill(self, view, missing, compute, batch_size, progress)
                    except LostTemp:
                        pass  # another process removed our temp file: read what it published
                    found, missing, problems = self._read_all(view, tables)
            self._cache.pop(view, None)
        if missing:
            table, shard = missing[0]
            raise DataError(
                f"teacher table {table.name!r} of view {view}, shard {shard} in {self.path} does "
                f"not validate after it was written ({problems[0] if problems else 'missing'}); "
                "check the file system (free space, other writers)."
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
