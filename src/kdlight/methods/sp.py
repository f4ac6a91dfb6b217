"""Similarity-preserving KD (Tung & Mori, ICCV 2019, "Similarity-Preserving Knowledge
Distillation").

For a batch of N samples and a paired layer with activations reshaped to A in R^{N x D}:

    G = A A^T,   G~[i, :] = G[i, :] / ||G[i, :]||_2           (paper eqs. 1-2, row-wise L2)
    L_SP = (1 / N^2) * || G~_t - G~_s ||_F^2                    (eq. 3)

summed over the paired layers. ``auto`` taps the last stage output of each network, as
RepDistiller/mdistiller do (``feat[-2]``); ``beta = 3000`` is their weight. Student and teacher
may differ in width: only the N x N similarity matrices are compared.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kdlight.methods.base import Context
from kdlight.methods.features import FeatureKD, flat


def similarity_matrix(x: torch.Tensor) -> torch.Tensor:
    """G~: the row-normalised Gram matrix of the batch, N x N."""
    a = flat(x)
    return F.normalize(a @ a.t(), dim=1)


class SP(FeatureKD):
    """Similarity-preserving KD; see the module docstring.

    Args: see :class:`kdlight.methods.features.FeatureKD` (``auto``: the last stage output).

    Returns ``{"loss", "loss_sp", "loss_ce"[, "loss_kd"]}``; the terms are unweighted.
    """

    layer_kind = "last_stage"
    term = "loss_sp"

    def __init__(self, beta: float = 3000.0, **kwargs) -> None:
        super().__init__(beta, **kwargs)

    def feature_loss(self, student, teacher, ctx: Context) -> torch.Tensor:
        total = student[0].new_zeros(())
        for fs, ft in zip(student, teacher, strict=True):
            n = fs.shape[0]
            total = total + (similarity_matrix(ft) - similarity_matrix(fs)).pow(2).sum() / (n * n)
        return total
