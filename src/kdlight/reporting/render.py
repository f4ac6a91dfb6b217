"""The report's files from its table: ``results.csv`` and ``report.md``."""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Sequence
from pathlib import Path

from kdlight.io import atomic_write_text
from kdlight.reporting.collect import FAILED, FINISHED, MISSING, RUNNING, UNREADABLE, Run
from kdlight.reporting.figures import MAX_GRID, choose_axes
from kdlight.reporting.table import (
    METRICS,
    SHORT,
    STAT_KEYS,
    WALL,
    Report,
    Row,
    delta,
    teachers_of,
    varying_keys,
)
from kdlight.reporting.text import csv_value, fmt, md_cell, minutes, one_line, pct, pct1


def write_csv(report: Report, path: Path) -> None:
    """``results.csv``: hparam columns, ``n_seeds``, ``seeds``, ``<metric>_mean/_std`` (fractions), ``wall_s_mean/_std``."""
    header = [*report.columns, "n_seeds", "seeds"]
    for key in STAT_KEYS:
        header += [f"{key}_mean", f"{key}_std"]
    header += [f"delta_vs_{label}" for label, _ in report.references]
    buf = io.StringIO(newline="")
    writer = csv.writer(buf)
    writer.writerow(header)
    for row in report.rows:
        line = [csv_value(row.hparams.get(c)) for c in report.columns]
        line += [len(row.runs), " ".join(str(s) for s in row.seeds)]
        for key in STAT_KEYS:
            st = row.stats[key]
            line += [csv_value(st.mean), csv_value(st.std)]
        line += [csv_value(delta(row, ref)) for _, ref in report.references]
        writer.writerow(line)
    atomic_write_text(path, buf.getvalue())  # never through a link planted at ``path``


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
            + ", ".join(f"{k}={fmt(v)}" for k, v in report.shared.items()),
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
            )
            + (
                " *Δ vs X*: the row's mean test acc (val-best ckpt) minus row X's, in points."
                if report.references
                else ""
            ),
            "",
        ]
        header = [SHORT.get(c, c) for c in report.columns] + ["n_seeds"] + [t for _, t in METRICS]
        header += [f"Δ vs {label}" for label, _ in report.references]
        header.append("wall time per run (min)")
        lines.append("| " + " | ".join(header) + " |")
        numeric = 2 + len(METRICS) + len(report.references)
        lines.append("|" + "|".join(["---"] * len(report.columns) + ["---:"] * numeric) + "|")
        for row in report.rows:
            cells = [md_cell(fmt(row.hparams.get(c))) for c in report.columns] + [
                str(len(row.runs))
            ]
            cells += [pct(row.stats[key]) for key, _ in METRICS]
            cells += [_points(delta(row, ref)) for _, ref in report.references]
            cells.append(minutes(row.stats[WALL]))
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
                f"| {md_cell(fmt(t.name))} | `{md_cell(t.source)}` | {pct1(t.test_acc)} "
                f"| {pct1(t.val_acc)} | {t.runs} |"
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
    # runs that died before their record only know experiment and seed: leave them out here
    distinguishing = varying_keys([r.hparams for r in runs if "method" in r.hparams])
    failed = report.by_status(FAILED)
    if failed:
        lines += ["## Failed runs", "", "| run | seed | config | error |", "|---|---|---|---|"]
        for r in failed:
            lines.append(
                f"| {md_cell(_rel(r, report.root))} | {fmt(r.seed)} | {md_cell(_describe(r, distinguishing))} "
                f"| {md_cell(one_line(r.error or 'no error recorded'))} |"
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
                status += f": {one_line(r.error)}"
            lines.append(
                f"| {md_cell(_rel(r, report.root))} | {md_cell(status)} | {fmt(r.seed)} "
                f"| {md_cell(_describe(r, distinguishing))} | {md_cell(' '.join(r.overrides))} |"
            )
        lines.append("")
    return "\n".join(lines)


def _points(value: float | None) -> str:
    """A delta (a fraction) in signed percentage points, 2 decimals; blank when missing."""
    return "" if value is None else f"{100 * value:+.2f}"


def _best_row(rows: Sequence[Row]) -> Row | None:
    scored = [r for r in rows if r.stats["val/acc_best"].mean is not None]
    return max(scored, key=lambda r: r.stats["val/acc_best"].mean) if scored else None


def _describe(run: Run, keys: Sequence[str]) -> str:
    return " ".join(f"{SHORT.get(k, k)}={fmt(run.hparams[k])}" for k in keys if k in run.hparams)


def _rel(run: Run, root: Path) -> str:
    rel = os.path.relpath(run.path, root)
    return "." if rel == "." else rel
