"""Knowledge review (Chen, Liu, Zhao & Jia, CVPR 2021, "Distilling Knowledge via Knowledge
Review"): attention-based fusion (ABF) of the student's stages, deep to shallow, matched to
the teacher's stages by the hierarchical context loss (HCL).

Levels l = 1..L are the stage outputs plus the penultimate feature as a 1 x 1 map, shallow to
deep, on both networks (``auto``). Starting at the deepest level, each ABF_l maps the
student's level-l feature X_l with a 1x1 conv + BN to ``mid`` channels, fuses it with the
residual R_{l+1} from the level below (nearest-upsampled to X_l's size) by two sigmoid
attention maps a, b = sigmoid(conv1x1([X_l, R_{l+1}])):

    R_l = a * X_l + b * up(R_{l+1})          (R_L = X_L: the deepest level is not fused)
    R_l <- resize(R_l)                       (nearest, to the teacher's size at level l)
    Y_l = BN(conv3x3(R_l))                   (to the teacher's channels)

and the review loss compares Y_l with the teacher's level-l feature T_l at several scales:

    HCL(Y, T) = sum_l [ mse(Y_l, T_l) + sum_{k in (4, 2, 1), k < H_l} 2^-j(k) mse(P_k Y_l, P_k T_l) ]
                / (1 + sum of those 2^-j(k))

where P_k is adaptive average pooling to k x k and j(k) counts the pooled scales used so far
(1/2, 1/4, 1/8). Total (mdistiller's ReviewKD, CIFAR-100 config):

    L = gamma * CE + alpha * KD + beta * min((epoch + 1) / warmup, 1) * HCL

with beta 5, warmup 20, mid = min(512, channels of the student's deepest level). mdistiller
counts epochs from 1 (kdlight's ``ctx.epoch`` from 0, hence epoch + 1). Its teacher features
are taken before the stages' last ReLU; kdlight's stage taps are the stages each network
declares (post-activation where a stage ends in one; see :mod:`kdlight.models`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kdlight.errors import ConfigError
from kdlight.methods.base import Context, check_range
from kdlight.methods.features import FeatureKD


def _as_map(x: torch.Tensor) -> torch.Tensor:
    return x if x.dim() == 4 else x.reshape(x.shape[0], -1, 1, 1)


def hcl_loss(student: list[torch.Tensor], teacher: list[torch.Tensor]) -> torch.Tensor:
    """The hierarchical context loss of paired (N, C, H, W) maps; see the module docstring."""
    total = student[0].new_zeros(())
    for fs, ft in zip(student, teacher, strict=True):
        loss, weight, weights = F.mse_loss(fs, ft), 1.0, 1.0
        for k in (4, 2, 1):
            if k >= fs.shape[-2]:
                continue
            weight /= 2.0
            pooled = F.mse_loss(F.adaptive_avg_pool2d(fs, k), F.adaptive_avg_pool2d(ft, k))
            loss = loss + weight * pooled
            weights += weight
        total = total + loss / weights
    return total


class ABF(nn.Module):
    """One attention-based fusion step: student level -> (output Y_l, residual R_l)."""

    def __init__(self, in_channels: int, mid: int, out_channels: int, fuse: bool) -> None:
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(in_channels, mid, 1, bias=False), nn.BatchNorm2d(mid))
        self.conv2 = nn.Sequential(
            nn.Conv2d(mid, out_channels, 3, padding=1, bias=False), nn.BatchNorm2d(out_channels)
        )
        self.att_conv = nn.Sequential(nn.Conv2d(2 * mid, 2, 1), nn.Sigmoid()) if fuse else None
        nn.init.kaiming_uniform_(self.conv1[0].weight, a=1)
        nn.init.kaiming_uniform_(self.conv2[0].weight, a=1)

    def forward(
        self, x: torch.Tensor, residual: torch.Tensor | None, out_size: tuple[int, int]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.conv1(x)
        if self.att_conv is not None:
            up = F.interpolate(residual, x.shape[-2:], mode="nearest")
            att = self.att_conv(torch.cat([x, up], dim=1))
            x = x * att[:, :1] + up * att[:, 1:]
        if tuple(x.shape[-2:]) != out_size:
            x = F.interpolate(x, out_size, mode="nearest")
        # the residual passed on is the resized map, as mdistiller's ABF returns it
        return self.conv2(x), x


class ReviewKD(FeatureKD):
    """Knowledge review (ABF + HCL); see the module docstring.

    Args:
        warmup: epochs over which the review weight ramps up linearly (0: none; 20).
        max_mid_channels: cap of the fusion width ``mid`` (512).
        beta, gamma, alpha, temperature, student_layers, teacher_layers: see
            :class:`kdlight.methods.features.FeatureKD` (``auto``: every stage output and the
            penultimate feature; explicit lists are paired in order, shallow to deep).

    Returns ``{"loss", "loss_review", "loss_ce"[, "loss_kd"]}``; the terms are unweighted
    (``loss_review`` is the HCL before the warm-up factor).
    """

    layer_kind = "stages+penultimate"
    term = "loss_review"

    def __init__(
        self, warmup: int = 20, max_mid_channels: int = 512, beta: float = 5.0, **kwargs
    ) -> None:
        super().__init__(beta, **kwargs)
        self.warmup = int(check_range("warmup", warmup, 0.0))
        if self.warmup != float(warmup):
            raise ConfigError(
                f"distill.warmup={warmup} is invalid; it must be a whole number >= 0."
            )
        self.max_mid_channels = int(check_range("max_mid_channels", max_mid_channels, 1.0))
        self.abfs = nn.ModuleList()
        self.out_sizes: list[tuple[int, int]] = []

    def warmup_factor(self, epoch: int) -> float:
        return 1.0 if self.warmup == 0 else min((epoch + 1) / self.warmup, 1.0)

    def build_heads(self, student, teacher) -> None:
        s = [_as_map(f) for f in student]
        t = [_as_map(f) for f in teacher]
        mid = min(self.max_mid_channels, s[-1].shape[1])
        last = len(s) - 1
        self.abfs = nn.ModuleList(
            ABF(fs.shape[1], mid, ft.shape[1], fuse=i < last)
            for i, (fs, ft) in enumerate(zip(s, t, strict=True))
        )
        self.out_sizes = [tuple(int(d) for d in ft.shape[-2:]) for ft in t]

    def review(self, student: list[torch.Tensor]) -> list[torch.Tensor]:
        """Y_1..Y_L of the student's levels (shallow to deep), fused from the deepest up."""
        outs: list[torch.Tensor] = []
        residual = None
        for i in reversed(range(len(student))):
            y, residual = self.abfs[i](_as_map(student[i]), residual, self.out_sizes[i])
            outs.insert(0, y)
        return outs

    def feature_weight(self, ctx: Context) -> float:
        return self.beta * self.warmup_factor(ctx.epoch)

    def feature_loss(self, student, teacher, ctx: Context) -> torch.Tensor:
        return hcl_loss(self.review(student), [_as_map(t) for t in teacher])
