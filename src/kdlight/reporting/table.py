"""Aggregating runs into a table: one row per configuration, mean and std over its seeds."""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from kdlight.errors import KdlightError
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
    references: list[tuple[str, Row]] = field(default_factory=list)

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


#: The metric the delta columns compare (test accuracy of the validation-best checkpoint).
DELTA_KEY = "test/acc_best"


def delta(row: Row, reference: Row, key: str = DELTA_KEY) -> float | None:
    """``row``'s mean of ``key`` minus ``reference``'s (a fraction), or None when either is missing."""
    a, b = row.stats[key].mean, reference.stats[key].mean
    return None if a is None or b is None else a - b


def references(rows: Sequence[Row], selectors: Sequence[str] = ()) -> list[tuple[str, Row]]:
    """The rows the delta columns compare against, each with its column label.

    First the student alone (the one row whose method is ``none``), when there is exactly one;
    then one row per selector ``key=value[,key=value...]`` (e.g. ``method=kd`` or
    ``method=kd,logit_standardization=false``), which must match exactly one row.
    """
    out: list[tuple[str, Row]] = []
    alone = [r for r in rows if r.hparams.get("method") == "none"]
    if len(alone) == 1:
        out.append(("alone", alone[0]))
    for text in selectors:
        wanted = _parse_selector(text)
        found = [
            r
            for r in rows
            if all(same_value(r.hparams.get(k, Absent), v) for k, v in wanted.items())
        ]
        if len(found) != 1:
            raise KdlightError(
                f"--versus {text} matches {len(found)} configurations of the report; it must match "
                "exactly one (add key=value pairs, e.g. method=kd,logit_standardization=false)."
            )
        out.append((text, found[0]))
    return out


def _parse_selector(text: str) -> dict[str, Any]:
    pairs = [p for p in str(text).split(",") if p.strip()]
    wanted = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise KdlightError(
                f"--versus {text} is not a selector; give key=value pairs separated by commas, "
                "e.g. method=kd or method=kd,logit_standardization=false."
            )
        try:
            wanted[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError:
            wanted[key.strip()] = value
    if not wanted:
        raise KdlightError(f"--versus {text!r} is empty; give key=value pairs, e.g. method=kd.")
    return wanted


@dataclass
class Teacher:
    """A teacher as the runs that used it recorded it (``teacher/*`` in its record)."""

    name: Any
    source: str
    test_acc: float | None
    val_acc: float | None
    runs: int


def teachers_of(runs: Sequence[Run]) -> list[Teacher]:
    """The distinct teachers of ``runs`` in order of first use: by weights file and accuracy, so
    two trainings of one teacher config (records gathered on two machines) are two teachers."""
    found: dict[tuple, Teacher] = {}
    for r in runs:
        source = r.metrics.get("teacher/source")
        if source is None:
            continue
        test = _float_or_none(r.metrics.get("teacher/test_acc"))
        val = _float_or_none(r.metrics.get("teacher/val_acc"))
        key = (str(source), test, val)
        if key in found:
            found[key].runs += 1
        else:
            found[key] = Teacher(r.hparams.get("teacher"), str(source), test, val, 1)
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
