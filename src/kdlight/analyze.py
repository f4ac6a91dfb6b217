"""Test-set analysis of a trained run: ``python -m kdlight.analyze CKPT [--out DIR] [--data-dir DIR]``.

CKPT is a kdlight Lightning checkpoint (``<run>/checkpoints/*.ckpt``) or a run folder (its
validation-best checkpoint is used). The data module, the network and, for a distillation run,
the teacher are rebuilt from ``<run>/.hydra/config.yaml`` (the teacher's weights from
``teacher_ckpt`` or the ``teacher/source`` recorded in ``metrics.json``). Written into
``<run>/analysis/`` (or ``--out``):

- ``confusion_matrix.png`` (row-normalised) and ``confusion_matrix.csv`` (counts, true x predicted);
- ``per_class_accuracy.csv`` (and the teacher's, when there is one);
- ``reliability.png``: accuracy against confidence in 15 equal-width bins, with the ECE;
- ``temperature.csv`` and ``temperature_distributions.png``: the teacher's (else the model's)
  distributions softened at T in {1, 2, 5, 10, 20}: mean entropy and mean probability mass
  outside the top class ("dark knowledge"), and a few examples drawn across T;
- ``analysis.json`` (every number) and ``analysis.md`` (the summary).

The computations are pure functions of tensors (:func:`confusion_matrix`, :func:`calibration_bins`,
:func:`expected_calibration_error`, :func:`entropy`, :func:`non_top_mass`, :func:`temperature_study`);
:class:`TestAnalysisCallback` uses the same ones to log the confusion matrix and ECE to TensorBoard
at the end of every ``trainer.test``.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch import nn

from kdlight import runs
from kdlight.errors import CheckpointError, KdlightError, user_errors_exit

TEMPERATURES: tuple[float, ...] = (1.0, 2.0, 5.0, 10.0, 20.0)
N_BINS = 15


# ---- pure computations ----------------------------------------------------------------------


def softened(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """q_i = exp(z_i / T) / sum_j exp(z_j / T), row-wise, in float64."""
    if not float(temperature) > 0:
        raise ValueError(f"temperature={temperature} is invalid; T must be > 0.")
    return torch.softmax(torch.as_tensor(logits).double() / float(temperature), dim=1)


def confusion_matrix(labels: torch.Tensor, preds: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Counts C[i, j] of samples of true class i predicted as j (int64, num_classes x num_classes)."""
    labels = torch.as_tensor(labels).long().flatten()
    preds = torch.as_tensor(preds).long().flatten()
    if labels.shape != preds.shape:
        raise ValueError(
            f"labels ({labels.numel()}) and predictions ({preds.numel()}) differ in length."
        )
    if labels.numel() and (
        int(labels.min()) < 0 or int(max(labels.max(), preds.max())) >= num_classes
    ):
        raise ValueError(f"labels and predictions must lie in [0, {num_classes}).")
    flat = torch.bincount(labels * num_classes + preds, minlength=num_classes * num_classes)
    return flat.reshape(num_classes, num_classes)


def normalize_rows(cm: torch.Tensor) -> torch.Tensor:
    """Each row divided by its sum (the fraction of a true class predicted as each class); NaN rows when empty."""
    cm = torch.as_tensor(cm).double()
    rows = cm.sum(dim=1, keepdim=True)
    return torch.where(rows > 0, cm / rows.clamp_min(1), torch.full_like(cm, math.nan))


def per_class_accuracy(cm: torch.Tensor) -> torch.Tensor:
    """Recall of each class, C[i, i] / sum_j C[i, j]; NaN for a class without samples."""
    cm = torch.as_tensor(cm).double()
    n = cm.sum(dim=1)
    return torch.where(n > 0, cm.diagonal() / n.clamp_min(1), torch.full_like(n, math.nan))


def most_confused(cm: torch.Tensor, k: int = 5) -> list[tuple[int, int, int, float]]:
    """The ``k`` largest off-diagonal cells as ``(true, predicted, count, count / n_true)``, count > 0.

    Ties keep row-major order (true class, then predicted class).
    """
    cm = torch.as_tensor(cm).long()
    n = cm.sum(dim=1)
    cells = [
        (int(cm[i, j]), i, j)
        for i in range(cm.shape[0])
        for j in range(cm.shape[1])
        if i != j and cm[i, j] > 0
    ]
    cells.sort(key=lambda c: -c[0])
    return [(i, j, c, c / int(n[i])) for c, i, j in cells[:k]]


def calibration_bins(
    confidences: torch.Tensor, correct: torch.Tensor, n_bins: int = N_BINS
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per confidence bin (``n_bins`` equal-width, bin b = (b/n, (b+1)/n], 0 in the first):
    ``(count, sum of confidences, number correct)`` as float64 tensors; they add across batches."""
    conf = torch.as_tensor(confidences).double().flatten().cpu()
    hit = torch.as_tensor(correct).double().flatten().cpu()
    inner = torch.linspace(0, 1, n_bins + 1, dtype=torch.float64)[1:-1]
    idx = torch.bucketize(conf, inner, right=False)
    counts = torch.bincount(idx, minlength=n_bins).double()
    return (
        counts,
        torch.bincount(idx, weights=conf, minlength=n_bins),
        torch.bincount(idx, weights=hit, minlength=n_bins),
    )


def ece_from_bins(counts: torch.Tensor, conf_sum: torch.Tensor, correct_sum: torch.Tensor) -> float:
    """ECE = sum_b |B_b| / n * |acc(B_b) - conf(B_b)| (Guo et al., 2017), from :func:`calibration_bins`."""
    n = float(counts.sum())
    if n == 0:
        return math.nan
    return float(
        (conf_sum - correct_sum).abs().sum() / n
    )  # |B| * |acc - conf| = |sum correct - sum conf|


def expected_calibration_error(
    probs: torch.Tensor, labels: torch.Tensor, n_bins: int = N_BINS
) -> float:
    """ECE of predicted distributions ``probs`` (N x C) against ``labels``, top-1 confidence, equal-width bins."""
    probs = torch.as_tensor(probs)
    conf, pred = probs.max(dim=1)
    return ece_from_bins(*calibration_bins(conf, pred == torch.as_tensor(labels), n_bins))


def entropy(probs: torch.Tensor) -> torch.Tensor:
    """H(q) = -sum_i q_i log q_i per row, in nats (0 log 0 = 0)."""
    p = torch.as_tensor(probs).double()
    return -(torch.special.xlogy(p, p)).sum(dim=1)


def non_top_mass(probs: torch.Tensor) -> torch.Tensor:
    """1 - max_i q_i per row: the probability mass outside the top class (the "dark knowledge")."""
    return 1.0 - torch.as_tensor(probs).double().max(dim=1).values


def temperature_study(
    logits: torch.Tensor, temperatures: Sequence[float] = TEMPERATURES
) -> list[dict[str, float]]:
    """For each T: mean entropy (nats and divided by log C), mean mass outside the top class, mean top probability."""
    logits = torch.as_tensor(logits)
    log_c = math.log(logits.shape[1])
    rows = []
    for t in temperatures:
        q = softened(logits, t)
        h = entropy(q).mean().item()
        rows.append(
            {
                "temperature": float(t),
                "mean_entropy": h,
                "mean_entropy_normalized": h / log_c if log_c > 0 else math.nan,
                "mean_non_top_mass": non_top_mass(q).mean().item(),
                "mean_top_prob": q.max(dim=1).values.mean().item(),
            }
        )
    return rows


def agreement(preds_a: torch.Tensor, preds_b: torch.Tensor) -> float:
    """Fraction of samples on which two models predict the same class."""
    a, b = torch.as_tensor(preds_a).flatten(), torch.as_tensor(preds_b).flatten()
    return float((a == b).double().mean()) if a.numel() else math.nan


def example_indices(labels: torch.Tensor, n: int, num_classes: int) -> list[int]:
    """``n`` test samples of evenly spaced classes: the first sample of class round(k C / n)."""
    labels = torch.as_tensor(labels)
    picked = []
    for k in range(min(n, num_classes)):
        hits = (labels == round(k * num_classes / max(1, n))).nonzero().flatten()
        if hits.numel():
            picked.append(int(hits[0]))
    return picked


# ---- rebuilding a run -------------------------------------------------------------------------


@dataclass
class LoadedRun:
    """A run rebuilt from its folder: config, test data, the trained network and (if any) its teacher."""

    run_dir: Path
    checkpoint: Path
    cfg: Any
    datamodule: Any
    net: nn.Module
    teacher: nn.Module | None
    teacher_source: str | None
    checkpoint_meta: dict[str, Any]

    @property
    def classes(self) -> list[str]:
        arrays = getattr(self.datamodule, "arrays", None)
        names = list(getattr(arrays, "classes", None) or [])
        return (
            names
            if len(names) == self.datamodule.num_classes
            else [str(i) for i in range(self.datamodule.num_classes)]
        )


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """``path`` if it is a file; for a run folder its validation-best checkpoint, else ``last.ckpt``
    (resolved inside the run folder by :mod:`kdlight.runs`)."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(
            f"checkpoint {path} does not exist; give a .ckpt file or a run folder."
        )
    return runs.find_run(path)[1]


def load_run(
    checkpoint: str | os.PathLike,
    data_dir: str | os.PathLike | None = None,
    overrides: Sequence[str] = (),
    with_teacher: bool = True,
) -> LoadedRun:
    """Rebuild a run from ``checkpoint`` (``<run>/checkpoints/x.ckpt``, or the run folder).

    ``data_dir`` replaces the run's ``data.data_dir``; ``overrides`` are ``key=value`` dot-list
    settings applied to the run's config (e.g. ``data.eval_batch_size=256``). Relative paths in
    the config resolve against the directory the run was started from (``.hydra/hydra.yaml``).
    The folder is opened by :mod:`kdlight.runs`: only allowed networks and data modules are
    built from its config, and checkpoints are read weights-only from inside it.
    """
    from omegaconf import OmegaConf, open_dict

    from kdlight.checkpoints import load_weights

    if not Path(checkpoint).exists():
        raise CheckpointError(
            f"checkpoint {checkpoint} does not exist; give a .ckpt file or a run folder."
        )
    run, ckpt = runs.open_run(checkpoint)
    cfg = run.cfg
    if overrides:
        try:
            cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(list(overrides)))
        except Exception as exc:  # noqa: BLE001 - a malformed --set: one sentence
            raise KdlightError(
                f"--set {' '.join(overrides)} cannot be applied to the run's config ({exc})."
            ) from None
        run.cfg = cfg
    cwd = run.cwd or Path(".")
    with open_dict(cfg):
        root = data_dir if data_dir is not None else cfg.data.get("data_dir", "data")
        cfg.data.data_dir = str(_absolute(root, cwd))
    net = run.build("student")  # networks first: a refused config stops before any data work
    meta = load_weights(net, ckpt)
    net.eval()
    teacher, source = None, None
    if with_teacher and cfg.get("distill") is not None:
        sources = run.teacher_sources()
        if sources:
            source = str(sources[0][1])
            if not Path(source).is_file():
                raise CheckpointError(
                    f"the run's teacher checkpoint {source} does not exist; analyse without it (--no-teacher)."
                )
            teacher = run.build("teacher")
            load_weights(teacher, source)
            teacher.eval()
    datamodule = run.build_data()
    datamodule.prepare_data()
    datamodule.setup("test")
    return LoadedRun(run.dir, ckpt, cfg, datamodule, net, teacher, source, meta)


@torch.inference_mode()
def predict(
    nets: Sequence[nn.Module], datamodule, split: str = "test", device: str | torch.device = "cpu"
):
    """Logits of each net on ``split`` (one pass over the data) and the labels: ``([N x C, ...], N)``."""
    device = torch.device(device)
    loader = {"test": datamodule.test_dataloader, "val": datamodule.val_dataloader}[split]()
    for net in nets:
        net.eval().to(device)
    outs: list[list[torch.Tensor]] = [[] for _ in nets]
    labels = []
    for batch in loader:
        x = datamodule.transform(batch["x"].to(device), batch["idx"].to(device), None)
        for k, net in enumerate(nets):
            outs[k].append(net(x).float().cpu())
        labels.append(batch["y"])
    return [torch.cat(o) for o in outs], torch.cat(labels)


# ---- the analysis --------------------------------------------------------------------------


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
    out.mkdir(parents=True, exist_ok=True)
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
    from kdlight import plots

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
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
    (out / "analysis.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    (out / "analysis.md").write_text(render_markdown(summary, classes, title))
    summary["out"] = str(out)
    return summary


def _pct(v: float | None) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.2f}"


def render_markdown(summary: dict[str, Any], classes: Sequence[str], title: str = "") -> str:
    """The text of ``analysis.md`` from :func:`write_analysis`'s summary."""
    lines = [f"# Test analysis{': `' + title + '`' if title else ''}", ""]
    if summary.get("run_dir"):
        lines += [
            f"Run `{summary['run_dir']}`, network `{summary.get('network')}`, checkpoint epoch "
            f"{summary.get('epoch', '?')}; {summary['n_test']} test samples.",
            "",
        ]
    lines += [
        "| metric | value |",
        "|---|---:|",
        f"| test accuracy (%) | {_pct(summary['test/acc'])} |",
        f"| ECE, {summary['n_bins']} bins (%) | {_pct(summary['test/ece'])} |",
    ]
    if "teacher/test_acc" in summary:
        lines += [
            f"| teacher test accuracy (%) | {_pct(summary['teacher/test_acc'])} |",
            f"| teacher ECE (%) | {_pct(summary['teacher/test_ece'])} |",
            f"| teacher-student agreement (%) | {_pct(summary['test/agreement'])} |",
        ]
    lines += ["", "![confusion matrix](confusion_matrix.png)", "", "## Per-class accuracy", ""]
    per_t = summary.get("teacher_per_class_accuracy")
    lines += [
        "| class | accuracy (%) |" + (" teacher (%) |" if per_t else ""),
        "|---|---:|" + ("---:|" if per_t else ""),
    ]
    for name, acc in summary["per_class_accuracy"].items():
        lines.append(f"| {name} | {_pct(acc)} |" + (f" {_pct(per_t[name])} |" if per_t else ""))
    lines += [
        "",
        "## Most confused pairs",
        "",
        "| true | predicted as | count | % of the true class |",
        "|---|---|---:|---:|",
    ]
    for p in summary["most_confused"]:
        lines.append(
            f"| {p['true']} | {p['predicted']} | {p['count']} | {_pct(p['fraction_of_true'])} |"
        )
    if not summary["most_confused"]:
        lines.append("| (no errors) | | | |")
    lines += [
        "",
        "## Calibration",
        "",
        f"Expected calibration error over {summary['n_bins']} equal-width confidence bins: "
        f"{_pct(summary['test/ece'])}%.",
        "",
        "![reliability diagram](reliability.png)",
        "",
        f"## Temperature: the {summary['temperature_source']}'s softened distributions",
        "",
        "q_i = softmax(z / T); entropy in nats (and over log C, 1 = uniform); the mass outside the "
        "top class is what a student learns beyond the label.",
        "",
        "| T | mean entropy | entropy / log C | mean mass outside the top class |",
        "|---:|---:|---:|---:|",
    ]
    for r in summary["temperature_study"]:
        lines.append(
            f"| {r['temperature']:g} | {r['mean_entropy']:.3f} | {r['mean_entropy_normalized']:.3f} "
            f"| {r['mean_non_top_mass']:.3f} |"
        )
    lines += ["", "![softened distributions](temperature_distributions.png)", ""]
    return "\n".join(lines)


# ---- the Lightning callback ------------------------------------------------------------------


class TestAnalysisCallback(L.Callback):
    """Logs the test ECE and a confusion-matrix figure to TensorBoard at the end of ``trainer.test``.

    Accumulates a confusion matrix and calibration bins batch by batch (a few hundred numbers,
    summed across processes under DDP), so it keeps no logits. Uses the logits ``test_step``
    returns when it returns them, else runs the model once more on the batch. Logs ``test/ece``
    with ``pl_module.log`` (so it is also in ``trainer.test``'s results). ``figures``: ``"best"``
    draws the figure (tag ``test/confusion_matrix_best``) only for the test of a checkpoint
    (``kdlight.train`` tests the last weights, then the val-best checkpoint) or when no best
    checkpoint exists (tag ``..._last``), so a run renders one figure; ``"all"`` draws every
    test; ``"none"`` logs the ECE only.
    """

    __test__ = False  # not a pytest test class

    def __init__(self, n_bins: int = N_BINS, figures: str = "best") -> None:
        if figures not in ("best", "all", "none"):
            raise ValueError(f"figures={figures!r} is invalid; use best, all or none.")
        self.n_bins = int(n_bins)
        self.figures = figures
        self._cm: torch.Tensor | None = None
        self._bins: list[torch.Tensor] | None = None

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._cm, self._bins = None, None

    def on_test_batch_end(
        self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0
    ) -> None:
        if not isinstance(batch, dict) or "y" not in batch:
            return
        logits = outputs if isinstance(outputs, torch.Tensor) else None
        if logits is None and isinstance(outputs, dict):
            logits = (
                outputs.get("logits") if isinstance(outputs.get("logits"), torch.Tensor) else None
            )
        if logits is None:
            with torch.no_grad():
                logits = pl_module(batch["x"])
        probs = torch.softmax(logits.detach().float(), dim=1)
        conf, pred = probs.max(dim=1)
        labels = batch["y"].detach()
        cm = confusion_matrix(labels.cpu(), pred.cpu(), probs.shape[1])
        bins = calibration_bins(conf.cpu(), (pred == labels).cpu(), self.n_bins)
        self._cm = cm if self._cm is None else self._cm + cm
        self._bins = (
            list(bins)
            if self._bins is None
            else [a + b for a, b in zip(self._bins, bins, strict=True)]
        )

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._cm is None:
            return
        cm, bins = self._cm, self._bins
        if trainer.world_size > 1:
            cm = trainer.strategy.reduce(cm.to(pl_module.device), reduce_op="sum").cpu()
            bins = [
                trainer.strategy.reduce(b.to(pl_module.device), reduce_op="sum").cpu() for b in bins
            ]
        ece = ece_from_bins(*bins)
        pl_module.log("test/ece", ece)
        kind = self._checkpoint_kind(trainer)
        if kind is None or not trainer.is_global_zero:
            return
        from lightning.pytorch.loggers import TensorBoardLogger

        tb = [lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)]
        if not tb:
            return
        from kdlight import plots

        names = list(getattr(getattr(trainer.datamodule, "arrays", None), "classes", None) or [])
        if len(names) != cm.shape[0]:
            names = [str(i) for i in range(cm.shape[0])]
        acc = float(cm.diagonal().sum() / cm.sum().clamp_min(1))
        title = f"Test, {kind} checkpoint: acc {100 * acc:.2f}%, ECE {100 * ece:.2f}%"
        fig = plots.confusion_matrix_figure(cm.numpy(), names, title=title)
        for lg in tb:
            lg.experiment.add_figure(
                f"test/confusion_matrix_{kind}", fig, global_step=trainer.global_step, close=False
            )

    def _checkpoint_kind(self, trainer: L.Trainer) -> str | None:
        """``best``/``last``/the checkpoint's name for the figure's tag, or None to draw nothing."""
        if self.figures == "none":
            return None
        ckpt = getattr(trainer, "ckpt_path", None)
        if ckpt:
            stem = Path(ckpt).stem
            return "best" if stem.startswith("best") else stem
        best = (
            getattr(trainer.checkpoint_callback, "best_model_path", "")
            if trainer.checkpoint_callback
            else ""
        )
        if self.figures == "best" and best:
            return None  # the val-best checkpoint is tested next; draw that one
        return "last"


# ---- helpers and CLI ----------------------------------------------------------------------


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


def _absolute(path: str | os.PathLike, cwd: Path) -> Path:
    p = Path(os.path.expanduser(str(path)))
    return p if p.is_absolute() else (cwd / p).resolve()


def _write_rows(path: Path, header: Sequence[Any], rows: Sequence[Sequence[Any]]) -> None:
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)


def _num(v: torch.Tensor | float) -> Any:
    v = float(v)
    return "" if math.isnan(v) else v


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m kdlight.analyze",
        description="Confusion matrix, per-class accuracy, calibration, teacher agreement and the "
        "temperature study of a run's checkpoint on its test set.",
    )
    parser.add_argument(
        "checkpoint",
        type=Path,
        help="<run>/checkpoints/*.ckpt, or a run folder (its val-best checkpoint)",
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="output folder (default: <run>/analysis)"
    )
    parser.add_argument(
        "--data-dir",
        "--data",
        dest="data_dir",
        default=None,
        help="replace the run's data.data_dir",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a value of the run's config, e.g. --set data.eval_batch_size=256 (repeatable)",
    )
    parser.add_argument("--device", default="cpu", help="torch device for inference (default: cpu)")
    parser.add_argument(
        "--top-k", type=int, default=5, help="most-confused class pairs to list (default: 5)"
    )
    parser.add_argument(
        "--bins", type=int, default=N_BINS, help=f"calibration bins (default: {N_BINS})"
    )
    parser.add_argument(
        "--temperatures",
        type=float,
        nargs="+",
        default=list(TEMPERATURES),
        help="temperatures of the softened distributions (default: 1 2 5 10 20)",
    )
    parser.add_argument(
        "--examples", type=int, default=3, help="example distributions to draw (default: 3)"
    )
    parser.add_argument(
        "--no-teacher", action="store_true", help="skip the teacher even if the run had one"
    )
    return parser.parse_args(argv)


@user_errors_exit
def main(argv: Sequence[str] | None = None) -> int:
    """``python -m kdlight.analyze CKPT [...]``; returns 0, exits 2 with one sentence on a user error."""
    args = parse_args(argv)
    if (
        args.top_k < 0
        or args.bins < 1
        or args.examples < 0
        or any(t <= 0 for t in args.temperatures)
    ):
        raise KdlightError(
            "--top-k and --examples must be >= 0, --bins >= 1 and every temperature > 0."
        )
    summary = analyze(
        args.checkpoint,
        args.out,
        data_dir=args.data_dir,
        overrides=args.overrides,
        device=args.device,
        top_k=args.top_k,
        n_bins=args.bins,
        temperatures=args.temperatures,
        n_examples=args.examples,
        with_teacher=not args.no_teacher,
    )
    line = f"test acc {100 * summary['test/acc']:.2f}%, ECE {100 * summary['test/ece']:.2f}%"
    if "test/agreement" in summary:
        line += f", teacher agreement {100 * summary['test/agreement']:.2f}%"
    print(f"{line} -> {Path(summary['out']) / 'analysis.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
