"""Relational knowledge distillation (Park, Kim, Lu & Cho, CVPR 2019, "Relational Knowledge
Distillation"), distance- and angle-wise, on the penultimate features of a batch.

With t_i the teacher's and s_i the student's feature of sample i (flattened):

    psi_D(t_i, t_j) = ||t_i - t_j||_2 / mu,  mu = mean of ||t_k - t_l|| over pairs k != l   (eq. 5)
    psi_A(t_i, t_j, t_k) = < e_ji, e_jk >,    e_ji = (t_i - t_j) / ||t_i - t_j||           (eq. 7)
    L_RKD = w_d * mean_{i,j} l_delta(psi_D(s_i, s_j), psi_D(t_i, t_j))
          + w_a * mean_{i,j,k} l_delta(psi_A(s_i, s_j, s_k), psi_A(t_i, t_j, t_k))

l_delta is the Huber loss (smooth L1, delta = 1); the means run over all N^2 ordered pairs and
N^3 triplets (a zero difference vector gives angle 0), distances are sqrt(max(d^2, 1e-12)),
as in RepDistiller / mdistiller. The paper's weights w_d = 25, w_a = 50; RepDistiller's
``beta`` on top is 1.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kdlight.methods.base import EMBEDDING, Context, check_range
from kdlight.methods.features import FeatureKD, flat


def normalized_distances(x: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """psi_D of all pairs of rows of ``x`` (N x N, zero diagonal), divided by their mean."""
    sq = x.pow(2).sum(dim=1)
    d = (sq[:, None] + sq[None, :] - 2.0 * x @ x.t()).clamp(min=eps).sqrt()
    d = d * (1.0 - torch.eye(len(x), device=x.device, dtype=x.dtype))
    return d / d[d > 0].mean()


def angles(x: torch.Tensor) -> torch.Tensor:
    """psi_A of all triplets: [j, i, k] = cos of the angle at x_j between x_i and x_k (N^3)."""
    e = F.normalize(x[None, :, :] - x[:, None, :], dim=2)  # e[j, i] = unit(x_i - x_j)
    return torch.bmm(e, e.transpose(1, 2))


class RKD(FeatureKD):
    """Relational KD (distance + angle); see the module docstring.

    Args:
        distance_weight: w_d, >= 0 (paper: 25).
        angle_weight: w_a, >= 0 (paper: 50).
        beta, gamma, alpha, temperature, student_layers, teacher_layers: see
            :class:`kdlight.methods.features.FeatureKD` (``auto``: the penultimate features).

    Returns ``{"loss", "loss_rkd", "loss_rkd_distance", "loss_rkd_angle", "loss_ce"[,
    "loss_kd"]}``; ``loss_rkd`` = w_d * distance + w_a * angle, the others unweighted.
    """

    layer_kind = "penultimate"
    term = "loss_rkd"
    teacher_form = EMBEDDING  # the store keeps the (N, D) embedding

    def __init__(
        self,
        distance_weight: float = 25.0,
        angle_weight: float = 50.0,
        beta: float = 1.0,
        **kwargs,
    ) -> None:
        super().__init__(beta, **kwargs)
        self.distance_weight = check_range("distance_weight", distance_weight, 0.0)
        self.angle_weight = check_range("angle_weight", angle_weight, 0.0)
        self._parts: dict[str, torch.Tensor] = {}

    def feature_loss(self, student, teacher, ctx: Context) -> torch.Tensor:
        dist = ang = student[0].new_zeros(())
        for fs, ft in zip(student, teacher, strict=True):
            s, t = flat(fs), flat(ft)
            dist = dist + F.smooth_l1_loss(normalized_distances(s), normalized_distances(t))
            ang = ang + F.smooth_l1_loss(angles(s), angles(t))
        self._parts = {"loss_rkd_distance": dist.detach(), "loss_rkd_angle": ang.detach()}
        return self.distance_weight * dist + self.angle_weight * ang

    def forward(self, ctx: Context) -> dict[str, torch.Tensor]:
        terms = super().forward(ctx)
        return {**terms, **self._parts}
