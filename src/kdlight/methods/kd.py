"""Hinton KD (Hinton, Vinyals & Dean, 2015, "Distilling the Knowledge in a Neural Network").

    q^T(z) = softmax(z / T)
    L = kd_weight * T^2 * KL(q^T(z_teacher) || q^T(z_student)) + ce_weight * CE(z_student, y)

``alpha`` is the convenience form of the reproduced study: ``kd_weight = alpha``,
``ce_weight = 1 - alpha`` (so ``alpha`` weights the soft (teacher) term; torchdistill's
``alpha`` weights the CE term instead). Separate weights, as DKD and DIST take them, express
recipes outside [0, 1], e.g. logit standardization's CE 0.1 + KD 9.

Defaults: the reproduced study's alpha 0.9 and T = 20 (its MNIST and CNN runs), the same in
``conf/distill/kd.yaml``, so the code and the config never disagree; kdlight's first job is that
study. The other settings set their own T in their experiment configs (CIFAR-100 and
Tiny-ImageNet 4, the study's ResNet-18 6, ImageNet 1). With ``logit_standardization`` (Sun et al., CVPR 2024,
"Logit Standardization in Knowledge Distillation") both logit vectors are z-scored per sample,
z -> (z - mean(z)) / std(z), before the temperature, so the student matches the teacher's
logit *relations* rather than their scale; T is then the paper's "base temperature".
"""

from __future__ import annotations

import math

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


#: KD's default temperature, the study's (see the module docstring); FitNets' KD stage shares it.
DEFAULT_TEMPERATURE = 20.0
DEFAULT_ALPHA = 0.9


def loss_weights(
    alpha: float | None, ce_weight: float | None, kd_weight: float | None
) -> tuple[float, float, float | None]:
    """``(ce_weight, kd_weight, alpha)`` from either form; ConfigError when the two disagree.

    ``alpha`` -> ``(1 - alpha, alpha)``; with no alpha the weights are taken as given (a missing
    one is 1); with none of the three, alpha is :data:`DEFAULT_ALPHA`.
    """
    if alpha is None and ce_weight is None and kd_weight is None:
        alpha = DEFAULT_ALPHA
    if alpha is None:
        ce = check_range("ce_weight", 1.0 if ce_weight is None else ce_weight, 0.0)
        kd = check_range("kd_weight", 1.0 if kd_weight is None else kd_weight, 0.0)
        return ce, kd, None
    a = check_range("alpha", alpha, 0.0, 1.0)
    for name, given, implied in (("ce_weight", ce_weight, 1.0 - a), ("kd_weight", kd_weight, a)):
        if given is not None and not math.isclose(float(given), implied, abs_tol=1e-12):
            raise ConfigError(
                f"distill.{name}={given} disagrees with distill.alpha={alpha} (alpha means "
                f"ce_weight = 1 - alpha = {1.0 - a:g}, kd_weight = alpha = {a:g}); set "
                f"distill.alpha=null to use ce_weight and kd_weight, or drop them."
            )
    return 1.0 - a, a, a


class KD(Method):
    """Hinton KD, optionally with logit standardization; see the module docstring.

    Args:
        alpha: the study's form, in [0, 1]: ``kd_weight = alpha``, ``ce_weight = 1 - alpha``.
            None: the weights alone (each defaults to 1 then); all three None: alpha 0.9.
        temperature: softmax temperature T > 0 for both teacher and student (default 20).
        reduction: ``"batchmean"`` (correct, default) or ``"legacy"`` (the original code's
            1/C scaling, for comparison only).
        logit_standardization: z-score both logit vectors first (Sun et al. 2024).
        ce_weight / kd_weight: weights of the CE and KD terms, >= 0. Given with ``alpha``
            they must equal ``1 - alpha`` / ``alpha`` (else ConfigError).

    Returns ``{"loss", "loss_kd", "loss_ce"}``; ``loss_kd`` and ``loss_ce`` are unweighted.
    """

    def __init__(
        self,
        alpha: float | None = None,
        temperature: float = DEFAULT_TEMPERATURE,
        reduction: str = "batchmean",
        logit_standardization: bool = False,
        ce_weight: float | None = None,
        kd_weight: float | None = None,
    ) -> None:
        super().__init__()
        self.ce_weight, self.kd_weight, self.alpha = loss_weights(alpha, ce_weight, kd_weight)
        self.temperature = check_range("temperature", temperature, 0.0, low_open=True)
        if reduction not in REDUCTIONS:
            raise ConfigError(
                f"distill.reduction={reduction!r} is invalid; valid values are {', '.join(REDUCTIONS)}."
            )
        self.reduction = reduction
        self.logit_standardization = bool(logit_standardization)
        self.needs_labels = self.ce_weight > 0.0

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
            return {"loss": self.kd_weight * loss_kd, "loss_kd": loss_kd, "loss_ce": loss_ce}
        loss_ce = F.cross_entropy(ctx.student_logits.float(), ctx.labels)
        loss = self.kd_weight * loss_kd + self.ce_weight * loss_ce
        return {"loss": loss, "loss_kd": loss_kd, "loss_ce": loss_ce}

    def extra_repr(self) -> str:
        return (
            f"ce_weight={self.ce_weight}, kd_weight={self.kd_weight}, alpha={self.alpha}, "
            f"temperature={self.temperature}, reduction={self.reduction!r}, "
            f"logit_standardization={self.logit_standardization}"
        )
