"""Attention transfer (Zagoruyko & Komodakis, ICLR 2017, "Paying More Attention to Attention:
Improving the Performance of Convolutional Neural Networks via Attention Transfer").

For a feature map A of shape (C, H, W), the spatial attention map is

    Q(A) = vec( (1/C) sum_c |A_c|^p ),        q(A) = Q(A) / ||Q(A)||_2        (paper eq. 2, p = 2)

and, for each paired layer j (the stage outputs of student and teacher; the larger map is
first average-pooled to the smaller one's H x W),

    L_AT = sum_j mean over the batch and the H*W positions of (q(A_s^j) - q(A_t^j))^2

as in RepDistiller / mdistiller (the paper's beta/2 * ||q_s - q_t||_2 summed over positions,
with the scale folded into beta). ``beta = 1000`` is their CIFAR-100 weight; channel counts
may differ (the map is averaged over channels).

Teacher store: the form of each teacher layer is q(A_t^j) itself, at the compared H x W
(``attention_p<p>_<H>x<W>``), so the store keeps H*W numbers per sample and layer, not the map.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from kdlight.methods.base import Context, Form, check_range
from kdlight.methods.features import FeatureKD, match_spatial


def attention_map(feature: torch.Tensor, p: float) -> torch.Tensor:
    """q(A) of an (N, C, H, W) map: L2-normalised vec(mean_c |A_c|^p), shape (N, H * W)."""
    q = feature.abs().pow(p).mean(dim=1).flatten(1)
    return F.normalize(q, dim=1)


def pooled_attention_map(feature: torch.Tensor, p: float, size: tuple[int, int]) -> torch.Tensor:
    """q(A) of ``feature`` average-pooled to ``size`` first (if it is larger): the teacher's form."""
    if tuple(feature.shape[-2:]) != tuple(size):
        feature = F.adaptive_avg_pool2d(feature, size)
    return attention_map(feature, p)


class AT(FeatureKD):
    """Attention transfer; see the module docstring.

    Args:
        p: exponent of the attention map, > 0 (the paper's and RepDistiller's 2).
        beta, gamma, alpha, temperature, student_layers, teacher_layers: see
            :class:`kdlight.methods.features.FeatureKD` (``auto``: every stage output).

    Returns ``{"loss", "loss_at", "loss_ce"[, "loss_kd"]}``; the terms are unweighted.
    """

    layer_kind = "stages"
    term = "loss_at"
    needs_maps = True

    def __init__(self, p: float = 2.0, beta: float = 1000.0, **kwargs) -> None:
        super().__init__(beta, **kwargs)
        self.p = check_range("p", p, 0.0, low_open=True)
        self.sizes: list[tuple[int, int]] = []

    def build_heads(self, student, teacher) -> None:
        self.sizes = [
            (min(fs.shape[-2], ft.shape[-2]), min(fs.shape[-1], ft.shape[-1]))
            for fs, ft in zip(student, teacher, strict=True)
        ]

    def teacher_forms(self) -> dict[str, Form]:
        forms: dict[str, Form] = {}
        if len(self.sizes) != len(self.teacher_layers):
            return forms  # not built yet
        for layer, (h, w) in zip(self.teacher_layers, self.sizes, strict=True):
            fn = functools.partial(pooled_attention_map, p=self.p, size=(h, w))
            form = Form(f"attention_p{self.p:g}_{h}x{w}", fn)
            if forms.get(layer, form).name != form.name:
                return {}  # one layer compared at two sizes: served raw, online
            forms[layer] = form
        return forms

    def feature_loss(self, student, teacher, ctx: Context) -> torch.Tensor:
        total = student[0].new_zeros(())
        for j, (fs, ft) in enumerate(zip(student, teacher, strict=True)):
            if ft.dim() == 4:  # the raw teacher map
                fs, ft = match_spatial(fs, ft)
                qt = attention_map(ft, self.p)
            else:  # the teacher's form: q(A_t) at the compared size, which the student's meets
                qt = ft
                if tuple(fs.shape[-2:]) != self.sizes[j]:
                    fs = F.adaptive_avg_pool2d(fs, self.sizes[j])
            total = total + (attention_map(fs, self.p) - qt).pow(2).mean()
        return total
