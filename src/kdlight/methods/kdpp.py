"""KD++ (Wang, Cheng, Duan, Wang, Feng & Kong, NeurIPS 2023, "Improving Knowledge Distillation via
Regularizing Feature Norm and Direction").

On top of Hinton KD, the student's penultimate embedding s_i is pulled towards the direction of
the teacher's class mean of its label and encouraged to be large (the ND loss):

    e_c = c_c / ||c_c||,   c_c = mean of the teacher's embeddings of class c
    ND = mean_i 1 - <s_i, e_{y_i}> / max(||s_i||, ||t_i||)           (t_i: the teacher's embedding)
    L = ce_weight * CE + kd_weight * min(1, epoch / warmup) * T^2 KL(q_t^T || q_s^T) + nd_weight * ND

as in the authors' code (WangYZ1608/Knowledge-Distillation-via-ND, ``CIFAR/utils.py``
``DirectNormLoss`` and ``KDLoss``, ``CIFAR/train_cifar_kd.py``, whose epochs count from 0 like
kdlight's). When the two embeddings differ in size, a learned head BatchNorm1d -> Dropout(0.5)
-> Linear maps the student's to the teacher's (their ``EmbTrans``; its output enters ND only).

Known deviation: the authors compute the class means once, before training, from the teacher
on the (unaugmented) training set. kdlight's method never sees the dataset, so it keeps
running per-class sums of the teacher embeddings of every training batch seen (buffers, saved
in checkpoints) and reads the means after adding the current batch: a partial mean during the
first epoch, then a mean over all augmented views seen. ``observe`` adds embeddings explicitly.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from kdlight.errors import ConfigError
from kdlight.methods.base import EMBEDDING, Context, Form, Method, check_range
from kdlight.methods.features import _layer_spec, penultimate_layer
from kdlight.methods.kd import soft_kl
from kdlight.methods.taps import find_module, split_tap


def nd_loss(s: torch.Tensor, t: torch.Tensor, direction: torch.Tensor) -> torch.Tensor:
    """mean_i 1 - <s_i, e_i> / max(||s_i||, ||t_i||), ``direction`` rows e_i of unit norm."""
    max_norm = torch.maximum(s.norm(dim=1), t.norm(dim=1))
    return (1.0 - (s * direction).sum(dim=1) / max_norm).mean()


class KDPP(Method):
    """KD++: KD plus the feature norm-and-direction loss; see the module docstring.

    Args:
        nd_weight: weight of the ND loss, >= 0 (the code's ``--nd_loss_factor``).
        kd_weight: weight of the KD term, >= 0 (``--kd_loss_factor``).
        temperature: KD temperature T > 0 (``--t``).
        warmup: epochs over which the KD weight ramps up as epoch / warmup (0: none; ``--warm_up``).
        ce_weight: weight of cross-entropy with the labels, >= 0 (``--cls_loss_factor``).
        student_layers / teacher_layers: ``auto`` (the penultimate features) or one name each.

    Returns ``{"loss", "loss_ce", "loss_kd", "loss_nd"}``, each unweighted.
    """

    needs_labels = True  # the direction is the class mean of the label

    def __init__(
        self,
        nd_weight: float = 2.0,
        kd_weight: float = 1.0,
        temperature: float = 4.0,
        warmup: float = 20.0,
        ce_weight: float = 1.0,
        student_layers: Any = "auto",
        teacher_layers: Any = "auto",
    ) -> None:
        super().__init__()
        self.nd_weight = check_range("nd_weight", nd_weight, 0.0)
        self.kd_weight = check_range("kd_weight", kd_weight, 0.0)
        self.temperature = check_range("temperature", temperature, 0.0, low_open=True)
        self.warmup = check_range("warmup", warmup, 0.0)
        self.ce_weight = check_range("ce_weight", ce_weight, 0.0)
        self.specs = {}
        for key, value in (("student_layers", student_layers), ("teacher_layers", teacher_layers)):
            spec = _layer_spec(key, value)
            if spec != "auto" and len(spec) != 1:
                raise ConfigError(
                    f"distill.{key}={list(spec)} is invalid; give auto or one layer (the "
                    "penultimate embedding)."
                )
            self.specs[key] = spec
        self.embed: nn.Module | None = None
        self.register_buffer("center_sum", torch.zeros(0, 0))
        self.register_buffer("center_count", torch.zeros(0))

    # ---- layers --------------------------------------------------------------------------
    def resolve_layers(self, student: nn.Module, teacher: nn.Module) -> None:
        names = []
        for key, net, role in (
            ("student_layers", student, "student"),
            ("teacher_layers", teacher, "teacher"),
        ):
            spec = self.specs[key]
            name = penultimate_layer(net, role) if spec == "auto" else spec[0]
            find_module(net, split_tap(name)[0], f"{role} layer")
            names.append(name)
        self.student_layers, self.teacher_layers = (names[0],), (names[1],)

    def build(self, student_feats, teacher_feats, num_classes: int) -> None:
        d_s = student_feats[self.student_layers[0]].reshape(2, -1).shape[1]
        d_t = teacher_feats[self.teacher_layers[0]].reshape(2, -1).shape[1]
        if d_s != d_t:  # the authors' EmbTrans head
            linear = nn.Linear(d_s, d_t)
            nn.init.zeros_(linear.bias)
            self.embed = nn.Sequential(nn.BatchNorm1d(d_s), nn.Dropout(0.5), linear)
        self.center_sum = torch.zeros(num_classes, d_t)
        self.center_count = torch.zeros(num_classes)

    def teacher_forms(self) -> dict[str, Form]:
        return {self.teacher_layers[0]: EMBEDDING}

    # ---- class means ---------------------------------------------------------------------
    @torch.no_grad()
    def observe(self, teacher_emb: torch.Tensor, labels: torch.Tensor) -> None:
        """Add teacher embeddings (N, D) of classes ``labels`` to the running class sums."""
        emb = teacher_emb.detach().reshape(teacher_emb.shape[0], -1).to(self.center_sum)
        self.center_sum.index_add_(0, labels, emb)
        self.center_count.index_add_(0, labels, torch.ones_like(labels, dtype=emb.dtype))

    def directions(self, labels: torch.Tensor) -> torch.Tensor:
        """e_{y_i}: the unit direction of the running class mean of each label."""
        mean = self.center_sum[labels] / self.center_count[labels, None].clamp(min=1.0)
        return F.normalize(mean, dim=1, eps=1e-12)

    # ---- loss ----------------------------------------------------------------------------
    def kd_factor(self, epoch: int) -> float:
        """min(1, epoch / warmup) for the 0-based ``epoch`` (the authors' count too)."""
        return 1.0 if self.warmup == 0 else min(1.0, epoch / self.warmup)

    def forward(self, ctx: Context) -> dict[str, torch.Tensor]:
        s = ctx.student_feats[self.student_layers[0]].float()
        s = s.reshape(s.shape[0], -1)
        t = ctx.teacher_feats[self.teacher_layers[0]].float().detach()
        t = t.reshape(t.shape[0], -1)
        if self.embed is not None:
            s = self.embed(s)
        self.observe(t, ctx.labels)
        loss_nd = nd_loss(s, t, self.directions(ctx.labels))
        loss_kd = soft_kl(ctx.student_logits, ctx.teacher_logits.detach(), self.temperature)
        loss_ce = F.cross_entropy(ctx.student_logits.float(), ctx.labels)
        loss = (
            self.ce_weight * loss_ce
            + self.kd_weight * self.kd_factor(ctx.epoch) * loss_kd
            + self.nd_weight * loss_nd
        )
        return {"loss": loss, "loss_ce": loss_ce, "loss_kd": loss_kd, "loss_nd": loss_nd}

    def hparams(self) -> dict[str, float]:
        return {"nd_weight": self.nd_weight, "kd_weight": self.kd_weight}

    def extra_repr(self) -> str:
        return (
            f"nd_weight={self.nd_weight}, kd_weight={self.kd_weight}, T={self.temperature}, "
            f"warmup={self.warmup}, ce_weight={self.ce_weight}, "
            f"student_layers={list(self.student_layers)}, teacher_layers={list(self.teacher_layers)}"
        )
