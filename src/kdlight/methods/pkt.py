"""Probabilistic knowledge transfer (Passalis & Tefas, ECCV 2018, "Learning Deep
Representations with Probabilistic Knowledge Transfer").

On the penultimate features x_i (student) and y_i (teacher) of a batch of N samples, the
cosine-similarity kernel K(a, b) = (1 + cos(a, b)) / 2 gives conditional probabilities

    p_{i|j} = K(y_i, y_j) / sum_k K(y_k, y_j)   (teacher),   q_{i|j} likewise (student)

and L_PKT = KL(P || Q), written as in the authors' code (kept by RepDistiller/mdistiller):

    L_PKT = mean over all N x N pairs (i, j) of p_ij * log((p_ij + eps) / (q_ij + eps))

where each row of the N x N similarity matrix is normalised (the diagonal, K = 1, included),
features are divided by (||x|| + eps), and eps = 1e-7. ``beta = 30000`` is RepDistiller's.
"""

from __future__ import annotations

import torch

from kdlight.methods.base import EMBEDDING, Context
from kdlight.methods.features import FeatureKD, flat

EPS = 1e-7


def similarity_probs(x: torch.Tensor) -> torch.Tensor:
    """Row-normalised (1 + cosine similarity) / 2 of the N rows of ``x`` (N x N)."""
    x = x / (x.norm(dim=1, keepdim=True) + EPS)
    k = (x @ x.t() + 1.0) / 2.0
    return k / k.sum(dim=1, keepdim=True)


class PKT(FeatureKD):
    """Probabilistic knowledge transfer; see the module docstring.

    Args: see :class:`kdlight.methods.features.FeatureKD` (``auto``: the penultimate
    features, the input of each network's last Linear; one pair of layers).

    Returns ``{"loss", "loss_pkt", "loss_ce"[, "loss_kd"]}``; the terms are unweighted.
    """

    layer_kind = "penultimate"
    term = "loss_pkt"
    teacher_form = EMBEDDING  # the store keeps the (N, D) embedding

    def __init__(self, beta: float = 30000.0, **kwargs) -> None:
        super().__init__(beta, **kwargs)

    def feature_loss(self, student, teacher, ctx: Context) -> torch.Tensor:
        total = student[0].new_zeros(())
        for fs, ft in zip(student, teacher, strict=True):
            q, p = similarity_probs(flat(fs)), similarity_probs(flat(ft))
            total = total + (p * torch.log((p + EPS) / (q + EPS))).mean()
        return total
