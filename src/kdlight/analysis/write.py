"""Test-set analysis of a trained run, written as files (``kdlight-analyze`` calls :func:`analyze`).

CKPT is a kdlight Lightning checkpoint (``<run>/checkpoints/*.ckpt``) or a run folder (its
validation-best checkpoint is used). The data module, the network and, for a distillation run,
the teacher are rebuilt from ``<run>/.hydra/config.yaml`` (the teacher's weights from
``teacher_ckpt`` or the ``teacher/source`` the run recorded) by :mod:`kdlight.analysis.load`.
Written into ``<run>/analysis/`` (or ``out``):

- ``confusion_matrix.png`` (row-normalised) and ``confusion_matrix.csv`` (counts, true x predicted);
- ``per_class_accuracy.csv`` (and the teacher's, when there is one);
- ``reliability.png``: accuracy against confidence in 15 equal-width bins, with the ECE;
- ``temperature.csv`` and ``temperature_distributions.png``: the teacher's (else the model's)
  distributions softened at T in {1, 2, 5, 10, 20}: mean entropy and mean probability mass
  outside the top class ("dark knowledge"), and a few examples drawn across T;
- ``analysis.json`` (every number) and ``analysis.md`` (the summary).

The numbers come from the pure functions of :mod:`kdlight.analysis.metrics`.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kdlight.analysis.load import LoadedRun, load_run, predict
from kdlight.analysis.markdown import render_markdown
from kdlight.analysis.metrics import (
    N_BINS,
    TEMPERATURES,
    agreement,
    calibration_bins,
    confusion_matrix,
    ece_from_bins,
    example_indices,
    expected_calibration_error,
    most_confused,
    per_class_accuracy,
    softened,
    temperature_study,
)
from kdlight.io import atomic_write_text, own_folder


def analyze(
    checkpoint: str | os.PathLike,
    out: str | os.PathLike | None = None,
    *,
    data_dir: str | os.PathLike | None = None,
    overrides: Sequence[str] = (),
    device: str = "cpu",
    top_k: int = 5,
    n_bins: int = N_BINS,
    temperatures: Sequence[float] = TEMPERATURES,
    n_examples: int = 3,
    with_teacher: bool = True,
) -> dict[str, Any]:
    """Analyse a run's checkpoint on its test set; write the files listed in the module docstring.

    Returns the numbers of ``analysis.json`` (accuracies and ECE as fractions) plus ``out``.
    """
    run = load_run(checkpoint, data_dir=data_dir, overrides=overrides, with_teacher=with_teacher)
    out = Path(out) if out is not None else run.run_dir / "analysis"
    own_folder(out, "analysis folder")  # a link planted in the run folder is refused, not followed
    nets = [run.net] + ([run.teacher] if run.teacher is not None else [])
    logits, labels = predict(nets, run.datamodule, device=device)
    return write_analysis(
        out,
        logits[0],
        labels,
        run.classes,
        teacher_logits=logits[1] if run.teacher is not None else None,
        top_k=top_k,
        n_bins=n_bins,
        temperatures=temperatures,
        n_examples=n_examples,
        title=f"{run.checkpoint}",
        run_info=_run_info(run),
    )


def write_analysis(
    out: str | os.PathLike,
    logits: torch.Tensor,
    labels: torch.Tensor,
    classes: Sequence[str],
    *,
    teacher_logits: torch.Tensor | None = None,
    top_k: int = 5,
    n_bins: int = N_BINS,
    temperatures: Sequence[float] = TEMPERATURES,
    n_examples: int = 3,
    title: str = "",
    run_info: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Every output file of :func:`analyze` from given logits and labels (usable without a run)."""
    from kdlight.reporting import plots

    out = own_folder(out, "analysis folder")
    c = len(classes)
    probs = softened(logits)
    conf, pred = probs.max(dim=1)
    cm = confusion_matrix(labels, pred, c)
    acc_c = per_class_accuracy(cm)
    bins = calibration_bins(conf, pred == labels, n_bins)
    ece = ece_from_bins(*bins)
    summary: dict[str, Any] = {
        **(run_info or {}),
        "n_test": int(labels.numel()),
        "test/acc": float((pred == labels).double().mean()),
        "test/ece": ece,
        "n_bins": n_bins,
        "per_class_accuracy": dict(zip(classes, [float(a) for a in acc_c], strict=True)),
        "most_confused": [
            {"true": classes[i], "predicted": classes[j], "count": n, "fraction_of_true": f}
            for i, j, n, f in most_confused(cm, top_k)
        ],
    }
    t_acc_c = None
    if teacher_logits is not None:
        t_probs = softened(teacher_logits)
        t_pred = t_probs.argmax(dim=1)
        t_acc_c = per_class_accuracy(confusion_matrix(labels, t_pred, c))
        summary.update(
            {
                "teacher/test_acc": float((t_pred == labels).double().mean()),
                "teacher/test_ece": expected_calibration_error(t_probs, labels, n_bins),
                "test/agreement": agreement(pred, t_pred),
                "teacher_per_class_accuracy": dict(
                    zip(classes, [float(a) for a in t_acc_c], strict=True)
                ),
            }
        )
    source_logits = teacher_logits if teacher_logits is not None else logits
    summary["temperature_source"] = "teacher" if teacher_logits is not None else "model"
    summary["temperature_study"] = temperature_study(source_logits, temperatures)

    # files
    _write_rows(
        out / "confusion_matrix.csv",
        ["true \\ predicted", *classes],
        [[classes[i], *cm[i].tolist()] for i in range(c)],
    )
    header = ["class", "index", "n", "accuracy"] + (
        ["teacher_accuracy"] if t_acc_c is not None else []
    )
    n_per = cm.sum(dim=1)
    _write_rows(
        out / "per_class_accuracy.csv",
        header,
        [
            [classes[i], i, int(n_per[i]), _num(acc_c[i])]
            + ([_num(t_acc_c[i])] if t_acc_c is not None else [])
            for i in range(c)
        ],
    )
    _write_rows(
        out / "temperature.csv",
        list(summary["temperature_study"][0]),
        [list(r.values()) for r in summary["temperature_study"]],
    )
    plots.save(
        plots.confusion_matrix_figure(
            cm.numpy(),
            classes,
            title=f"Confusion matrix (test acc {100 * summary['test/acc']:.2f}%)",
        ),
        out / "confusion_matrix.png",
    )
    counts, conf_sum, correct_sum = bins
    safe = counts.clamp_min(1)
    plots.save(
        plots.reliability_figure(
            np.linspace(0, 1, n_bins + 1),
            (correct_sum / safe).numpy(),
            (conf_sum / safe).numpy(),
            counts.numpy(),
            ece=ece,
        ),
        out / "reliability.png",
    )
    picks = example_indices(labels, n_examples, c)
    if picks:
        dists = {float(t): softened(source_logits[picks], t).numpy() for t in temperatures}
        names = [f"test #{i}: {classes[int(labels[i])]}" for i in picks]
        plots.save(
            plots.distributions_figure(
                dists,
                classes,
                titles=names,
                suptitle=f"{summary['temperature_source']}'s softened distributions",
            ),
            out / "temperature_distributions.png",
        )
    atomic_write_text(out / "analysis.json", json.dumps(summary, indent=2, default=str) + "\n")
    atomic_write_text(out / "analysis.md", render_markdown(summary, classes, title))
    summary["out"] = str(out)
    return summary


def _run_info(run: LoadedRun) -> dict[str, Any]:
    info = {
        "run_dir": str(run.run_dir),
        "checkpoint": str(run.checkpoint),
        "network": run.cfg.student.get("_target_"),
    }
    if "epoch" in run.checkpoint_meta:
        info["epoch"] = run.checkpoint_meta["epoch"]
    if run.teacher_source:
        info["teacher_source"] = run.teacher_source
    return info


def _write_rows(path: Path, header: Sequence[Any], rows: Sequence[Sequence[Any]]) -> None:
    buf = io.StringIO(newline="")
    writer = csv.writer(buf)
    writer.writerow(header)
    writer.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def _num(v: torch.Tensor | float) -> Any:
    v = float(v)
    return "" if math.isnan(v) else v
