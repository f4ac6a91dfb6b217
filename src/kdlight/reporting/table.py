"""Aggregating runs into a table: one row per configuration, mean and std over its seeds."""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kdlight.reporting.collect import Run

#: (run record key, column title in report.md)
METRICS: tuple[tuple[str, str], ...] = (
    ("test/acc_best", "test acc (val-best ckpt)"),
    ("test/acc_last", "test acc (last ckpt)"),
    ("val/acc_best", "best val acc"),
)
#: run record key of a run's wall time in seconds (its own column, in minutes in report.md)
WALL = "wall_s"
#: Every run record key a row holds statistics of: the accuracies, then the wall time.
STAT_KEYS = (*(key for key, _ in METRICS), WALL)
#: Column order for hparams; keys not listed follow in alphabetical order.
HPARAM_ORDER = (
    "experiment",
    "data",
    "labeled_fraction",
    "unlabeled",
    "augment",
    "batch_size",
    "student",
    "method",
    "teacher",
    "optimizer",
    "lr",
    "max_epochs",
    "alpha",
    "temperature",
    "reduction",
)
#: Short column titles in report.md.
SHORT = {
    "temperature": "T",
    "labeled_fraction": "labeled",
    "batch_size": "batch",
    "max_epochs": "epochs",
}


@dataclass
class Stat:
    """Mean and sample std (``None`` for one value) of one metric over ``n`` seeds."""

    mean: float | None
    std: float | None
    n: int


@dataclass
class Row:
    """One configuration: the runs that share its hparams (all but ``seed``) and their statistics."""

    hparams: dict[str, Any]
    runs: list[Run]
    stats: dict[str, Stat]

    @property
    def seeds(self) -> list[Any]:
        return [r.seed for r in self.runs]


@dataclass
class Report:
    """Everything :func:`build_report` found and wrote."""

    root: Path
    out: Path
    runs: list[Run]
    rows: list[Row]
    columns: list[str]
    shared: dict[str, Any]
    figures: list[Path]

    def by_status(self, *statuses: str) -> list[Run]:
        return [r for r in self.runs if r.status in statuses]


def mean_std(values: Iterable[float]) -> Stat:
    """Mean and sample standard deviation (n - 1 in the denominator; ``None`` when n < 2)."""
    vals = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not vals:
        return Stat(None, None, 0)
    return Stat(
        statistics.fmean(vals), statistics.stdev(vals) if len(vals) > 1 else None, len(vals)
    )


def config_key(hparams: dict[str, Any]) -> tuple:
    """Hashable identity of a configuration: its hparams without ``seed``."""
    return tuple(sorted((k, hashable(v)) for k, v in hparams.items() if k != "seed"))


def group_runs(runs: Sequence[Run]) -> list[Row]:
    """Group runs by :func:`config_key` (first-seen order) with the statistics of every metric."""
    groups: dict[tuple, list[Run]] = {}
    for run in runs:
        groups.setdefault(config_key(run.hparams), []).append(run)
    rows = []
    for members in groups.values():
        hp = {k: v for k, v in members[0].hparams.items() if k != "seed"}
        stats = {key: mean_std(r.metrics.get(key) for r in members) for key in STAT_KEYS}
        rows.append(Row(hp, members, stats))
    return rows


def varying_keys(
    hparam_dicts: Sequence[dict[str, Any]], ignore: Iterable[str] = ("seed",)
) -> list[str]:
    """Keys whose value (absence counts as a value) differs between the dicts, in column order."""
    ignore = set(ignore)
    keys = {k for d in hparam_dicts for k in d if k not in ignore}
    out = [k for k in keys if len({hashable(d.get(k, Absent)) for d in hparam_dicts}) > 1]
    return order_keys(out)


def order_keys(keys: Iterable[str]) -> list[str]:
    """``keys`` in :data:`HPARAM_ORDER`, then alphabetically."""
    rank = {k: i for i, k in enumerate(HPARAM_ORDER)}
    return sorted(keys, key=lambda k: (rank.get(k, len(rank)), k))


def sort_rows(rows: list[Row], columns: Sequence[str]) -> list[Row]:
    """Baselines (method ``none``) first, then by the shown columns (missing values first)."""
    return sorted(
        rows,
        key=lambda r: (
            r.hparams.get("method") != "none",
            *(_sortable(r.hparams.get(c)) for c in columns),
        ),
    )


@dataclass
class Teacher:
    """A teacher as the runs that used it recorded it (``teacher/*`` in its record)."""

    name: Any
    source: str
    test_acc: float | None
    val_acc: float | None
    runs: int


def teachers_of(runs: Sequence[Run]) -> list[Teacher]:
    """The distinct teachers (by weights file) of ``runs``, in order of first use."""
    found: dict[str, Teacher] = {}
    for r in runs:
        source = r.metrics.get("teacher/source")
        if source is None:
            continue
        t = found.get(str(source))
        if t is None:
            found[str(source)] = Teacher(
                r.hparams.get("teacher"),
                str(source),
                _float_or_none(r.metrics.get("teacher/test_acc")),
                _float_or_none(r.metrics.get("teacher/val_acc")),
                1,
            )
        else:
            t.runs += 1
    return list(found.values())


class Absent:
    """Marks a key a run does not have (baselines have no alpha), distinct from ``None``."""


def hashable(v: Any) -> Any:
    if isinstance(v, list | tuple):
        return tuple(hashable(x) for x in v)
    if isinstance(v, dict):
        return json.dumps(v, sort_keys=True, default=str)
    if isinstance(v, float) and v.is_integer():
        return int(v)  # 2 and 2.0 are the same temperature
    return v


def same_value(a: Any, b: Any) -> bool:
    return hashable(a) == hashable(b)


def _sortable(v: Any) -> tuple:
    if v is None:
        return (0, 0, "")
    if isinstance(v, bool):
        return (1, int(v), "")
    if isinstance(v, int | float):
        return (1, float(v), "")
    return (2, 0, str(v))


def _float_or_none(value: Any) -> float | None:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(out) else out
