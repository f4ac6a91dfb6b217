"""Turn a folder of runs (a multirun, or many) into a table and plots (``kdlight-report`` calls :func:`build_report`).

A run is any folder holding a run record (:mod:`kdlight.run.record`) or ``.hydra/config.yaml`` (as written by
:func:`kdlight.run.train.run`). Finished runs are grouped by configuration (their hparams minus
``seed``); each configuration becomes one row with the mean and sample standard deviation over
its seeds of the test accuracy of the validation-best checkpoint (``test/acc_best``), of the
last checkpoint (``test/acc_last``) and of the best validation accuracy (``val/acc_best``).

Written into OUT (default: DIR):

- ``results.csv``: one row per configuration; the hparams that vary across finished runs,
  ``n_seeds``, ``seeds``, then ``<metric>_mean`` / ``<metric>_std`` as fractions in [0, 1]
  (the units of the run records), then ``wall_s_mean`` / ``wall_s_std`` (seconds per run); the
  std is blank when a configuration has one seed;
- delta columns (``delta_vs_<label>`` in the CSV as fractions, ``Δ vs <label>`` in points in
  report.md): each row's mean test accuracy (val-best) minus that of the student alone (the one
  ``method=none`` configuration, when there is one) and of each ``versus`` selector's row
  (``key=value[,key=value]``, e.g. ``method=kd``);
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

import os
from collections.abc import Sequence
from pathlib import Path

from kdlight.errors import KdlightError
from kdlight.io import atomic_write_text
from kdlight.reporting.collect import FINISHED, find_run_dirs, read_run
from kdlight.reporting.figures import write_figures
from kdlight.reporting.render import render_markdown, write_csv
from kdlight.reporting.table import (
    Report,
    group_runs,
    order_keys,
    references,
    same_value,
    sort_rows,
    varying_keys,
)
from kdlight.run.record import METRICS_FILE


def build_report(
    root: str | os.PathLike,
    out: str | os.PathLike | None = None,
    axes: Sequence[str] | None = None,
    versus: Sequence[str] = (),
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
            f"no runs found under {root}: no folder in it holds a {METRICS_FILE} or .hydra/config.yaml."
        )
    out = Path(out) if out is not None else root
    runs = [read_run(d) for d in dirs]
    finished = [r for r in runs if r.status == FINISHED]
    rows = group_runs(finished)
    columns = varying_keys([r.hparams for r in rows]) or ["experiment"]
    rows = sort_rows(rows, columns)
    shared = {k: v for k, v in rows[0].hparams.items() if k not in columns} if rows else {}
    shared = {
        k: shared[k]
        for k in order_keys(shared)
        if all(same_value(r.hparams.get(k), shared[k]) for r in rows)
    }
    refs = references(rows, versus)  # a bad selector fails before anything is written
    out.mkdir(parents=True, exist_ok=True)
    figures = write_figures(rows, out, axes)
    report = Report(root, out, runs, rows, columns, shared, figures, refs)
    write_csv(report, out / "results.csv")
    atomic_write_text(out / "report.md", render_markdown(report))
    return report
