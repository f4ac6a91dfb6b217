"""Neuron selectivity transfer (Huang & Wang, 2017, "Like What You Like: Knowledge Distill via
Neuron Selectivity Transfer").

Each channel c of an (N, C, H, W) map is a distribution over the H*W positions,
f_c = vec(A_c) / ||vec(A_c)||_2. NST matches the student's and the teacher's sets of channels
by the squared maximum mean discrepancy with the polynomial kernel k(x, y) = (x^T y)^2
(paper eq. 6, d = 2, c = 0):

    L_NST = mean_{i,i'} k(f_t^i, f_t^i') + mean_{j,j'} k(f_s^j, f_s^j') - 2 mean_{i,j} k(f_s^j, f_t^i)

per sample, averaged over the batch, summed over the paired layers (the stage outputs; the
larger map is first average-pooled to the smaller one's H x W). Channel counts may differ.
``beta = 50`` is RepDistiller's / mdistiller's weight (the paper's lambda/2 folded in).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kdlight.methods.base import Context
from kdlight.methods.features import FeatureKD, match_spatial


def poly_kernel_mean(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """mean over the batch and all channel pairs of (a_i^T b_j)^2; a: (N, Ca, P), b: (N, Cb, P)."""
    return torch.bmm(a, b.transpose(1, 2)).pow(2).mean()


class NST(FeatureKD):
    """Neuron selectivity transfer; see the module docstring.

    Args: see :class:`kdlight.methods.features.FeatureKD` (``auto``: every stage output).

    Returns ``{"loss", "loss_nst", "loss_ce"[, "loss_kd"]}``; the terms are unweighted.
    """

    layer_kind = "stages"
    term = "loss_nst"
    needs_maps = True

    def __init__(self, beta: float = 50.0, **kwargs) -> None:
        super().__init__(beta, **kwargs)

    def feature_loss(self, student, teacher, ctx: Context) -> torch.Tensor:
        total = student[0].new_zeros(())
        for fs, ft in zip(student, teacher, strict=True):
            fs, ft = match_spatial(fs, ft)
            s = F.normalize(fs.flatten(2), dim=2)
            t = F.normalize(ft.flatten(2), dim=2)
            mmd = poly_kernel_mean(t, t) + poly_kernel_mean(s, s) - 2.0 * poly_kernel_mean(s, t)
            total = total + mmd
        return total
