"""What ``kdlight train`` prints: kdlight's own lines unless ``verbose=true``, a run's result, a sweep's ranking.

Quiet (the default): Lightning's INFO lines (seed, GPU/TPU, tips, "fit stopped", checkpoint
restores), its model summary and every Python warning stay off the console; ``train.log`` in the
run folder still gets all of them, in full. ``verbose=true`` (or ``KDLIGHT_VERBOSE=1``) prints
everything as Lightning and Hydra do. The progress bar stays either way.
"""

from __future__ import annotations

import logging
import math
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, open_dict

log = logging.getLogger("kdlight")

#: Loggers whose INFO lines are Lightning's chatter, not results.
CHATTY = ("lightning", "lightning_fabric", "pytorch_lightning", "torchmetrics", "py.warnings")


class _KdlightOnly(logging.Filter):
    """Let through warnings and errors, and kdlight's own INFO lines."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == "py.warnings":  # every Python warning: train.log only
            return False
        return record.levelno >= logging.WARNING or not record.name.startswith(CHATTY)


def quiet_console(cfg: DictConfig) -> None:
    """Unless ``cfg.verbose``: keep the console to kdlight's lines, and no model-summary table.

    Hydra's console handler prints the bare message and drops Lightning's INFO lines; Lightning's
    own console handler (its ``INFO: ...`` copy of each line) is raised to WARNING; Python
    warnings go through logging (``py.warnings``) to ``train.log`` only. The file handler is
    left alone.
    """
    if cfg.get("verbose", False):
        return
    import lightning.pytorch  # noqa: F401 - it adds its console handlers on import: first, then quiet them

    console = [
        h
        for h in logging.getLogger().handlers
        if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)
    ]
    for h in console:
        h.setFormatter(logging.Formatter("%(message)s"))
        h.addFilter(_KdlightOnly())
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "torchmetrics"):
        for h in logging.getLogger(name).handlers:
            if not isinstance(h, logging.FileHandler):
                h.setLevel(logging.WARNING)
    logging.captureWarnings(True)
    trainer = cfg.get("trainer")
    if trainer is not None and "enable_model_summary" not in trainer:
        with open_dict(cfg):  # the teacher's Trainer takes it too (run.teacher.MACHINE_KEYS)
            trainer.enable_model_summary = False


def pct(value: Any) -> str:
    """``0.91234`` -> ``91.23%``; ``-`` when absent or not a number."""
    if not isinstance(value, int | float) or math.isnan(value):
        return "-"
    return f"{100 * value:.2f}%"


def run_summary(record: dict[str, Any], out: str | Path) -> list[str]:
    """A finished run in two or three lines: test accuracy (val-best, last), teacher, folder."""
    best, last = record.get("test/acc_best"), record.get("test/acc_last")
    line = f"test acc {pct(best)} (val-best weights"
    if "best_epoch" in record:
        line += f", epoch {record['best_epoch']}"
    line += f"; last {pct(last)})"
    if record.get("val/acc_best") is not None:
        line += f", val acc {pct(record['val/acc_best'])}"
    lines = [line]
    if record.get("teacher/test_acc") is not None:
        lines.append(f"teacher test acc {pct(record['teacher/test_acc'])}")
    wall = record.get("wall_s")
    lines.append(f"run: {out}" + (f"  ({wall:.0f} s)" if isinstance(wall, int | float) else ""))
    return lines


def failed_job_line(error: BaseException, job: Any) -> str:
    """One line for a sweep job stopped by a user error (diverged, invalid value): ``error: ... (job N)``."""
    return f"error: {error} (job {job})"


def sweep_ranking(sweep_dir: str | Path, top: int = 5) -> tuple[list[str], int]:
    """The sweep's configurations, best validation accuracy first, and where its report is.

    Builds the report with :func:`kdlight.reporting.report.build_report` (``report.md``,
    ``results.csv`` and figures in the sweep folder); returns the lines to print and the number
    of failed runs.
    """
    from kdlight.reporting.report import build_report

    report = build_report(sweep_dir)
    failed = report.by_status("failed")
    n = len(report.runs)
    finished = sum(len(r.runs) for r in report.rows)
    head = f"sweep: {n} runs, {finished} finished" + (f", {len(failed)} failed" if failed else "")
    lines = [head]

    def val(row) -> float:
        st = row.stats.get("val/acc_best")
        return st.mean if st is not None and st.mean is not None else -math.inf

    ranked = sorted(report.rows, key=val, reverse=True)
    if ranked:
        cols = report.columns
        lines.append("  " + "  ".join(["val acc", "test acc", *cols]))
        for row in ranked[:top]:
            test = row.stats.get("test/acc_best")
            cells = [
                f"{pct(val(row) if val(row) > -math.inf else None):>7}",
                f"{pct(test.mean if test else None):>8}",
                *(str(row.hparams.get(c, "")) for c in cols),
            ]
            lines.append("  " + "  ".join(cells))
        if len(ranked) > top:
            lines.append(f"  ... {len(ranked) - top} more")
    lines.append(f"report: {Path(report.out) / 'report.md'}")
    return lines, len(failed)


class SweepSummary(Callback):
    """Hydra callback (``conf/hydra/default.yaml``): at a sweep's end, print its ranking and report.

    A sweep with a failed job then exits 1, as Hydra itself would (after the ranking of the
    others, not instead of it).
    """

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        if not sweep_dir.is_dir():
            return
        try:
            lines, failed = sweep_ranking(sweep_dir)
        except Exception as exc:  # noqa: BLE001 - a summary must not hide the sweep's results
            print(f"sweep: no ranking ({exc}); the runs are in {sweep_dir}", file=sys.stderr)
            return
        print("\n".join(lines), flush=True)
        if failed:
            sys.exit(1)


__all__ = [
    "SweepSummary",
    "failed_job_line",
    "pct",
    "quiet_console",
    "run_summary",
    "sweep_ranking",
]
