"""Turn a folder of runs (a multirun, or many) into a table and plots: ``kdlight-report DIR [--out OUT]``.

A run is any folder holding ``metrics.json`` or ``.hydra/config.yaml`` (as written by
:func:`kdlight.train.run`). Finished runs are grouped by configuration (their hparams minus
``seed``); each configuration becomes one row with the mean and sample standard deviation over
its seeds of the test accuracy of the validation-best checkpoint (``test/acc_best``), of the
last checkpoint (``test/acc_last``) and of the best validation accuracy (``val/acc_best``).

Written into OUT (default: DIR):

- ``results.csv``: one row per configuration; the hparams that vary across finished runs,
  ``n_seeds``, ``seeds``, then ``<metric>_mean`` / ``<metric>_std`` as fractions in [0, 1]
  (the units of ``metrics.json``), then ``wall_s_mean`` / ``wall_s_std`` (seconds per run); the
  std is blank when a configuration has one seed;
- ``report.md``: the same table in percent (2 decimals, ``mean ± std``), the settings every
  run shares, the figures, and the runs that failed (with their error) or have no final
  metrics (still running, killed, or crashed before training) in sections of their own, and
  the teachers the runs distilled from (weights file, test and validation accuracy);
- ``heatmap_<Y>_<X>*.png``: mean test accuracy (val-best) over the two swept hparams (alpha x
  T for a Hinton sweep, alpha x beta for DKD; ``--axes Y,X`` to choose), when both vary; one
  map per combination of any other hparam that varies (named in the title and file);
- ``accuracy_vs_<X>*.png``: test accuracy (val-best) against X, one line per Y value, error
  bars = std over seeds, when X varies (same grouping); student-alone baselines and the
  teacher dashed.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import re
import statistics
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kdlight.errors import KdlightError, user_errors_exit

#: (metrics.json key, column title in report.md)
METRICS: tuple[tuple[str, str], ...] = (
    ("test/acc_best", "test acc (val-best ckpt)"),
    ("test/acc_last", "test acc (last ckpt)"),
    ("val/acc_best", "best val acc"),
)
#: metrics.json key of a run's wall time in seconds (its own column, in minutes in report.md)
WALL = "wall_s"
#: Every metrics.json key a row holds statistics of: the accuracies, then the wall time.
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
#: Alpha x T figures are drawn only for grids with at most this many values per axis.
MAX_GRID = 12
FINISHED, FAILED, RUNNING, MISSING, UNREADABLE = (
    "finished",
    "failed",
    "running",
    "no metrics",
    "unreadable",
)


@dataclass
class Run:
    """One run folder: its status, hparams (with ``seed``), final metrics and, if failed, the error."""

    path: Path
    status: str
    hparams: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    overrides: list[str] = field(default_factory=list)

    @property
    def seed(self) -> Any:
        return self.hparams.get("seed")


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


# ---- finding and reading runs -------------------------------------------------------------


def find_run_dirs(root: str | os.PathLike) -> list[Path]:
    """Every folder under ``root`` (``root`` included) holding ``metrics.json`` or ``.hydra/config.yaml``.

    Sorted naturally (job ``10`` after job ``9``); symlinked folders are not followed.
    """
    root = Path(root)
    found = []
    for here, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d not in ("checkpoints", "tb", "analysis")]
        path = Path(here)
        if "metrics.json" in files or (path / ".hydra" / "config.yaml").is_file():
            found.append(path)
    return sorted(found, key=lambda p: _natural_key(str(p.relative_to(root))))


def read_run(path: str | os.PathLike) -> Run:
    """Read one run folder; a missing or unreadable ``metrics.json`` gives a run with that status."""
    path = Path(path)
    overrides = _read_overrides(path / ".hydra" / "overrides.yaml")
    metrics_file = path / "metrics.json"
    if not metrics_file.is_file():
        return Run(path, MISSING, _hparams_from_config(path), overrides=overrides)
    try:
        data = json.loads(metrics_file.read_text())
        if not isinstance(data, dict):
            raise ValueError(f"it holds a {type(data).__name__}, not an object")
    except (OSError, ValueError) as exc:
        return Run(
            path,
            UNREADABLE,
            _hparams_from_config(path),
            error=f"metrics.json: {exc}",
            overrides=overrides,
        )
    hparams = dict(data.get("hparams") or {}) or _hparams_from_config(path)
    status = data.get("status") or (FINISHED if "test/acc_last" in data else RUNNING)
    metrics = {k: v for k, v in data.items() if k not in ("status", "hparams", "error")}
    return Run(path, status, hparams, metrics, data.get("error"), overrides)


def _hparams_from_config(run_dir: Path) -> dict[str, Any]:
    """The experiment name and seed from ``.hydra/config.yaml``, for runs that died before metrics.json."""
    config = run_dir / ".hydra" / "config.yaml"
    if not config.is_file():
        return {}
    try:
        import yaml

        cfg = yaml.safe_load(config.read_text()) or {}
        return {"experiment": cfg.get("name"), "seed": cfg.get("seed")}
    except Exception:  # noqa: BLE001 - a config we cannot read still gets listed, without hparams
        return {}


def _read_overrides(path: Path) -> list[str]:
    if not path.is_file():
        return []
    try:
        import yaml

        items = yaml.safe_load(path.read_text()) or []
        return [str(i) for i in items] if isinstance(items, list) else []
    except Exception:  # noqa: BLE001 - overrides are only shown, never needed
        return []


# ---- aggregation ------------------------------------------------------------------------


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
    return tuple(sorted((k, _hashable(v)) for k, v in hparams.items() if k != "seed"))


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
    out = [k for k in keys if len({_hashable(d.get(k, _Absent)) for d in hparam_dicts}) > 1]
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


def build_report(
    root: str | os.PathLike,
    out: str | os.PathLike | None = None,
    axes: Sequence[str] | None = None,
) -> Report:
    """Find the runs under ``root``, write ``results.csv``, ``report.md`` and the figures into ``out``.

    Raises :class:`~kdlight.errors.KdlightError` when ``root`` does not exist or holds no run.
    """
    root = Path(root)
    if not root.is_dir():
        raise KdlightError(
            f"report directory {root} does not exist; give a run or multirun folder "
            "(e.g. logs/<experiment>/multiruns/<time>)."
        )
    dirs = find_run_dirs(root)
    if not dirs:
        raise KdlightError(
            f"no runs found under {root}: no folder in it holds a metrics.json or .hydra/config.yaml."
        )
    out = Path(out) if out is not None else root
    out.mkdir(parents=True, exist_ok=True)
    runs = [read_run(d) for d in dirs]
    finished = [r for r in runs if r.status == FINISHED]
    rows = group_runs(finished)
    columns = varying_keys([r.hparams for r in rows]) or ["experiment"]
    rows = sort_rows(rows, columns)
    shared = {k: v for k, v in rows[0].hparams.items() if k not in columns} if rows else {}
    shared = {
        k: shared[k]
        for k in order_keys(shared)
        if all(_same(r.hparams.get(k), shared[k]) for r in rows)
    }
    figures = write_figures(rows, out, axes)
    report = Report(root, out, runs, rows, columns, shared, figures)
    write_csv(report, out / "results.csv")
    (out / "report.md").write_text(render_markdown(report))
    return report


# ---- outputs ------------------------------------------------------------------------------


def write_csv(report: Report, path: Path) -> None:
    """``results.csv``: hparam columns, ``n_seeds``, ``seeds``, ``<metric>_mean/_std`` (fractions), ``wall_s_mean/_std``."""
    header = [*report.columns, "n_seeds", "seeds"]
    for key in STAT_KEYS:
        header += [f"{key}_mean", f"{key}_std"]
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        for row in report.rows:
            line = [_csv_value(row.hparams.get(c)) for c in report.columns]
            line += [len(row.runs), " ".join(str(s) for s in row.seeds)]
            for key in STAT_KEYS:
                st = row.stats[key]
                line += [_csv_value(st.mean), _csv_value(st.std)]
            writer.writerow(line)


def render_markdown(report: Report) -> str:
    """The text of ``report.md``."""
    runs = report.runs
    counts = {s: len(report.by_status(s)) for s in (FINISHED, FAILED, RUNNING, MISSING, UNREADABLE)}
    others = [r for r in runs if r.status not in counts]
    lines = [f"# kdlight report: `{report.root}`", ""]
    parts = [
        f"{counts[FINISHED]} finished",
        f"{counts[FAILED]} failed",
        f"{counts[RUNNING]} running or killed",
        f"{counts[MISSING] + counts[UNREADABLE]} without metrics",
    ]
    if others:
        parts.append(f"{len(others)} with another status")
    lines += [f"{len(runs)} runs: {', '.join(parts)}; {len(report.rows)} configurations.", ""]
    if report.shared:
        lines += [
            "Shared by every finished run: "
            + ", ".join(f"{k}={_fmt(v)}" for k, v in report.shared.items()),
            "",
        ]
    lines += ["## Results", ""]
    if report.rows:
        best = _best_row(report.rows)
        lines += [
            "Accuracies in %, mean ± sample std over seeds (no std with one seed). "
            "*test acc (val-best ckpt)*: test accuracy of the checkpoint with the best validation "
            "accuracy, the number to compare. "
            + (
                "The **bold** row has the best mean validation accuracy (selection on validation, never test)."
                if best is not None
                else ""
            ),
            "",
        ]
        header = [SHORT.get(c, c) for c in report.columns] + ["n_seeds"] + [t for _, t in METRICS]
        header.append("wall time per run (min)")
        lines.append("| " + " | ".join(header) + " |")
        lines.append(
            "|" + "|".join(["---"] * len(report.columns) + ["---:"] * (2 + len(METRICS))) + "|"
        )
        for row in report.rows:
            cells = [_md(_fmt(row.hparams.get(c))) for c in report.columns] + [str(len(row.runs))]
            cells += [_pct(row.stats[key]) for key, _ in METRICS]
            cells.append(_minutes(row.stats[WALL]))
            if row is best:
                cells = [f"**{c}**" if c else c for c in cells]
            lines.append("| " + " | ".join(cells) + " |")
    else:
        lines.append("No run has finished yet.")
    lines.append("")
    teachers = teachers_of(report.by_status(FINISHED))
    if teachers:
        lines += [
            "## Teachers",
            "",
            "The teachers the finished runs distilled from, as each run recorded them.",
            "",
            "| teacher | weights | test acc | val acc | runs |",
            "|---|---|---:|---:|---:|",
        ]
        for t in teachers:
            lines.append(
                f"| {_md(_fmt(t.name))} | `{_md(t.source)}` | {_pct1(t.test_acc)} "
                f"| {_pct1(t.val_acc)} | {t.runs} |"
            )
        lines.append("")
    if report.figures:
        lines += ["## Figures", ""]
        for fig in report.figures:
            rel = os.path.relpath(fig, report.out)
            lines += [f"![{fig.stem}]({rel})", ""]
    elif choose_axes(report.rows)[0]:
        lines += [
            f"No figures: they need a grid of swept hyper-parameters (at most {MAX_GRID} values "
            "per axis), e.g. hparams_search=alpha_t_grid; results.csv has every configuration.",
            "",
        ]
    # runs that died before metrics.json only know experiment and seed: leave them out here
    distinguishing = varying_keys([r.hparams for r in runs if "method" in r.hparams])
    failed = report.by_status(FAILED)
    if failed:
        lines += ["## Failed runs", "", "| run | seed | config | error |", "|---|---|---|---|"]
        for r in failed:
            lines.append(
                f"| {_md(_rel(r, report.root))} | {_fmt(r.seed)} | {_md(_describe(r, distinguishing))} "
                f"| {_md(_one_line(r.error or 'no error recorded'))} |"
            )
        lines.append("")
    incomplete = [r for r in runs if r.status not in (FINISHED, FAILED)]
    if incomplete:
        lines += [
            "## Runs without final metrics",
            "",
            "Still running, killed, or stopped before training started (see each run's `train.log`).",
            "",
            "| run | status | seed | config | overrides |",
            "|---|---|---|---|---|",
        ]
        for r in incomplete:
            status = "running or killed" if r.status == RUNNING else r.status
            if r.error:
                status += f": {_one_line(r.error)}"
            lines.append(
                f"| {_md(_rel(r, report.root))} | {_md(status)} | {_fmt(r.seed)} "
                f"| {_md(_describe(r, distinguishing))} | {_md(' '.join(r.overrides))} |"
            )
        lines.append("")
    return "\n".join(lines)


@dataclass
class Teacher:
    """A teacher as the runs that used it recorded it (``teacher/*`` in metrics.json)."""

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


#: Keys every run has (:func:`kdlight.train.hparams_of`); a method's own settings come first as axes.
GENERAL_KEYS = frozenset(
    ("experiment", "seed", "data", "labeled_fraction", "unlabeled", "augment", "batch_size",
     "student", "optimizer", "lr", "max_epochs", "method", "teacher", "teacher_store")
)  # fmt: skip


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def choose_axes(rows: Sequence[Row], axes: Sequence[str] | None = None) -> tuple[str, str | None]:
    """The swept hyper-parameters to plot: ``(x, y)`` (``y`` None when only one varies).

    Default: among the numeric hparams that vary across the distillation rows, the method's own
    settings before general ones (lr, batch size, ...): y the first, x ``temperature`` when it
    varies, else the second (alpha x T, alpha x beta).
    ``axes`` = ``(y, x)`` names them explicitly (``--axes alpha,beta``).
    """
    kd = [r for r in rows if r.hparams.get("method") != "none"]
    if axes:
        for k in axes:
            if not any(k in r.hparams for r in kd):
                known = sorted({k for r in kd for k in r.hparams})
                raise KdlightError(
                    f"--axes names {k!r}, which no distillation run has; valid names: {', '.join(known)}."
                )
        return (axes[-1], axes[0] if len(axes) > 1 else None)
    numeric = [
        k
        for k in varying_keys([r.hparams for r in kd], ignore=("seed",))
        if all(_is_number(r.hparams.get(k)) for r in kd if k in r.hparams)
    ]
    numeric.sort(key=lambda k: k in GENERAL_KEYS)  # stable: column order within each class
    if not numeric:
        return ("", None)
    own = [k for k in numeric if k not in GENERAL_KEYS] or numeric
    x = "temperature" if "temperature" in numeric else own[min(1, len(own) - 1)]
    others = [k for k in numeric if k != x]
    return (x, others[0] if others else None)


def _label(key: str) -> str:
    return SHORT.get(key, key)


def write_figures(rows: Sequence[Row], out: Path, axes: Sequence[str] | None = None) -> list[Path]:
    """Heat maps (y x x) and accuracy-vs-x plots for the two swept hparams; their paths.

    The axes come from :func:`choose_axes` (alpha x T for a Hinton sweep, alpha x beta for
    DKD, ...); one figure per combination of any other hparam that varies.
    """
    from kdlight import plots

    x_key, y_key = choose_axes(rows, axes)
    written = _grid_figures(rows, out, x_key, y_key, plots) if x_key else []
    if not written:
        written = _methods_figure(rows, out, plots)
    return written


def _references(rows: Sequence[Row], members: Sequence[Row]) -> dict[str, float]:
    """Dashed lines: the student-alone baselines on the same data and student, and the teachers."""
    refs = {}
    for b in rows:
        if b.hparams.get("method") != "none" or b.stats["test/acc_best"].mean is None:
            continue
        if all(
            _same(b.hparams.get(k), members[0].hparams.get(k))
            for k in ("data", "student")
            if k in b.hparams
        ):
            refs[
                f"student alone ({_fmt(b.hparams.get('experiment'))}, lr={_fmt(b.hparams.get('lr'))}) "
                f"{100 * b.stats['test/acc_best'].mean:.2f}%"
            ] = 100 * b.stats["test/acc_best"].mean
    for t in teachers_of([run for r in members for run in r.runs]):
        if t.test_acc is not None:
            refs[f"teacher ({_fmt(t.name)}) {100 * t.test_acc:.2f}%"] = 100 * t.test_acc
    return refs


def _methods_figure(rows: Sequence[Row], out: Path, plots) -> list[Path]:
    """Methods side by side (``methods.png``) when several distillation methods were run."""
    kd = [
        r
        for r in rows
        if r.hparams.get("method") not in (None, "none")
        and r.stats["test/acc_best"].mean is not None
    ]
    if len({r.hparams.get("method") for r in kd}) < 2:
        return []
    varying = [
        k for k in varying_keys([r.hparams for r in kd]) if k not in ("method", "experiment")
    ]
    labels = []
    for r in kd:
        same = [o for o in kd if o.hparams.get("method") == r.hparams.get("method")]
        extra = [
            f"{_label(k)}={_fmt(r.hparams.get(k))}"
            for k in varying
            if len({_hashable(o.hparams.get(k, _Absent)) for o in same}) > 1
        ]
        labels.append(" ".join([str(r.hparams.get("method")), *extra]))
    stats = [r.stats["test/acc_best"] for r in kd]
    fig = plots.bars_figure(
        labels,
        [100 * s.mean for s in stats],
        errors=[100 * (s.std or 0.0) for s in stats],
        hlines=_references(rows, kd),
        title="Test acc (val-best ckpt) per method; bars: std over seeds",
        ylabel="test acc (%)",
    )
    return [plots.save(fig, out / "methods.png")]


def _grid_figures(
    rows: Sequence[Row], out: Path, x_key: str, y_key: str | None, plots
) -> list[Path]:
    """The heat maps and curves of :func:`write_figures` for axes ``x_key`` / ``y_key``."""
    kd = [
        r
        for r in rows
        if x_key in r.hparams
        and (y_key is None or y_key in r.hparams)
        and r.stats["test/acc_best"].mean is not None
    ]
    if not kd:
        return []

    def yval(r: Row) -> float:
        return float(r.hparams[y_key]) if y_key is not None else 0.0  # one series

    xs = sorted({float(r.hparams[x_key]) for r in kd})
    ys = sorted({yval(r) for r in kd})
    if len(xs) > MAX_GRID or len(ys) > MAX_GRID:  # e.g. optuna: values are not on a grid
        return []
    others = [k for k in varying_keys([r.hparams for r in kd]) if k not in (x_key, y_key)]
    groups: dict[tuple, list[Row]] = {}
    for r in kd:
        groups.setdefault(tuple(_hashable(r.hparams.get(k)) for k in others), []).append(r)
    xl, yl = _label(x_key), _label(y_key) if y_key else ""
    written: list[Path] = []
    for members in groups.values():
        desc = ", ".join(f"{k}={_fmt(members[0].hparams.get(k))}" for k in others)
        suffix = ("__" + _slug(desc)) if desc else ""
        where = f" ({desc})" if desc else ""
        cell = {(yval(r), float(r.hparams[x_key])): r for r in members}
        y_vals = sorted({a for a, _ in cell})
        x_vals = sorted({t for _, t in cell})
        at = cell.get

        if y_key is not None and len(y_vals) > 1 and len(x_vals) > 1:
            grid = [
                [
                    100 * at((a, t)).stats["test/acc_best"].mean if at((a, t)) else math.nan
                    for t in x_vals
                ]
                for a in y_vals
            ]
            fig = plots.heatmap(
                grid,
                [f"{a:g}" for a in y_vals],
                [f"{t:g}" for t in x_vals],
                title=f"Mean test acc (%) of the val-best checkpoint{where}",
                xlabel="temperature T" if x_key == "temperature" else x_key,
                ylabel="alpha (weight of the soft term)" if y_key == "alpha" else y_key,
                cbar_label="test acc (%)",
            )
            written.append(plots.save(fig, out / f"heatmap_{yl}_{xl}{suffix}.png"))
        if len(x_vals) > 1:
            series = {}
            for a in y_vals:
                pts = sorted(
                    (t, at((a, t)).stats["test/acc_best"]) for t in x_vals if at((a, t)) is not None
                )
                name = f"{y_key}={a:g}" if y_key else _fmt(members[0].hparams.get("method"))
                series[name] = (
                    [t for t, _ in pts],
                    [100 * s.mean for _, s in pts],
                    [100 * (s.std or 0.0) for _, s in pts],
                )
            refs = _references(rows, members)
            fig = plots.lines_with_errorbars(
                series,
                title=f"Test acc of the val-best checkpoint vs {x_key}{where}; bars: std over seeds",
                xlabel="temperature T" if x_key == "temperature" else x_key,
                ylabel="test acc (%)",
                logx=min(x_vals) > 0 and x_key == "temperature",
                hlines=refs,
            )
            written.append(plots.save(fig, out / f"accuracy_vs_{xl}{suffix}.png"))
    return written


# ---- formatting helpers -------------------------------------------------------------------


class _Absent:
    """Marks a key a run does not have (baselines have no alpha), distinct from ``None``."""


def _hashable(v: Any) -> Any:
    if isinstance(v, list | tuple):
        return tuple(_hashable(x) for x in v)
    if isinstance(v, dict):
        return json.dumps(v, sort_keys=True, default=str)
    if isinstance(v, float) and v.is_integer():
        return int(v)  # 2 and 2.0 are the same temperature
    return v


def _same(a: Any, b: Any) -> bool:
    return _hashable(a) == _hashable(b)


def _sortable(v: Any) -> tuple:
    if v is None:
        return (0, 0, "")
    if isinstance(v, bool):
        return (1, int(v), "")
    if isinstance(v, int | float):
        return (1, float(v), "")
    return (2, 0, str(v))


def _natural_key(s: str) -> list:
    return [(0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.split(r"(\d+)", s) if t]


def _fmt(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def _csv_value(v: Any) -> Any:
    if v is None:
        return ""
    if isinstance(v, bool):
        return str(v).lower()
    return v


def _pct(st: Stat) -> str:
    if st.mean is None:
        return "–"
    text = f"{100 * st.mean:.2f}"
    return text + (f" ± {100 * st.std:.2f}" if st.std is not None else "")


def _minutes(st: Stat) -> str:
    """Seconds as minutes, ``mean ± std`` (1 decimal); ``—`` when no run recorded it."""
    if st.mean is None:
        return "—"
    return f"{st.mean / 60:.1f}" + (f" ± {st.std / 60:.1f}" if st.std is not None else "")


def _pct1(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.2f}"


def _float_or_none(value: Any) -> float | None:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(out) else out


def _best_row(rows: Sequence[Row]) -> Row | None:
    scored = [r for r in rows if r.stats["val/acc_best"].mean is not None]
    return max(scored, key=lambda r: r.stats["val/acc_best"].mean) if scored else None


def _describe(run: Run, keys: Sequence[str]) -> str:
    return " ".join(f"{SHORT.get(k, k)}={_fmt(run.hparams[k])}" for k in keys if k in run.hparams)


def _rel(run: Run, root: Path) -> str:
    rel = os.path.relpath(run.path, root)
    return "." if rel == "." else rel


def _one_line(text: str, limit: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _md(text: str) -> str:
    return text.replace("|", "\\|")


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", text.replace(", ", "_")).strip("_")


# ---- CLI ----------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="kdlight-report",
        description="Summarise the runs under DIR (e.g. a multirun folder) into report.md, results.csv and plots.",
    )
    parser.add_argument(
        "dir", type=Path, help="a run, multirun or log folder; searched recursively"
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="where to write the report (default: DIR)"
    )
    parser.add_argument(
        "--axes",
        default=None,
        help="the swept hparams to plot, Y,X (e.g. alpha,beta); default: the method's swept ones",
    )
    return parser.parse_args(argv)


@user_errors_exit
def main(argv: Sequence[str] | None = None) -> int:
    """``kdlight-report DIR [--out OUT]``; returns 0, exits 2 with one sentence on a user error."""
    args = parse_args(argv)
    if args.out is not None and Path(args.out).exists() and not Path(args.out).is_dir():
        raise KdlightError(
            f"--out {args.out} is a file, not a folder; name a folder for report.md, results.csv "
            "and the figures."
        )
    axes = [a.strip() for a in args.axes.split(",") if a.strip()] if args.axes else None
    report = build_report(args.dir, args.out, axes)
    statuses = {s: len(report.by_status(s)) for s in (FINISHED, FAILED)}
    print(
        f"{len(report.runs)} runs ({statuses[FINISHED]} finished, {statuses[FAILED]} failed), "
        f"{len(report.rows)} configurations -> {report.out / 'report.md'}, {report.out / 'results.csv'}"
        + (f", {len(report.figures)} figures" if report.figures else "")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
