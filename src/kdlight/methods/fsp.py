"""Flow of solution procedure (Yim, Joo, Bae & Kim, CVPR 2017, "A Gift from Knowledge
Distillation: Fast Optimization, Network Minimization and Transfer Learning").

For two maps F1 (N, C1, H, W) and F2 (N, C2, H, W) of one network (the larger one first
average-pooled to the smaller's H x W), the FSP matrix is (paper eq. 1)

    G(F1, F2)[a, b] = mean over the H*W positions of F2[b] * F1[a]       shape (C2, C1) per sample

and, for the consecutive pairs of the tapped layers l = 0 .. L-1,

    L_FSP = sum_l mean over the batch and the matrix of (G_s(l, l+1) - G_t(l, l+1))^2

as RepDistiller's ``FSP`` (the paper's lambda_i = 1 and sum over elements replaced by the mean).
The student's and teacher's matrices must have the same shape: the paired layers need equal
channel counts (RepDistiller raises the same error; its table has N/A for such pairs).

Two stages, as in the paper and RepDistiller (``--distill fsp``): epochs ``0 .. init_epochs-1``
train the student up to its last tapped layer with L_FSP alone (the forwards stop there), the
remaining epochs train the whole student with ``gamma * CE + alpha * KD + beta * L_FSP``.
RepDistiller's second stage has no FSP term (``loss_kd = 0``), hence ``beta = 0``; its init
stage runs 30 epochs before its 240 (the default 2 is a CPU-scale choice as FitNets'
``hint_epochs``). RepDistiller's init stage has an SGD of its own; ``fresh_optimizer=True``
(default) likewise clears the run's optimizer state when the second stage starts.

Layers: ``auto`` is RepDistiller's ``feat[:-1]``: the input of the first declared stage (the
stem's output of a ResNet, ``layer1:in``) and every declared stage output. The teacher's part
is an FSP matrix of two layers, not a function of one layer's map, so the store keeps the raw
maps (when they fit ``teacher_store.max_gb``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kdlight.errors import ConfigError
from kdlight.methods.ab import ce_kd, check_stages, restarts_after_init
from kdlight.methods.base import Context, Plan
from kdlight.methods.features import FeatureKD, stage_layers


def fsp_matrices(feats: list[torch.Tensor]) -> list[torch.Tensor]:
    """G(F_l, F_{l+1}) for consecutive maps, each (N, C_{l+1}, C_l)."""
    out = []
    for bot, top in zip(feats[:-1], feats[1:], strict=True):
        hb, ht = bot.shape[-2:], top.shape[-2:]
        if hb[0] > ht[0]:
            bot = F.adaptive_avg_pool2d(bot, ht)
        elif hb[0] < ht[0]:
            top = F.adaptive_avg_pool2d(top, hb)
        out.append(torch.bmm(top.flatten(2), bot.flatten(2).transpose(1, 2)) / bot[0, 0].numel())
    return out


class FSP(FeatureKD):
    """FSP matrices; see the module docstring.

    Args:
        init_epochs: epochs of the FSP-only initialisation stage, >= 0 (0: none).
        beta: weight of L_FSP after the initialisation stage, >= 0 (RepDistiller: none, 0).
        fresh_optimizer: clear the optimizer's state when the second stage starts (True: as
            RepDistiller's init stage, which has an optimizer of its own).
        gamma, alpha, temperature: see :class:`kdlight.methods.features.FeatureKD`.
        student_layers / teacher_layers: ``auto`` or lists of >= 2 names, paired in order.

    Returns ``{"loss", "loss_fsp"}`` in the initialisation stage, then
    ``{"loss", "loss_ce"[, "loss_kd"][, "loss_fsp"]}``; the terms are unweighted.
    """

    term = "loss_fsp"
    needs_maps = True

    def __init__(
        self, init_epochs: int = 2, beta: float = 0.0, fresh_optimizer: bool = True, **kwargs
    ) -> None:
        super().__init__(beta, **kwargs)
        self.init_epochs = check_stages(self, init_epochs)
        self.fresh_optimizer = bool(fresh_optimizer)

    def resolve_layers(self, student: nn.Module, teacher: nn.Module) -> None:
        for side, net, role in (("student_spec", student, "student"), ("teacher_spec", teacher, "teacher")):  # fmt: skip
            if getattr(self, side) == "auto":
                stages = stage_layers(net, role)
                setattr(self, side, (stages[0] + ":in", *stages))
        super().resolve_layers(student, teacher)
        if len(self.student_layers) < 2:
            raise ConfigError(
                f"distill=fsp needs >= 2 layers per network (FSP matrices join consecutive "
                f"layers) but got {list(self.student_layers)}; name more in distill.student_layers "
                f"/ distill.teacher_layers."
            )

    def build_heads(self, student, teacher) -> None:
        for l in range(len(student) - 1):  # noqa: E741
            s = (student[l + 1].shape[1], student[l].shape[1])
            t = (teacher[l + 1].shape[1], teacher[l].shape[1])
            if s != t:
                raise ConfigError(
                    f"distill=fsp needs equal channel counts in paired layers but the FSP matrix "
                    f"of student layers {self.student_layers[l]!r} -> {self.student_layers[l + 1]!r}"
                    f" is {s[0]}x{s[1]} and the teacher's ({self.teacher_layers[l]!r} -> "
                    f"{self.teacher_layers[l + 1]!r}) {t[0]}x{t[1]}; pick networks or layers "
                    f"(distill.student_layers / distill.teacher_layers) with matching channels."
                )

    def in_init_stage(self, epoch: int) -> bool:
        return epoch < self.init_epochs

    def restarts_optimizer(self, epoch: int) -> bool:
        return restarts_after_init(self, epoch)

    def plan(self, epoch: int) -> Plan:
        if self.in_init_stage(epoch):
            return Plan(
                self.student_layers, self.teacher_layers, stop_early=True, teacher_logits=False
            )
        if self.beta > 0:
            return Plan(self.student_layers, self.teacher_layers, teacher_logits=self.alpha > 0)
        return Plan(teacher_logits=self.alpha > 0)

    def feature_loss(self, student, teacher, ctx: Context) -> torch.Tensor:
        total = student[0].new_zeros(())
        for gs, gt in zip(fsp_matrices(student), fsp_matrices(teacher), strict=True):
            total = total + (gs - gt).pow(2).mean()
        return total

    def forward(self, ctx: Context) -> dict[str, torch.Tensor]:
        if self.in_init_stage(ctx.epoch):
            s = [ctx.student_feats[n].float() for n in self.student_layers]
            t = [ctx.teacher_feats[n].float().detach() for n in self.teacher_layers]
            loss = self.feature_loss(s, t, ctx)
            return {"loss": loss, "loss_fsp": loss}
        return super().forward(ctx) if self.beta > 0 else ce_kd(self, ctx)

    def hparams(self) -> dict:
        return {
            **super().hparams(),
            "init_epochs": self.init_epochs,
            "fresh_optimizer": self.fresh_optimizer,
        }
