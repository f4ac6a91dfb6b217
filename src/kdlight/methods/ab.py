"""Activation boundaries (Heo, Lee, Yun & Choi, AAAI 2019, "Knowledge Transfer via Distillation
of Activation Boundaries Formed by Hidden Neurons").

AB transfers whether each teacher neuron is active (pre-ReLU response > 0), not its value.
With S_i = r_i(student's pre-ReLU map of stage i) (a connector: identity when the two maps
have the same channels and size, else conv 1x1 + BatchNorm, RepDistiller's ``Connector`` /
``ConvReg(use_relu=False)``), T_i the teacher's pre-ReLU map and margin mu (paper eq. 6, the
alternative L2 of RepDistiller's ``ABLoss``):

    l(S, T) = sum over all elements of  (S + mu)^2 [S > -mu and T <= 0] + (S - mu)^2 [S <= mu and T > 0]
    L_AB    = 3/1000 * sum_i 2^(i - n + 1) * l(S_i, T_i) / N          (i = 0 .. n-1, deepest weighs 1)

Two stages, as in the paper and RepDistiller (``train_student.py --distill abound``): epochs
``0 .. init_epochs - 1`` train the student (all of it up to the tapped stages; the classifier
gets no gradient) and the connectors with L_AB alone; the remaining epochs train the whole
student with ``gamma * CE + alpha * KD + beta * L_AB``. RepDistiller's second stage has no AB
term (``loss_kd = 0``), hence ``beta = 0``; its init stage runs 30 epochs before its 240
(kdlight counts them inside ``trainer.max_epochs``; the default 2 is a CPU-scale choice as
FitNets' ``hint_epochs``). mu = 1 is ``ABLoss``'s default. RepDistiller's init stage has an
SGD of its own; ``fresh_optimizer=True`` (default) likewise clears the run's optimizer state
when the second stage starts: under Adam, the AB stage's gradients (about 9x the cross-entropy's
on the CPU table's pair) would otherwise scale down the next hundreds of steps.

Layers: ``auto`` taps the stages' pre-ReLU maps (RepDistiller's ``preact=True`` ``feat[1:-1]``;
see :func:`kdlight.methods.ofd.pre_relu_layers`), paired from the shallowest. Named layers
are tapped as named. The maps' signs matter: post-ReLU maps make ``T <= 0`` mean "exactly 0".
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn

from kdlight.errors import ConfigError
from kdlight.methods.base import Context, Plan, check_range
from kdlight.methods.features import FeatureKD, auto_layers, warn_if_first_stage_covers_training
from kdlight.methods.kd import soft_kl
from kdlight.methods.ofd import pre_relu_layers

log = logging.getLogger(__name__)


def ce_kd(method: FeatureKD, ctx: Context) -> dict[str, torch.Tensor]:
    """``gamma * CE + alpha * KD`` of ``method``'s weights: a second stage without feature term."""
    terms = {}
    loss = ctx.student_logits.float().new_zeros(())
    if method.gamma > 0:
        terms["loss_ce"] = F.cross_entropy(ctx.student_logits.float(), ctx.labels)
        loss = loss + method.gamma * terms["loss_ce"]
    if method.alpha > 0:
        terms["loss_kd"] = soft_kl(ctx.student_logits, ctx.teacher_logits, method.temperature)
        loss = loss + method.alpha * terms["loss_kd"]
    return {"loss": loss, **terms}


def check_stages(method: FeatureKD, init_epochs) -> int:
    """``init_epochs`` as an int >= 0; ConfigError also when the later stage would have no term."""
    if int(init_epochs) != init_epochs or int(init_epochs) < 0:
        raise ConfigError(
            f"distill.init_epochs={init_epochs} is invalid; it must be an integer >= 0."
        )
    if method.beta == 0 and method.gamma == 0 and method.alpha == 0:
        raise ConfigError(
            "distill.beta=0, distill.gamma=0 and distill.alpha=0 leave the stage after "
            "init_epochs without a loss; set at least one of them > 0."
        )
    return int(init_epochs)


def restarts_after_init(method: FeatureKD, epoch: int) -> bool:
    """``epoch`` is the first after a non-empty init stage and ``method.fresh_optimizer`` is set."""
    return bool(method.fresh_optimizer) and 0 < method.init_epochs == epoch


def ab_distance(source: torch.Tensor, target: torch.Tensor, margin: float) -> torch.Tensor:
    """RepDistiller's ``criterion_alternative_l2``: the alternative L2 summed over every element."""
    return (
        (source + margin).pow(2) * ((source > -margin) & (target <= 0))
        + (source - margin).pow(2) * ((source <= margin) & (target > 0))
    ).sum()


class ABConnector(nn.Module):
    """Brings a student map to the teacher's shape: identity when channels and size agree, else
    (the larger map average-pooled to the smaller's H x W) conv 1x1 + BatchNorm."""

    def __init__(self, student_shape, teacher_shape) -> None:
        super().__init__()
        s, t = tuple(student_shape), tuple(teacher_shape)
        self.size = (min(s[1], t[1]), min(s[2], t[2]))
        self.same = s == t
        self.conv = None if self.same else nn.Conv2d(s[0], t[0], 1)
        self.bn = None if self.same else nn.BatchNorm2d(t[0])

    def resize(self, x: torch.Tensor) -> torch.Tensor:
        return x if tuple(x.shape[-2:]) == self.size else F.adaptive_avg_pool2d(x, self.size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.same:
            return x
        return self.bn(self.conv(self.resize(x)))


class AB(FeatureKD):
    """Activation-boundary distillation; see the module docstring.

    Args:
        margin: mu, > 0 (1).
        init_epochs: epochs of the AB-only initialisation stage, >= 0 (0: none).
        beta: weight of L_AB after the initialisation stage, >= 0 (RepDistiller: none, 0).
        fresh_optimizer: clear the optimizer's state when the second stage starts (True: as
            RepDistiller, whose init stage has an optimizer of its own; False: Adam's moments
            from the AB stage carry over).
        gamma, alpha, temperature: see :class:`kdlight.methods.features.FeatureKD`.
        student_layers / teacher_layers: ``auto`` (the stages' pre-ReLU maps) or lists of names.

    Returns ``{"loss", "loss_ab"}`` in the initialisation stage, then
    ``{"loss", "loss_ce"[, "loss_kd"][, "loss_ab"]}``; the terms are unweighted.
    """

    term = "loss_ab"
    needs_maps = True

    def __init__(
        self,
        margin: float = 1.0,
        init_epochs: int = 2,
        beta: float = 0.0,
        fresh_optimizer: bool = True,
        **kwargs,
    ) -> None:
        super().__init__(beta, **kwargs)
        self.margin = check_range("margin", margin, 0.0, low_open=True)
        self.init_epochs = check_stages(self, init_epochs)
        self.fresh_optimizer = bool(fresh_optimizer)
        self.connectors = nn.ModuleList()
        self.student_shapes: list[tuple[int, ...]] = []
        self.teacher_channels: list[int] = []

    def resolve_layers(self, student: nn.Module, teacher: nn.Module) -> None:
        sides = []
        for spec, net, role in ((self.student_spec, student, "student"), (self.teacher_spec, teacher, "teacher")):  # fmt: skip
            auto = spec == "auto"
            names = auto_layers(net, "stages", role) if auto else spec
            sides.append(pre_relu_layers(net, names, f"{role} layer", move=auto))
        n = min(len(sides[0]), len(sides[1]))  # RepDistiller zips: the shallowest ones
        self.student_layers = tuple(x[0] for x in sides[0][:n])
        self.teacher_layers = tuple(x[0] for x in sides[1][:n])
        self.student_channels = [x[1] for x in sides[0][:n]]
        self.teacher_channels = [x[1] for x in sides[1][:n]]

    def build_heads(self, student, teacher) -> None:
        # channels from the trace (a build example may stop at the first call of a shared ReLU)
        sc = getattr(self, "student_channels", None) or [f.shape[1] for f in student]
        tc = self.teacher_channels or [f.shape[1] for f in teacher]
        self.connectors = nn.ModuleList(
            ABConnector((c, *s.shape[-2:]), (d, *t.shape[-2:]))
            for c, d, s, t in zip(sc, tc, student, teacher, strict=True)
        )

    def in_init_stage(self, epoch: int) -> bool:
        return epoch < self.init_epochs

    def restarts_optimizer(self, epoch: int) -> bool:
        return restarts_after_init(self, epoch)

    def plan(self, epoch: int) -> Plan:
        # no stop_early: a tap at a shared ReLU's input must see that ReLU's last call
        if self.in_init_stage(epoch):
            return Plan(self.student_layers, self.teacher_layers, teacher_logits=False)
        if self.beta > 0:
            return Plan(self.student_layers, self.teacher_layers, teacher_logits=self.alpha > 0)
        return Plan(teacher_logits=self.alpha > 0)

    def teacher_forms(self) -> dict:
        return {} if self.beta == 0 and self.init_epochs == 0 else super().teacher_forms()

    def feature_loss(self, student, teacher, ctx: Context) -> torch.Tensor:
        n = len(student)
        total = student[0].new_zeros(())
        for i, (fs, ft, conn) in enumerate(zip(student, teacher, self.connectors, strict=True)):
            total = total + 2.0 ** (i - n + 1) * ab_distance(conn(fs), conn.resize(ft), self.margin)
        return total / student[0].shape[0] / 1000 * 3

    def forward(self, ctx: Context) -> dict[str, torch.Tensor]:
        warn_if_first_stage_covers_training(
            self, ctx, "init_epochs", self.init_epochs, "the classifier"
        )
        if self.in_init_stage(ctx.epoch):
            s = [ctx.student_feats[n].float() for n in self.student_layers]
            t = [ctx.teacher_feats[n].float().detach() for n in self.teacher_layers]
            loss = self.feature_loss(s, t, ctx)
            return {"loss": loss, "loss_ab": loss}
        return super().forward(ctx) if self.beta > 0 else ce_kd(self, ctx)

    def hparams(self) -> dict:
        return {
            **super().hparams(),
            "margin": self.margin,
            "init_epochs": self.init_epochs,
            "fresh_optimizer": self.fresh_optimizer,
        }
