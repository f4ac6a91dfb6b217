"""FitNets (Romero et al., 2014, "FitNets: Hints for Thin Deep Nets"): hint training, then KD.

Stage 1, epochs ``0 .. hint_epochs - 1``:
    L_HT = mean over batch and elements of (u_h(x) - r(v_g(x)))^2          (paper eq. 3)
    u_h: the teacher's ``hint_layer`` output; v_g: the student's ``guided_layer`` output;
    r: a learned regressor (:class:`HintRegressor`). Both forwards stop at those layers, so
    only the student below the guided layer and r learn (and the layers above neither run
    nor update BatchNorm statistics). The paper's 1/2 ||.||^2 per sample is replaced by the
    element mean (a constant factor, so the scale does not depend on the layer's size).
Stage 2, the remaining epochs: Hinton KD on the whole student,
    L = alpha * T^2 * KL(q_teacher^T || q_student^T) + (1 - alpha) * CE.

Layers are named as in ``named_modules()`` (``layer2`` of the CIFAR ResNets, ``bn2`` of the
5-layer CNN, ``layers.3`` of an MLP), or ``auto``: each network's second stage output
(:func:`kdlight.methods.features.hint_stage`, RepDistiller's ``--hint_layer 2``); the forward
hooks check the names before training. The teacher store keeps the hint map beside the logits
when the run's maps fit ``teacher_store.max_gb`` (else stage 1 runs the teacher online); it
serves stage 2's logits.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from kdlight.errors import ConfigError
from kdlight.methods.base import RAW, Context, Form, Plan
from kdlight.methods.features import hint_stage
from kdlight.methods.kd import KD

log = logging.getLogger(__name__)


def hint_loss(regressed: torch.Tensor, hint: torch.Tensor) -> torch.Tensor:
    """L_HT = mean (hint - regressed)^2; the shapes must be equal."""
    if regressed.shape != hint.shape:
        raise ValueError(
            f"hint loss: regressed student features {tuple(regressed.shape)} and teacher hint "
            f"{tuple(hint.shape)} differ in shape."
        )
    return F.mse_loss(regressed.float(), hint.float())


class HintRegressor(nn.Module):
    """Maps the student's guided features onto the shape of the teacher's hint.

    Spatial maps, student (N, Cs, Hs, Ws) and teacher (N, Ct, Ht, Wt): both are compared at
    (H, W) = (min(Hs, Ht), min(Ws, Wt)); the larger map is adaptively average-pooled to that
    size, then r = Conv2d(Cs, Ct, k, padding k // 2) (+ ReLU when ``relu``). Any other shapes:
    both are flattened and r = Linear(ds, dt) (+ ReLU). Romero et al. use a convolutional
    regressor (far fewer parameters than a fully connected one) with the hint layer's
    non-linearity.
    """

    def __init__(
        self,
        student_shape: Sequence[int],
        teacher_shape: Sequence[int],
        kernel_size: int = 1,
        relu: bool = False,
    ) -> None:
        super().__init__()
        if int(kernel_size) < 1 or int(kernel_size) % 2 == 0:
            raise ConfigError(
                f"distill.regressor_kernel={kernel_size} is invalid; use an odd size >= 1 (1 or 3)."
            )
        s, t = tuple(int(d) for d in student_shape), tuple(int(d) for d in teacher_shape)
        self.student_shape, self.teacher_shape = s, t
        self.relu = bool(relu)
        if len(s) == 3 and len(t) == 3:
            self.size: tuple[int, int] | None = (min(s[1], t[1]), min(s[2], t[2]))
            k = int(kernel_size)
            self.proj: nn.Module = nn.Conv2d(s[0], t[0], k, padding=k // 2)
        else:
            self.size = None
            self.proj = nn.Linear(math.prod(s), math.prod(t))

    def _resize(self, x: torch.Tensor) -> torch.Tensor:
        if self.size is None:
            return x.flatten(1)
        if tuple(x.shape[-2:]) != self.size:
            x = F.adaptive_avg_pool2d(x, self.size)
        return x

    def forward(self, guided: torch.Tensor) -> torch.Tensor:
        out = self.proj(self._resize(guided))
        return F.relu(out) if self.relu else out

    def target(self, hint: torch.Tensor) -> torch.Tensor:
        """The teacher's hint brought to the regressor's output shape (pooled or flattened)."""
        return self._resize(hint)

    def extra_repr(self) -> str:
        return f"student={self.student_shape}, teacher={self.teacher_shape}, size={self.size}, relu={self.relu}"


class FitNets(KD):
    """FitNets; see the module docstring. ``alpha``, ``temperature``, ``reduction`` are stage 2's KD.

    Args:
        hint_layer: teacher module whose output is the hint (``auto``: its second stage).
        guided_layer: student module whose output is guided (``auto``: its second stage).
        hint_epochs: stage-1 epochs (>= 0); the rest of ``trainer.max_epochs`` is KD.
        regressor_kernel: conv k x k (odd) for spatial maps; a Linear for flat features.
        regressor_relu: ReLU after the regressor (match the hint layer's non-linearity).

    Logs ``train/loss_hint`` in stage 1 and ``train/loss_kd``, ``train/loss_ce`` in stage 2.
    """

    def __init__(
        self,
        alpha: float = 0.9,
        temperature: float = 4.0,
        reduction: str = "batchmean",
        hint_layer: str = "auto",
        guided_layer: str = "auto",
        hint_epochs: int = 5,
        regressor_kernel: int = 1,
        regressor_relu: bool = False,
        logit_standardization: bool = False,
    ) -> None:
        super().__init__(alpha, temperature, reduction, logit_standardization)
        if int(hint_epochs) < 0:
            raise ConfigError(f"distill.hint_epochs={hint_epochs} is invalid; it must be >= 0.")
        self.hint_layer, self.guided_layer = str(hint_layer), str(guided_layer)
        self.student_layers, self.teacher_layers = (self.guided_layer,), (self.hint_layer,)
        self.hint_epochs = int(hint_epochs)
        self.regressor_kernel = int(regressor_kernel)
        self.regressor_relu = bool(regressor_relu)
        self.regressor: HintRegressor | None = None
        self._warned = False

    def resolve_layers(self, student: nn.Module, teacher: nn.Module) -> None:
        if self.guided_layer == "auto":
            self.guided_layer = hint_stage(student, "student")
        if self.hint_layer == "auto":
            self.hint_layer = hint_stage(teacher, "teacher")
        self.student_layers, self.teacher_layers = (self.guided_layer,), (self.hint_layer,)

    def in_hint_stage(self, epoch: int) -> bool:
        return epoch < self.hint_epochs

    def plan(self, epoch: int) -> Plan:
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
            guided.shape[1:], hint.shape[1:], self.regressor_kernel, self.regressor_relu
        )

    def forward(self, ctx: Context) -> dict[str, torch.Tensor]:
        if (
            ctx.max_epochs is not None
            and 0 < ctx.max_epochs <= self.hint_epochs
            and not self._warned
        ):
            log.warning(
                "FitNets: hint_epochs=%d >= max_epochs=%d, so the classifier head is never trained.",
                self.hint_epochs, ctx.max_epochs,
            )  # fmt: skip
            self._warned = True
        if not self.in_hint_stage(ctx.epoch):
            return super().forward(ctx)
        if self.regressor is None:
            raise RuntimeError("FitNets.forward before build(): its regressor does not exist yet.")
        guided = ctx.student_feats[self.guided_layer]
        hint = ctx.teacher_feats[self.hint_layer]
        loss = hint_loss(self.regressor(guided), self.regressor.target(hint))
        return {"loss": loss, "loss_hint": loss}
