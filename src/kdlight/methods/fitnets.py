"""FitNets (Romero et al., 2014, "FitNets: Hints for Thin Deep Nets"), in two named forms.

``form="two_stage"`` (the paper's; default). Stage 1, epochs ``0 .. hint_epochs - 1``:
    L_HT = mean over batch and elements of (u_h(x) - r(v_g(x)))^2          (paper eq. 3)
    u_h: the teacher's ``hint_layer`` output; v_g: the student's ``guided_layer`` output;
    r: a learned regressor (:class:`HintRegressor`). Both forwards stop at those layers, so
    only the student below the guided layer and r learn (and the layers above neither run
    nor update BatchNorm statistics). The paper's 1/2 ||.||^2 per sample is replaced by the
    element mean (a constant factor, so the scale does not depend on the layer's size).
Stage 2, the remaining epochs: Hinton KD on the whole student,
    L = kd_weight * T^2 * KL(q_teacher^T || q_student^T) + ce_weight * CE   (alpha: see KD).

``form="one_stage"`` (RepDistiller's benchmark; mdistiller's FitNet alike): every epoch, the
whole student with
    L = ce_weight * CE + kd_weight * KD + beta * L_HT        (beta 100)
``distill=fitnets distill.form=one_stage distill.alpha=0`` is RepDistiller's FitNet
(``--distill hint -r 1 -a 0 -b 100``); the default alpha 0.9 is its FitNet + KD
(``-r 0.1 -a 0.9 -b 100``).

The regressor is the references' conv + BN + ReLU (RepDistiller's and mdistiller's
``ConvReg``; ``regressor=conv_bn_relu``, default), or a bare conv (``regressor=conv``, with an
optional ReLU, ``regressor_relu``). Layers are named as in ``named_modules()``, or ``auto``:
each network's second declared stage (:func:`kdlight.methods.features.hint_stage`,
RepDistiller's ``--hint_layer 2``: ``layer2`` of a CIFAR ResNet, ``relu2`` of the 5-layer
CNN, an MLP's second hidden ReLU), a post-activation map that the ReLU-ended regressor can
match. The teacher store keeps the hint map beside the logits when the run's maps fit
``teacher_store.max_gb`` (else the teacher runs online for the hint); it serves the logits.
The KD temperature's default is KD's (T = 20, :data:`kdlight.methods.kd.DEFAULT_TEMPERATURE`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from kdlight.errors import ConfigError
from kdlight.methods.base import RAW, Context, Form, Plan, check_range
from kdlight.methods.features import hint_stage, warn_if_first_stage_covers_training
from kdlight.methods.kd import DEFAULT_TEMPERATURE, KD

log = logging.getLogger(__name__)


def hint_loss(regressed: torch.Tensor, hint: torch.Tensor) -> torch.Tensor:
    """L_HT = mean (hint - regressed)^2; the shapes must be equal."""
    if regressed.shape != hint.shape:
        raise ValueError(
            f"hint loss: regressed student features {tuple(regressed.shape)} and teacher hint "
            f"{tuple(hint.shape)} differ in shape."
        )
    return F.mse_loss(regressed.float(), hint.float())


REGRESSORS = ("conv_bn_relu", "conv")
FORMS = ("two_stage", "one_stage")


class HintRegressor(nn.Module):
    """Maps the student's guided features onto the shape of the teacher's hint.

    Spatial maps, student (N, Cs, Hs, Ws) and teacher (N, Ct, Ht, Wt): both are compared at
    (H, W) = (min(Hs, Ht), min(Ws, Wt)); the larger map is adaptively average-pooled to that
    size, then r = Conv2d(Cs, Ct, k, padding k // 2). Any other shapes: both are flattened and
    r = Linear(ds, dt). ``form="conv_bn_relu"`` follows r with BatchNorm and ReLU, as the
    references' ``ConvReg``; ``"conv"`` leaves it bare (+ ReLU when ``relu``).
    """

    def __init__(
        self,
        student_shape: Sequence[int],
        teacher_shape: Sequence[int],
        kernel_size: int = 1,
        relu: bool = False,
        form: str = "conv_bn_relu",
    ) -> None:
        super().__init__()
        if int(kernel_size) < 1 or int(kernel_size) % 2 == 0:
            raise ConfigError(
                f"distill.regressor_kernel={kernel_size} is invalid; use an odd size >= 1 (1 or 3)."
            )
        if form not in REGRESSORS:
            raise ConfigError(
                f"distill.regressor={form!r} is invalid; valid values are {', '.join(REGRESSORS)}."
            )
        s, t = tuple(int(d) for d in student_shape), tuple(int(d) for d in teacher_shape)
        self.student_shape, self.teacher_shape, self.form = s, t, form
        self.relu = form == "conv_bn_relu" or bool(relu)
        if len(s) == 3 and len(t) == 3:
            self.size: tuple[int, int] | None = (min(s[1], t[1]), min(s[2], t[2]))
            k = int(kernel_size)
            self.proj: nn.Module = nn.Conv2d(s[0], t[0], k, padding=k // 2)
            bn = nn.BatchNorm2d(t[0])
        else:
            self.size = None
            self.proj = nn.Linear(math.prod(s), math.prod(t))
            bn = nn.BatchNorm1d(math.prod(t))
        self.bn = bn if form == "conv_bn_relu" else None

    def _resize(self, x: torch.Tensor) -> torch.Tensor:
        if self.size is None:
            return x.flatten(1)
        if tuple(x.shape[-2:]) != self.size:
            x = F.adaptive_avg_pool2d(x, self.size)
        return x

    def forward(self, guided: torch.Tensor) -> torch.Tensor:
        out = self.proj(self._resize(guided))
        if self.bn is not None:
            out = self.bn(out)
        return F.relu(out) if self.relu else out

    def target(self, hint: torch.Tensor) -> torch.Tensor:
        """The teacher's hint brought to the regressor's output shape (pooled or flattened)."""
        return self._resize(hint)

    def extra_repr(self) -> str:
        return (
            f"student={self.student_shape}, teacher={self.teacher_shape}, size={self.size}, "
            f"form={self.form!r}, relu={self.relu}"
        )


class FitNets(KD):
    """FitNets; see the module docstring. ``alpha``/``ce_weight``/``kd_weight``, ``temperature``,
    ``reduction`` are the KD term's (stage 2 of ``two_stage``; every step of ``one_stage``).

    Args:
        hint_layer: teacher module whose output is the hint (``auto``: its second stage).
        guided_layer: student module whose output is guided (``auto``: its second stage).
        form: ``"two_stage"`` (hint, then KD) or ``"one_stage"`` (CE + KD + beta * hint).
        hint_epochs: ``two_stage``'s stage-1 epochs (>= 0); the rest of ``trainer.max_epochs``
            is KD (``one_stage`` has no hint stage and ignores it).
        beta: ``one_stage``'s hint weight (RepDistiller: 100).
        regressor: ``"conv_bn_relu"`` (the references') or ``"conv"`` (bare).
        regressor_kernel: conv k x k (odd) for spatial maps; a Linear for flat features.
        regressor_relu: ReLU after a bare ``conv`` regressor (``conv_bn_relu`` has its own).

    Logs ``train/loss_hint`` (stage 1, or every step of ``one_stage``) and ``train/loss_kd``,
    ``train/loss_ce``.
    """

    def __init__(
        self,
        alpha: float | None = None,
        temperature: float = DEFAULT_TEMPERATURE,
        reduction: str = "batchmean",
        hint_layer: str = "auto",
        guided_layer: str = "auto",
        hint_epochs: int = 5,
        regressor_kernel: int = 1,
        regressor_relu: bool | None = None,
        logit_standardization: bool = False,
        ce_weight: float | None = None,
        kd_weight: float | None = None,
        form: str = "two_stage",
        beta: float = 100.0,
        regressor: str = "conv_bn_relu",
    ) -> None:
        super().__init__(alpha, temperature, reduction, logit_standardization, ce_weight, kd_weight)
        if form not in FORMS:
            raise ConfigError(
                f"distill.form={form!r} is invalid; valid values are {', '.join(FORMS)}."
            )
        if int(hint_epochs) < 0:
            raise ConfigError(f"distill.hint_epochs={hint_epochs} is invalid; it must be >= 0.")
        if regressor == "conv_bn_relu" and regressor_relu is False:
            raise ConfigError(
                "distill.regressor_relu=false with distill.regressor=conv_bn_relu: that regressor "
                "ends in its ReLU; use distill.regressor=conv for a bare conv."
            )
        self.form = form
        self.beta = check_range("beta", beta, 0.0)
        self.hint_layer, self.guided_layer = str(hint_layer), str(guided_layer)
        self.student_layers, self.teacher_layers = (self.guided_layer,), (self.hint_layer,)
        self.hint_epochs = int(hint_epochs)
        self.regressor_kernel = int(regressor_kernel)
        self.regressor_form = regressor
        self.regressor_relu = bool(regressor_relu)
        self.regressor: HintRegressor | None = None

    def resolve_layers(self, student: nn.Module, teacher: nn.Module) -> None:
        if self.guided_layer == "auto":
            self.guided_layer = hint_stage(student, "student")
        if self.hint_layer == "auto":
            self.hint_layer = hint_stage(teacher, "teacher")
        self.student_layers, self.teacher_layers = (self.guided_layer,), (self.hint_layer,)

    def in_hint_stage(self, epoch: int) -> bool:
        return epoch < self.hint_epochs

    def plan(self, epoch: int) -> Plan:
        if self.form == "one_stage":  # every step: full forwards, hint and logits
            return Plan(self.student_layers, self.teacher_layers, teacher_logits=self.kd_weight > 0)
        if self.in_hint_stage(epoch):
            return Plan(
                self.student_layers, self.teacher_layers, stop_early=True, teacher_logits=False
            )
        return Plan()

    def teacher_forms(self) -> dict[str, Form]:
        return {self.hint_layer: RAW}

    def build(self, student_feats, teacher_feats, num_classes) -> None:
        guided, hint = student_feats[self.guided_layer], teacher_feats[self.hint_layer]
        self.regressor = HintRegressor(
            guided.shape[1:],
            hint.shape[1:],
            self.regressor_kernel,
            self.regressor_relu,
            self.regressor_form,
        )

    def forward(self, ctx: Context) -> dict[str, torch.Tensor]:
        if self.form == "two_stage":
            warn_if_first_stage_covers_training(
                self, ctx, "hint_epochs", self.hint_epochs, "the classifier head"
            )
        if self.form == "two_stage" and not self.in_hint_stage(ctx.epoch):
            return super().forward(ctx)
        if self.regressor is None:
            raise RuntimeError("FitNets.forward before build(): its regressor does not exist yet.")
        guided = ctx.student_feats[self.guided_layer]
        hint = ctx.teacher_feats[self.hint_layer]
        loss = hint_loss(self.regressor(guided), self.regressor.target(hint))
        if self.form == "two_stage":
            return {"loss": loss, "loss_hint": loss}
        terms = {"loss_hint": loss}
        total = self.beta * loss
        if self.ce_weight > 0:
            terms["loss_ce"] = F.cross_entropy(ctx.student_logits.float(), ctx.labels)
            total = total + self.ce_weight * terms["loss_ce"]
        if self.kd_weight > 0:
            terms["loss_kd"] = self.kd_term(ctx.student_logits, ctx.teacher_logits)
            total = total + self.kd_weight * terms["loss_kd"]
        return {"loss": total, **terms}
