"""Hinton KD (Hinton, Vinyals & Dean, 2015, "Distilling the Knowledge in a Neural Network").

    q^T(z) = softmax(z / T)
    L = alpha * T^2 * KL(q^T(z_teacher) || q^T(z_student)) + (1 - alpha) * CE(z_student, y)

``alpha`` weights the soft (teacher) term, as in the reproduced study (torchdistill's
``alpha`` weights the CE term instead). With ``logit_standardization`` (Sun et al., CVPR 2024,
"Logit Standardization in Knowledge Distillation") both logit vectors are z-scored per sample,
z -> (z - mean(z)) / std(z), before the temperature, so the student matches the teacher's
logit *relations* rather than their scale; T is then the paper's "base temperature".
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kdlight.errors import ConfigError
from kdlight.methods.base import Context, Method, check_range

REDUCTIONS = ("batchmean", "legacy")


def standardize(logits: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Per-sample z-score of logits (Sun et al. 2024, eq. 6): (z - mean z) / (std z + eps).

    ``std`` is the unbiased sample standard deviation over classes, as in the paper's code.
    """
    z = logits.float()
    return (z - z.mean(dim=1, keepdim=True)) / (z.std(dim=1, keepdim=True) + eps)


def soft_kl(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    temperature: float,
    reduction: str = "batchmean",
) -> torch.Tensor:
    """T^2 * KL(q_teacher^T || q_student^T), with q^T = softmax(z / T).

    ``reduction="batchmean"`` sums the KL over classes and averages over the batch (the
    true per-sample KL). ``"legacy"`` reproduces the original study's ``nn.KLDivLoss()``
    default, which averaged over batch x classes and so is 1/C of the true value; it exists
    only for comparison studies. ``temperature`` may be a 0-d tensor (a learned T).
    """
    t = temperature if isinstance(temperature, torch.Tensor) else float(temperature)
    log_p_student = F.log_softmax(student_logits.float() / t, dim=1)
    log_p_teacher = F.log_softmax(teacher_logits.float() / t, dim=1)
    kl = F.kl_div(log_p_student, log_p_teacher, reduction="none", log_target=True)
    if reduction == "batchmean":
        per_batch = kl.sum() / student_logits.shape[0]
    elif reduction == "legacy":
        per_batch = kl.mean()
    else:
        raise ConfigError(
            f"distill.reduction={reduction!r} is invalid; valid values are {', '.join(REDUCTIONS)}."
        )
    return per_batch * (t * t)


class KD(Method):
    """Hinton KD, optionally with logit standardization; see the module docstring.

    Args:
        alpha: weight of the soft (teacher) term, in [0, 1]; ``1 - alpha`` weights the CE term.
        temperature: softmax temperature T > 0 for both teacher and student.
        reduction: ``"batchmean"`` (correct, default) or ``"legacy"`` (the original code's
            1/C scaling, for comparison only).
        logit_standardization: z-score both logit vectors first (Sun et al. 2024).

    Returns ``{"loss", "loss_kd", "loss_ce"}``; ``loss_kd`` and ``loss_ce`` are unweighted.
    """

    def __init__(
        self,
        alpha: float = 0.9,
        temperature: float = 4.0,
        reduction: str = "batchmean",
        logit_standardization: bool = False,
    ) -> None:
        super().__init__()
        self.alpha = check_range("alpha", alpha, 0.0, 1.0)
        self.temperature = check_range("temperature", temperature, 0.0, low_open=True)
        if reduction not in REDUCTIONS:
            raise ConfigError(
                f"distill.reduction={reduction!r} is invalid; valid values are {', '.join(REDUCTIONS)}."
            )
        self.reduction = reduction
        self.logit_standardization = bool(logit_standardization)
        self.needs_labels = self.alpha < 1.0

    def kd_term(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        if self.logit_standardization:
            student_logits, teacher_logits = (
                standardize(student_logits),
                standardize(teacher_logits),
            )
        return soft_kl(student_logits, teacher_logits, self.temperature, self.reduction)

    def forward(self, ctx: Context) -> dict[str, torch.Tensor]:
        loss_kd = self.kd_term(ctx.student_logits, ctx.teacher_logits)
        if ctx.labels is None:
            loss_ce = torch.zeros((), device=loss_kd.device)
            return {"loss": loss_kd, "loss_kd": loss_kd, "loss_ce": loss_ce}
        loss_ce = F.cross_entropy(ctx.student_logits.float(), ctx.labels)
        loss = self.alpha * loss_kd + (1.0 - self.alpha) * loss_ce
        return {"loss": loss, "loss_kd": loss_kd, "loss_ce": loss_ce}

    def extra_repr(self) -> str:
        return (
            f"alpha={self.alpha}, temperature={self.temperature}, reduction={self.reduction!r}, "
            f"logit_standardization={self.logit_standardization}"
        )
