"""Pure computations of the test analysis, on tensors: confusion matrix, calibration, temperature.

Shared by :func:`kdlight.analysis.write.analyze` and :class:`kdlight.analysis.callback.TestAnalysisCallback`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

TEMPERATURES: tuple[float, ...] = (1.0, 2.0, 5.0, 10.0, 20.0)
N_BINS = 15


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
