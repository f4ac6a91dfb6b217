"""The one schema of a run's ``metrics.json`` and the only code that reads or writes that file.

On disk the record is one flat JSON object, as every kdlight version wrote it::

    {"status": "finished", "hparams": {...}, "wall_s": 12.3, "error": "...",
     "test/acc_best": 0.98, "test/acc_last": 0.97, "teacher/source": "...", ...}

``status`` is ``running``, ``finished`` or ``failed``; ``error`` (one sentence) only on a failed
run; every other key is a metric (:attr:`RunRecord.metrics`), so old runs still read.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kdlight.errors import DataError
from kdlight.io import atomic_write_json

METRICS_FILE = "metrics.json"
#: a run's record is a few kB; anything far larger is not one (read no further)
MAX_RECORD_BYTES = 16 * 1024 * 1024
#: the on-disk key of :attr:`RunRecord.wall_time_s`
_WALL_KEY = "wall_s"
_FIXED = ("status", "hparams", "error", _WALL_KEY)


@dataclass
class RunRecord:
    """A run's ``metrics.json``: status, hyper-parameters, flat metrics, error, wall time."""

    status: str = "unknown"
    hparams: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)  # test/acc_best, teacher/source, ...
    error: str | None = None
    wall_time_s: float | None = None

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunRecord:
        """The record of the flat on-disk object ``d`` (keys it does not name are metrics)."""
        hparams = d.get("hparams")
        wall = d.get(_WALL_KEY)
        return cls(
            status=str(d.get("status", "unknown")),
            hparams=dict(hparams) if isinstance(hparams, dict) else {},
            metrics={k: v for k, v in d.items() if k not in _FIXED},
            error=None if d.get("error") is None else str(d["error"]),
            wall_time_s=float(wall) if isinstance(wall, int | float) else None,
        )

    def to_dict(self) -> dict[str, Any]:
        """The flat on-disk object (``error`` / ``wall_s`` only when set)."""
        out: dict[str, Any] = dict(self.metrics)
        out["status"] = self.status
        out["hparams"] = self.hparams
        if self.error is not None:
            out["error"] = self.error
        if self.wall_time_s is not None:
            out[_WALL_KEY] = self.wall_time_s
        return out


def record_path(run_dir: str | Path) -> Path:
    """Where ``run_dir``'s record lives."""
    return Path(run_dir) / METRICS_FILE


def read_record(run_dir: str | Path) -> RunRecord | None:
    """``run_dir``'s record, or None when it has none; a bad file raises DataError naming it."""
    path = record_path(run_dir)
    try:
        with open(path, "rb") as fh:
            raw = fh.read(MAX_RECORD_BYTES + 1)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise DataError(f"{path} cannot be read ({exc.strerror or type(exc).__name__}).") from None
    if len(raw) > MAX_RECORD_BYTES:
        raise DataError(
            f"{path} is over {MAX_RECORD_BYTES // 2**20} MiB, not a run's metrics.json; "
            "remove or replace it."
        )
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise DataError(f"{path} is not valid JSON ({exc}); remove or replace it.") from None
    if not isinstance(data, dict):
        raise DataError(
            f"{path} holds a JSON {type(data).__name__}, not a run's record (an object)."
        )
    return RunRecord.from_dict(data)


def write_record(run_dir: str | Path, record: RunRecord) -> Path:
    """Write ``record`` into ``run_dir`` atomically (readers see the old or the whole new file)."""
    path = record_path(run_dir)
    atomic_write_json(path, record.to_dict())
    return path


__all__ = ["METRICS_FILE", "RunRecord", "read_record", "record_path", "write_record"]
