"""The report's figures: heat maps and accuracy curves over the swept hparams, methods side by side."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kdlight.errors import KdlightError
from kdlight.reporting.table import Absent, Row, hashable, same_value, teachers_of, varying_keys
from kdlight.reporting.text import fmt, short_label, slug

#: Alpha x T figures are drawn only for grids with at most this many values per axis.
MAX_GRID = 12
#: Keys every run has (:func:`kdlight.run.hparams.hparams_of`); a method's own settings come first as axes.
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


def write_figures(rows: Sequence[Row], out: Path, axes: Sequence[str] | None = None) -> list[Path]:
    """Heat maps (y x x) and accuracy-vs-x plots for the two swept hparams; their paths.

    The axes come from :func:`choose_axes` (alpha x T for a Hinton sweep, alpha x beta for
    DKD, ...); one figure per combination of any other hparam that varies.
    """
    from kdlight.reporting import plots

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
            same_value(b.hparams.get(k), members[0].hparams.get(k))
            for k in ("data", "student")
            if k in b.hparams
        ):
            refs[
                f"student alone ({fmt(b.hparams.get('experiment'))}, lr={fmt(b.hparams.get('lr'))}) "
                f"{100 * b.stats['test/acc_best'].mean:.2f}%"
            ] = 100 * b.stats["test/acc_best"].mean
    for t in teachers_of([run for r in members for run in r.runs]):
        if t.test_acc is not None:
            refs[f"teacher ({fmt(t.name)}) {100 * t.test_acc:.2f}%"] = 100 * t.test_acc
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
            f"{short_label(k)}={fmt(r.hparams.get(k))}"
            for k in varying
            if len({hashable(o.hparams.get(k, Absent)) for o in same}) > 1
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
        groups.setdefault(tuple(hashable(r.hparams.get(k)) for k in others), []).append(r)
    xl, yl = short_label(x_key), short_label(y_key) if y_key else ""
    written: list[Path] = []
    for members in groups.values():
        desc = ", ".join(f"{k}={fmt(members[0].hparams.get(k))}" for k in others)
        suffix = ("__" + slug(desc)) if desc else ""
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
                name = f"{y_key}={a:g}" if y_key else fmt(members[0].hparams.get("method"))
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
