"""Variational information distillation (Ahn, Hu, Damianou, Lawrence & Dai, CVPR 2019,
"Variational Information Distillation for Knowledge Transfer").

VID maximises a variational lower bound on the mutual information between a teacher layer t
and the paired student layer s by fitting a Gaussian q(t | s) with a learned mean mu(s) and a
learned per-channel (heteroscedastic over channels) variance sigma_c^2 (paper eqs. 2-5):

    mu(s) = conv1x1 o ReLU o conv1x1 o ReLU o conv1x1 (s)        (Cs -> Ct -> Ct -> Ct, no bias)
    sigma_c^2 = softplus(alpha_c) + eps,   alpha_c initialised so that sigma_c^2 = init_var
    L_VID = sum over paired layers of mean over n, c, h, w of
            1/2 * ( (t_{n,c,h,w} - mu_{n,c,h,w}(s))^2 / sigma_c^2 + log sigma_c^2 )

(the paper's -log q summed over units, averaged here, as in RepDistiller / mdistiller; the
constant log(2 pi) / 2 dropped). The larger map is first average-pooled to the smaller one's
H x W; flat features (N, D) are treated as (N, D, 1, 1) maps. init_var 5, eps 1e-5 and
``beta = 1`` are the authors' / RepDistiller's settings; the regressors and variances learn
with the student.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from kdlight.methods.base import Context, check_range
from kdlight.methods.features import FeatureKD, match_spatial


def _as_map(x: torch.Tensor) -> torch.Tensor:
    return x if x.dim() == 4 else x.reshape(x.shape[0], -1, 1, 1)


class VIDHead(nn.Module):
    """mu(s) (three 1x1 convs) and the per-channel log-scale alpha of one layer pair."""

    def __init__(self, student_channels: int, teacher_channels: int, init_var: float, eps: float):
        super().__init__()
        s, t = int(student_channels), int(teacher_channels)
        self.mean = nn.Sequential(
            nn.Conv2d(s, t, 1, bias=False),
            nn.ReLU(),
            nn.Conv2d(t, t, 1, bias=False),
            nn.ReLU(),
            nn.Conv2d(t, t, 1, bias=False),
        )
        # softplus^-1(init_var - eps): sigma^2 starts at init_var exactly
        self.log_scale = nn.Parameter(torch.full((t,), math.log(math.expm1(init_var - eps))))
        self.eps = float(eps)

    def variance(self) -> torch.Tensor:
        return F.softplus(self.log_scale) + self.eps

    def forward(self, s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        s, t = match_spatial(_as_map(s), _as_map(t))
        var = self.variance().view(1, -1, 1, 1)
        return (0.5 * ((self.mean(s) - t).pow(2) / var + var.log())).mean()


class VID(FeatureKD):
    """Variational information distillation; see the module docstring.

    Args:
        init_var: initial variance sigma^2 of every channel, > eps (5).
        eps: variance floor, > 0 (1e-5).
        beta, gamma, alpha, temperature, student_layers, teacher_layers: see
            :class:`kdlight.methods.features.FeatureKD` (``auto``: every stage output).

    Returns ``{"loss", "loss_vid", "loss_ce"[, "loss_kd"]}``; the terms are unweighted.
    """

    layer_kind = "stages"
    term = "loss_vid"

    def __init__(
        self, init_var: float = 5.0, eps: float = 1e-5, beta: float = 1.0, **kwargs
    ) -> None:
        super().__init__(beta, **kwargs)
        self.eps = check_range("eps", eps, 0.0, low_open=True)
        self.init_var = check_range("init_var", init_var, self.eps, low_open=True)
        self.heads = nn.ModuleList()

    def build_heads(self, student, teacher) -> None:
        self.heads = nn.ModuleList(
            VIDHead(_as_map(s).shape[1], _as_map(t).shape[1], self.init_var, self.eps)
            for s, t in zip(student, teacher, strict=True)
        )

    def feature_loss(self, student, teacher, ctx: Context) -> torch.Tensor:
        total = student[0].new_zeros(())
        for fs, ft, head in zip(student, teacher, self.heads, strict=True):
            total = total + head(fs, ft)
        return total
