"""FitNets (Romero et al., 2014): hint training of the student's lower part, then Hinton KD.

Stage 1 (epochs ``0 .. hint_epochs - 1``) trains the student up to its *guided* layer, plus a
learned regressor, so that the regressor's output matches the teacher's *hint* layer (L2,
:func:`kdlight.losses.hint_loss`). Stage 2 (the remaining epochs) trains the whole student with
the distillation loss of the config (Hinton KD). Layers are named as in ``named_modules()``
(e.g. ``layer2`` of the CIFAR ResNets, ``bn2`` of :class:`kdlight.models.cnn.CNN5`,
``layers.3`` of an MLP).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from kdlight.errors import ConfigError
from kdlight.losses import hint_loss
from kdlight.modules.distill import DistillationModule

log = logging.getLogger(__name__)


class _StopForward(Exception):
    """Raised by a capture hook to skip the layers above the one captured."""


def find_module(net: nn.Module, name: str, role: str = "module") -> nn.Module:
    """The submodule of ``net`` called ``name`` in ``net.named_modules()``; ConfigError if none."""
    modules = dict(getattr(net, "_orig_mod", net).named_modules())
    if name not in modules or name == "":
        names = [n for n in modules if n]
        shown = ", ".join(names[:25]) + (", ..." if len(names) > 25 else "")
        raise ConfigError(
            f"the {role} {name!r} is not a module of {type(net).__name__}; valid names "
            f"(from named_modules()) are: {shown}."
        )
    return modules[name]


@contextlib.contextmanager
def capture(net: nn.Module, name: str, stop: bool = False) -> Iterator[dict[str, torch.Tensor]]:
    """Within the block, each forward of ``net`` stores submodule ``name``'s output in the yielded dict.

    With ``stop=True`` the forward is aborted right after that module (call it through
    :func:`features`), so the layers above it neither run nor update BatchNorm statistics.
    Without ``stop`` the output is cloned, since a later in-place op (``ReLU(inplace=True)``)
    could overwrite it.
    """
    box: dict[str, torch.Tensor] = {}

    def hook(module, inputs, output):
        box["out"] = output if stop else output.clone()
        if stop:
            raise _StopForward

    handle = find_module(net, name).register_forward_hook(hook)
    try:
        yield box
    finally:
        handle.remove()


def features(net: nn.Module, name: str, x: torch.Tensor) -> torch.Tensor:
    """The output of ``net``'s submodule ``name`` for input ``x``, running ``net`` only up to it."""
    with capture(net, name, stop=True) as box:
        with contextlib.suppress(_StopForward):
            net(x)
    if "out" not in box:
        raise ConfigError(
            f"the module {name!r} of {type(net).__name__} is never called in its forward."
        )
    return box["out"]


class HintRegressor(nn.Module):
    """Maps the student's guided features onto the shape of the teacher's hint.

    Spatial maps, student (N, Cs, Hs, Ws) and teacher (N, Ct, Ht, Wt): both are compared at
    (H, W) = (min(Hs, Ht), min(Ws, Wt)); the larger map is adaptively average-pooled to that
    size (the smaller one is left as is), then r = Conv2d(Cs, Ct, k, padding k // 2) (+ ReLU
    when ``relu``). Any other shapes: both are flattened and r = Linear(ds, dt) (+ ReLU).
    Romero et al. use a convolutional regressor for the same reason (far fewer parameters than
    a fully connected one) and give it the hint layer's non-linearity.
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
                f"FitNets regressor_kernel={kernel_size} is invalid; use an odd size >= 1 (1 or 3)."
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


class FitNetsModule(DistillationModule):
    """FitNets: Romero et al. (2014), "FitNets: Hints for Thin Deep Nets", two-stage training.

    Stage 1, epochs < ``hint_epochs``:  L = L_HT = mean (u_h(x) - r(v_g(x)))^2
        u_h: teacher up to ``hint_layer``; v_g: student up to ``guided_layer``; r: the
        :class:`HintRegressor`, built at setup from a dummy forward. Only the student below
        the guided layer and r get gradients (the forward stops at the guided layer).
    Stage 2, the remaining epochs: L = ``loss`` (Hinton KD: alpha T^2 KL + (1 - alpha) CE)
        on the whole student; r is unused.

    The regressor is in the optimizer for the whole run (it only has gradients in stage 1);
    the teacher stays frozen and in eval mode. Teacher features are computed online: a teacher
    logit store (``teacher_store``) serves logits only, so it is consulted in stage 2 only.
    Logs ``train/loss_hint`` in stage 1 and the KD terms (``train/loss_kd``, ``train/loss_ce``)
    in stage 2. Validation accuracy in stage 1 is that of an untrained classifier head.
    """

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module,
        loss: nn.Module,
        num_classes: int,
        optimizer,
        scheduler=None,
        compile: bool = False,
        teacher_store=None,
        log_agreement: bool = True,
        hint_layer: str = "layers.4",
        guided_layer: str = "layers.3",
        hint_epochs: int = 5,
        regressor_kernel: int = 1,
        regressor_relu: bool = False,
    ) -> None:
        super().__init__(
            student, teacher, loss, num_classes, optimizer, scheduler,
            compile=compile, teacher_store=teacher_store, log_agreement=log_agreement,
        )  # fmt: skip
        if int(hint_epochs) < 0:
            raise ConfigError(
                f"distill.module.hint_epochs={hint_epochs} is invalid; it must be >= 0."
            )
        find_module(teacher, hint_layer, "teacher hint layer (distill.module.hint_layer)")
        find_module(student, guided_layer, "student guided layer (distill.module.guided_layer)")
        self.hint_layer = str(hint_layer)
        self.guided_layer = str(guided_layer)
        self.hint_epochs = int(hint_epochs)
        self.regressor_kernel = int(regressor_kernel)
        self.regressor_relu = bool(regressor_relu)
        self.regressor: HintRegressor | None = None

    @property
    def _plain_student(self) -> nn.Module:
        """The student itself, also after ``torch.compile`` (hooks go on the uncompiled network)."""
        return getattr(self.net, "_orig_mod", self.net)

    def in_hint_stage(self) -> bool:
        """True during stage 1 (``current_epoch < hint_epochs``)."""
        return self.current_epoch < self.hint_epochs

    @torch.no_grad()
    def build_regressor(self, example: torch.Tensor) -> HintRegressor:
        """Infer both feature shapes from one forward of ``example`` and create the regressor."""
        was = self._plain_student.training
        self._plain_student.eval()
        try:
            guided = features(self._plain_student, self.guided_layer, example)
            hint = features(self.teacher, self.hint_layer, example)
        finally:
            self._plain_student.train(was)
        self.regressor = HintRegressor(
            guided.shape[1:], hint.shape[1:], self.regressor_kernel, self.regressor_relu
        ).to(device=example.device)
        return self.regressor

    def setup(self, stage: str) -> None:
        if self.regressor is None:
            dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
            if dm is None or not hasattr(dm, "view_batch"):
                raise RuntimeError(
                    "FitNetsModule needs an example input to size its regressor: call "
                    "build_regressor(example) or fit with a kdlight data module."
                )
            idx = dm.train_idx if dm.train_idx.numel() else dm.val_idx
            self.build_regressor(dm.view_batch(idx[:2], None))
        super().setup(stage)

    def on_fit_start(self) -> None:
        max_epochs = self.trainer.max_epochs
        if max_epochs is not None and 0 < max_epochs <= self.hint_epochs:
            log.warning(
                "FitNets: hint_epochs=%d >= max_epochs=%d, so the classifier head is never trained.",
                self.hint_epochs, max_epochs,
            )  # fmt: skip

    def trainable_parameters(self):
        regressor = self.regressor.parameters() if self.regressor is not None else ()
        return itertools.chain(self.net.parameters(), regressor)

    def on_train_epoch_start(self) -> None:
        if not self.in_hint_stage():  # the logit store is of no use to hint training
            super().on_train_epoch_start()

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        if not self.in_hint_stage():
            return super().training_step(batch, batch_idx)
        if self.regressor is None:
            raise RuntimeError("FitNetsModule.training_step before its regressor was built.")
        x = batch["x"]
        with torch.no_grad():
            hint = features(self.teacher, self.hint_layer, x)
        guided = features(self._plain_student, self.guided_layer, x)
        loss = hint_loss(self.regressor(guided), self.regressor.target(hint))
        self.check_finite(loss)
        self.log("train/loss_hint", loss, batch_size=x.shape[0])
        self.log("train/loss", loss, prog_bar=True, batch_size=x.shape[0])
        return loss
