"""Correlation congruence (Peng, Jin, Liu, Li, Wu, Liu, Zhou & Zhang, ICCV 2019, "Correlation
Congruence for Knowledge Distillation"), as the authors' code shared with RepDistiller
computes it (the baseline every later paper reports; ``beta = 0.02`` is tuned for it).

Both penultimate features are mapped by trainable linear embeddings to e_s, e_t in R^128
(RepDistiller's ``LinearEmbed``, one per network; the teacher itself stays frozen). With
delta_i = |e_s,i - e_t,i| (element-wise) for the samples i = 1..N of the batch, in batch order,

    L_CC = (1 / (N - 1)) * sum_{i=1}^{N-1} sum_d delta_i[d] * delta_{i+1}[d]

i.e. the congruence of the sample-to-sample correlation of the two embeddings, approximated
on consecutive pairs. (The paper's eqs. 5-9 write the correlation as a Taylor-expanded
Gaussian kernel matrix over the batch; RepDistiller's benchmark, and its weight, use the
form above.) A batch of one sample gives 0.
"""

from __future__ import annotations

import torch
from torch import nn

from kdlight.errors import ConfigError
from kdlight.methods.base import EMBEDDING, Context
from kdlight.methods.features import FeatureKD, flat


class CC(FeatureKD):
    """Correlation congruence; see the module docstring.

    Args:
        embed_dim: width of the two linear embeddings (RepDistiller's ``feat_dim``, 128).
        beta, gamma, alpha, temperature, student_layers, teacher_layers: see
            :class:`kdlight.methods.features.FeatureKD` (``auto``: the penultimate features).

    Returns ``{"loss", "loss_cc", "loss_ce"[, "loss_kd"]}``; the terms are unweighted.
    """

    layer_kind = "penultimate"
    term = "loss_cc"
    teacher_form = EMBEDDING  # the store keeps the (N, D) embedding

    def __init__(self, embed_dim: int = 128, beta: float = 0.02, **kwargs) -> None:
        super().__init__(beta, **kwargs)
        self.embed_dim = int(embed_dim)
        if self.embed_dim < 1 or self.embed_dim != embed_dim:
            raise ConfigError(
                f"distill.embed_dim={embed_dim} is invalid; it must be an integer >= 1."
            )
        self.embed_s = nn.ModuleList()
        self.embed_t = nn.ModuleList()

    def build_heads(self, student, teacher) -> None:
        self.embed_s = nn.ModuleList(nn.Linear(flat(f).shape[1], self.embed_dim) for f in student)
        self.embed_t = nn.ModuleList(nn.Linear(flat(f).shape[1], self.embed_dim) for f in teacher)

    def feature_loss(self, student, teacher, ctx: Context) -> torch.Tensor:
        total = student[0].new_zeros(())
        for fs, ft, es, et in zip(student, teacher, self.embed_s, self.embed_t, strict=True):
            delta = (es(flat(fs)) - et(flat(ft))).abs()
            if len(delta) > 1:
                total = total + (delta[:-1] * delta[1:]).sum(dim=1).mean()
        return total
