"""Teacher-free KD (Yuan, Tay, Li, Wang & Feng, CVPR 2020, "Revisiting Knowledge Distillation
via Label Smoothing Regularization"), as in the authors' ``my_loss_function.py``
(yuanli2333/Teacher-free-Knowledge-Distillation@d000ab378a409535a5f5f645b473e05e27529a02).

Two forms:

``form="virtual"`` (Tf-KD_reg, ``loss_kd_regularization``): no teacher network at all. A
manually designed virtual teacher puts ``correct_prob`` a on the true class and (1 - a)/(K - 1)
on every other class; its distribution at temperature T is softmax(p^d / T) (the authors'
code applies the tempered softmax to those probabilities), and

    L = (1 - alpha) * CE(z, y) + alpha * multiplier * KL(softmax(p^d / T) || softmax(z))

with the student's logits z at temperature 1.

``form="self"`` (Tf-KD_self, ``loss_kd_self``): the teacher is a pre-trained copy of the
student's own architecture (kdlight's teacher machinery: set the experiment's teacher model
to the student's, see docs/methods/tfkd.md), and

    L = (1 - alpha) * CE(z, y) + alpha * multiplier * T^2 * KL(q_t^T || q_s^T).

``reduction="legacy"`` (default) is the authors' ``nn.KLDivLoss()`` (mean over batch x classes,
1/K of the per-sample KL), for which their ``multiplier`` values (1 to 100) were tuned;
``"batchmean"`` is the per-sample KL (divide ``multiplier`` by K for the same loss).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from kdlight.errors import ConfigError
from kdlight.methods.base import Context, Method, Plan, check_range

FORMS = ("virtual", "self")
REDUCTIONS = ("legacy", "batchmean")


def virtual_teacher(labels: torch.Tensor, num_classes: int, correct_prob: float) -> torch.Tensor:
    """p^d: ``correct_prob`` on each row's label, the rest shared uniformly by the other classes."""
    rest = (1.0 - correct_prob) / (num_classes - 1)
    p = torch.full((labels.shape[0], num_classes), rest, device=labels.device)
    return p.scatter(1, labels.view(-1, 1), correct_prob)


def kl_div(log_p_student: torch.Tensor, p_teacher: torch.Tensor, reduction: str) -> torch.Tensor:
    """KL(p_teacher || p_student) from the student's log-probabilities and the teacher's probabilities."""
    kl = F.kl_div(log_p_student, p_teacher, reduction="sum")
    n = log_p_student.shape[0]
    return kl / (n * log_p_student.shape[1]) if reduction == "legacy" else kl / n


class TFKD(Method):
    """Teacher-free KD; see the module docstring.

    Args:
        form: ``"virtual"`` (no teacher network) or ``"self"`` (a pre-trained copy of the student).
        alpha: weight of the soft term, in [0, 1]; CE gets ``1 - alpha``.
        temperature: T > 0 (virtual: of the virtual teacher's softmax; self: of both softmaxes).
        correct_prob: the virtual teacher's probability of the true class, in (1/K, 1] (form virtual).
        multiplier: the authors' extra factor on the soft term, >= 0.
        reduction: ``"legacy"`` (the authors' mean over batch x classes) or ``"batchmean"``.

    Returns ``{"loss", "loss_kd", "loss_ce"}`` (unweighted terms).
    """

    def __init__(
        self,
        form: str = "virtual",
        alpha: float = 0.1,
        temperature: float = 20.0,
        correct_prob: float = 0.99,
        multiplier: float = 100.0,
        reduction: str = "legacy",
    ) -> None:
        super().__init__()
        if form not in FORMS:
            raise ConfigError(f"distill.form={form!r} is invalid; valid forms are virtual, self.")
        if reduction not in REDUCTIONS:
            raise ConfigError(
                f"distill.reduction={reduction!r} is invalid; valid values are legacy, batchmean."
            )
        self.form = form
        self.alpha = check_range("alpha", alpha, 0.0, 1.0)
        self.temperature = check_range("temperature", temperature, 0.0, low_open=True)
        self.correct_prob = check_range("correct_prob", correct_prob, 0.0, 1.0, low_open=True)
        self.multiplier = check_range("multiplier", multiplier, 0.0)
        self.reduction = reduction
        self.needs_teacher = form == "self"
        self.uses_store = form == "self"
        self.needs_labels = form == "virtual" or self.alpha < 1.0

    def plan(self, epoch: int) -> Plan:
        return Plan(teacher_logits=self.needs_teacher)

    def soft_term(self, ctx: Context) -> torch.Tensor:
        z = ctx.student_logits.float()
        t = self.temperature
        if self.form == "virtual":
            if z.shape[1] < 2:
                raise ConfigError("distill=tfkd form=virtual needs at least 2 classes.")
            if self.correct_prob <= 1.0 / z.shape[1]:
                raise ConfigError(
                    f"distill.correct_prob={self.correct_prob} is invalid for {z.shape[1]} "
                    f"classes; it must exceed 1/{z.shape[1]} (the virtual teacher's true class "
                    "must be its most likely one)."
                )
            p_d = virtual_teacher(ctx.labels, z.shape[1], self.correct_prob)
            target = F.softmax(p_d / t, dim=1)
            return kl_div(F.log_softmax(z, dim=1), target, self.reduction)
        target = F.softmax(ctx.teacher_logits.float() / t, dim=1)
        return kl_div(F.log_softmax(z / t, dim=1), target, self.reduction) * (t * t)

    def forward(self, ctx: Context) -> dict[str, torch.Tensor]:
        loss_kd = self.soft_term(ctx)
        if ctx.labels is None:  # form=self with alpha 1 on unlabeled data
            zero = torch.zeros((), device=loss_kd.device)
            return {"loss": self.multiplier * loss_kd, "loss_kd": loss_kd, "loss_ce": zero}
        loss_ce = F.cross_entropy(ctx.student_logits.float(), ctx.labels)
        loss = (1.0 - self.alpha) * loss_ce + self.alpha * self.multiplier * loss_kd
        return {"loss": loss, "loss_kd": loss_kd, "loss_ce": loss_ce}

    def hparams(self) -> dict[str, Any]:
        return {"form": self.form}

    def extra_repr(self) -> str:
        return (
            f"form={self.form!r}, alpha={self.alpha}, temperature={self.temperature}, "
            f"correct_prob={self.correct_prob}, multiplier={self.multiplier}, "
            f"reduction={self.reduction!r}"
        )
