"""On-disk store of teacher logits per (view, sample), computed once and shared by every run of a sweep."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
import tempfile
from collections import OrderedDict
from collections.abc import Callable, Iterator
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


def _checksum(path: Path) -> str:
    """Return ``"blake2b:" + hex`` of the whole file (header included), read in 1 MiB chunks."""
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return "blake2b:" + digest.hexdigest()


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


def check_store_options(dtype: Any, batch_size: Any) -> None:
    """Raise :class:`ConfigError` unless ``dtype`` is a store dtype and ``batch_size`` a positive int."""
    if dtype not in _DTYPES:
        raise ConfigError(f"teacher_store.dtype must be one of {sorted(_DTYPES)}, got {dtype!r}.")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
        raise ConfigError(
            f"teacher_store.batch_size must be a positive integer, got {batch_size!r}."
        )


class TeacherLogitStore:
    """Teacher logits for every (view, sample), computed once, kept on disk as memory-mapped float16 (or float32).

    Layout: ``root / key_hash / {key.json, view_<v>.npy, view_<v>.json, view_<v>.lock}``, where
    ``key_hash`` is the first 16 hex digits of ``sha256(json.dumps(key, sort_keys=True))``.
    ``key`` must identify everything the logits depend on (teacher weights hash, dataset and
    split, augmentation name, seed and version); the store checks only that ``key.json`` equals
    it. A view is trusted only if its meta file names this key hash, shape ``(num_samples,
    num_classes)``, dtype, and a blake2b checksum equal to the data file's; anything else
    (missing meta, half-written or corrupt data, leftover temp files) counts as missing and is
    recomputed by :meth:`get`, never served. Writers serialise on an ``fcntl.flock`` per view,
    so concurrent :meth:`get` calls from several processes on one machine compute a view once
    (``flock`` may not be honoured on some network file systems).

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
    ) -> None:
        check_store_options(dtype, batch_size)
        if num_samples <= 0 or num_classes <= 0:
            raise ConfigError(
                f"teacher logit store needs num_samples > 0 and num_classes > 0, got {num_samples} and {num_classes}."
            )
        try:
            canonical = json.dumps(key, sort_keys=True)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"teacher logit store key must be JSON-serialisable: {exc}.") from exc
        self.key: dict = json.loads(canonical)
        self.key_hash: str = key_hash(self.key)
        self.num_samples = int(num_samples)
        self.num_classes = int(num_classes)
        self.dtype = dtype
        self.batch_size = batch_size  # the default of get(): 128-256 is fastest on CPU
        self.path: Path = Path(root) / self.key_hash
        self._cache: OrderedDict[int, torch.Tensor] = OrderedDict()
        self._init_dir()

    def _init_dir(self) -> None:
        """Create the directory and ``key.json``, or check that an existing ``key.json`` is ours."""
        self.path.mkdir(parents=True, exist_ok=True)
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
        atomic_write_text(key_file, json.dumps(self.key, sort_keys=True, indent=2) + "\n")

    def _files(self, view: int) -> tuple[Path, Path]:
        if not isinstance(view, int) or isinstance(view, bool) or view < 0:
            raise ValueError(f"view must be a non-negative int, got {view!r}")
        return self.path / f"view_{view}.npy", self.path / f"view_{view}.json"

    def _expected_meta(self, view: int) -> dict[str, Any]:
        return {
            "format": _FORMAT,
            "key_hash": self.key_hash,
            "view": view,
            "shape": [self.num_samples, self.num_classes],
            "dtype": self.dtype,
            "complete": True,
        }

    def has(self, view: int) -> bool:
        """Return True iff view ``view`` is on disk, complete, and its meta and checksum validate.

        Reads the whole data file once to check the checksum (about 1 ms per MB).
        """
        data, meta_file = self._files(view)
        try:
            meta = json.loads(meta_file.read_text())
        except (OSError, ValueError):
            return False
        if not isinstance(meta, dict):
            return False
        expected = self._expected_meta(view)
        if any(meta.get(k) != v for k, v in expected.items()):
            return False
        try:
            return meta.get("checksum") == _checksum(data)
        except OSError:
            return False

    def load(self, view: int) -> torch.Tensor:
        """Return view ``view`` as a (num_samples, num_classes) float16/float32 tensor backed by a memory map.

        The map is copy-on-write (``np.load(mmap_mode="c")``): reads share the page cache with
        other processes, while writes to the tensor stay private to this process and never
        reach the file (this also keeps torch from warning about a non-writable array).
        Raises :class:`DataError` if the view is missing or does not validate.
        """
        if not self.has(view):
            raise DataError(
                f"teacher logits for view {view} in {self.path} are missing or corrupt; "
                "compute them with TeacherLogitStore.get()."
            )
        return self._open(view)

    def _open(self, view: int) -> torch.Tensor:
        """Memory-map a view that has just been validated (see :meth:`load`)."""
        data, _ = self._files(view)
        arr = np.load(data, mmap_mode="c", allow_pickle=False)
        if arr.shape != (self.num_samples, self.num_classes) or arr.dtype != _DTYPES[self.dtype]:
            raise DataError(
                f"teacher logits file {data} has shape {arr.shape} and dtype {arr.dtype}, expected "
                f"{(self.num_samples, self.num_classes)} and {self.dtype}."
            )
        return torch.from_numpy(arr)

    def get(
        self,
        view: int,
        compute: Callable[[torch.Tensor], torch.Tensor],
        batch_size: int | None = None,
        progress: bool = True,
    ) -> torch.Tensor:
        """Return view ``view`` (as :meth:`load`), first computing and storing it if it is not valid on disk.

        ``compute(idx)`` gets a CPU LongTensor of consecutive sample indices (``0..N-1`` in
        batches of ``batch_size``) and must return the teacher's (len(idx), num_classes)
        logits for those samples under this view (``batch_size`` None: the store's own); the
        caller chooses device, inference mode and augmentation. Exactly one process computes a
        view: the others block on the view's lock file, then load the result. Output that is mis-shaped, NaN/Inf, or beyond
        the store dtype's range raises :class:`KdlightError` and leaves nothing behind.
        """
        batch_size = self.batch_size if batch_size is None else int(batch_size)
        if batch_size <= 0:
            raise ConfigError(f"teacher logit batch_size must be > 0, got {batch_size}.")
        if not self.has(view):
            with self._lock(view):
                if not self.has(view):  # another process may have finished it while we waited
                    self._compute_and_write(view, compute, batch_size, progress)
            self._cache.pop(view, None)
            return self.load(view)
        return self._open(view)

    def gather(self, view: int, idx: torch.Tensor) -> torch.Tensor:
        """Return rows ``idx`` of view ``view`` as float32 on ``idx``'s device.

        The view must already be stored (see :meth:`get`); the last two views used stay open.
        """
        table = self._cache.get(view)
        if table is None:
            table = self.load(view)
            self._cache[view] = table
            while len(self._cache) > _MAX_OPEN_VIEWS:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(view)
        return table[idx.cpu()].to(device=idx.device, dtype=torch.float32)

    def __getstate__(self) -> dict[str, Any]:
        # Open memory maps would be pickled as full copies (e.g. into DataLoader workers).
        state = self.__dict__.copy()
        state["_cache"] = OrderedDict()
        return state

    def _lock(self, view: int) -> contextlib.AbstractContextManager[None]:
        """Hold an exclusive ``flock`` on ``view_<v>.lock`` (released when the process dies, too)."""
        return file_lock(self.path / f"view_{view}.lock")

    def _compute_and_write(
        self,
        view: int,
        compute: Callable[[torch.Tensor], torch.Tensor],
        batch_size: int,
        progress: bool,
    ) -> None:
        """Compute all rows into a temp file, then publish data before meta; call with the lock held."""
        data, meta_file = self._files(view)
        # We hold the lock, so any temp file of this view is a leftover of a killed writer.
        for stale in self.path.glob(f".view_{view}.*.tmp"):
            with contextlib.suppress(OSError):
                stale.unlink()
        np_dtype = _DTYPES[self.dtype]
        fd, tmp_name = tempfile.mkstemp(dir=self.path, prefix=f".view_{view}.npy.", suffix=".tmp")
        os.close(fd)
        tmp = Path(tmp_name)
        try:
            out = np.lib.format.open_memmap(
                tmp, mode="w+", dtype=np_dtype, shape=(self.num_samples, self.num_classes)
            )
            total = -(-self.num_samples // batch_size)
            with _progress(f"teacher logits, view {view}", total, progress) as advance:
                for start in range(0, self.num_samples, batch_size):
                    stop = min(start + batch_size, self.num_samples)
                    idx = torch.arange(start, stop, dtype=torch.long)
                    out[start:stop] = self._check_batch(compute(idx), view, start, stop, np_dtype)
                    advance()
            out.flush()
            del out
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            meta = {**self._expected_meta(view), "checksum": _checksum(tmp)}
            # No trusted state at any instant: drop the old meta, publish data, then meta.
            with contextlib.suppress(FileNotFoundError):
                meta_file.unlink()
            os.replace(tmp, data)
            atomic_write_text(meta_file, json.dumps(meta, indent=2) + "\n")
            fsync_dir(self.path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()

    def _check_batch(
        self, logits: Any, view: int, start: int, stop: int, np_dtype: type
    ) -> np.ndarray:
        """Return ``logits`` as a numpy array of the store dtype, or raise if mis-shaped or non-finite."""
        expected = (stop - start, self.num_classes)
        if not isinstance(logits, torch.Tensor) or tuple(logits.shape) != expected:
            got = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
            raise KdlightError(
                f"teacher compute for samples {start}..{stop - 1} returned {got}, expected a tensor of shape {expected}."
            )
        arr = logits.detach().to(device="cpu", dtype=torch.float32).numpy()
        if not np.isfinite(arr).all():
            raise KdlightError(
                f"teacher logits for view {view}, samples {start}..{stop - 1} contain NaN or Inf; check the teacher checkpoint."
            )
        with np.errstate(over="ignore"):  # overflow is reported below, as one clear error
            cast = arr.astype(np_dtype)
        if not np.isfinite(cast).all():
            raise KdlightError(
                f"teacher logits for view {view} exceed the {self.dtype} range (max |logit| "
                f"{float(np.abs(arr).max()):.3g}); use dtype float32."
            )
        return cast
