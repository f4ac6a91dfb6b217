"""Distillation losses: pure functions of logits, and thin config-facing wrappers."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kdlight.errors import ConfigError

REDUCTIONS = ("batchmean", "legacy")


def check_kd_params(alpha: float, temperature: float, reduction: str = "batchmean") -> None:
    """Raise :class:`ConfigError` unless 0 <= alpha <= 1, T > 0 and the reduction is known."""
    if not 0.0 <= float(alpha) <= 1.0:
        raise ConfigError(f"distill.alpha={alpha} is invalid; alpha must be in [0, 1].")
    if not float(temperature) > 0.0:
        raise ConfigError(f"distill.temperature={temperature} is invalid; T must be > 0.")
    if reduction not in REDUCTIONS:
        raise ConfigError(
            f"distill.reduction={reduction!r} is invalid; valid values are {', '.join(REDUCTIONS)}."
        )


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
    only for comparison studies.
    """
    t = float(temperature)
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


def hinton_kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor | None,
    alpha: float,
    temperature: float,
    reduction: str = "batchmean",
) -> dict[str, torch.Tensor]:
    """Hinton et al. (2015), "Distilling the Knowledge in a Neural Network".

    L = alpha * T^2 * KL(q_teacher^T || q_student^T) + (1 - alpha) * CE(student, y)

    ``alpha`` weights the soft (teacher) term, as in the reproduced study (torchdistill's
    ``alpha`` weights the CE term instead). ``labels`` may be ``None`` only when
    ``alpha == 1`` (training on unlabeled data: the teacher's targets alone).

    Returns ``{"loss", "loss_kd", "loss_ce"}``; ``loss_kd`` and ``loss_ce`` are unweighted.
    """
    loss_kd = soft_kl(student_logits, teacher_logits, temperature, reduction)
    if labels is None:
        if alpha != 1.0:
            raise ConfigError(
                f"distill.alpha={alpha} needs labels for its (1 - alpha) cross-entropy term, but "
                "the training data is unlabeled; use distill.alpha=1.0 for unlabeled training."
            )
        loss_ce = torch.zeros((), device=student_logits.device)
        return {"loss": loss_kd, "loss_kd": loss_kd, "loss_ce": loss_ce}
    loss_ce = F.cross_entropy(student_logits.float(), labels)
    loss = alpha * loss_kd + (1.0 - alpha) * loss_ce
    return {"loss": loss, "loss_kd": loss_kd, "loss_ce": loss_ce}


class HintonKD(nn.Module):
    """Hinton KD as a configurable object; see :func:`hinton_kd_loss` for the formula.

    Args:
        alpha: weight of the soft (teacher) term, in [0, 1]; ``1 - alpha`` weights the CE term.
        temperature: softmax temperature T > 0 for both teacher and student.
        reduction: ``"batchmean"`` (correct, default) or ``"legacy"`` (the original code's
            1/C scaling, for comparison only).
    """

    def __init__(self, alpha: float = 0.9, temperature: float = 4.0, reduction: str = "batchmean"):
        super().__init__()
        check_kd_params(alpha, temperature, reduction)
        self.alpha = float(alpha)
        self.temperature = float(temperature)
        self.reduction = reduction

    @property
    def needs_labels(self) -> bool:
        return self.alpha < 1.0

    def forward(self, student_logits, teacher_logits, labels=None) -> dict[str, torch.Tensor]:
        return hinton_kd_loss(
            student_logits, teacher_logits, labels, self.alpha, self.temperature, self.reduction
        )

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, temperature={self.temperature}, reduction={self.reduction!r}"


def hint_loss(regressed: torch.Tensor, hint: torch.Tensor) -> torch.Tensor:
    """FitNets hint loss (Romero et al., 2014, "FitNets: Hints for Thin Deep Nets", eq. 3).

    L_HT = mean over batch and elements of (u_h(x) - r(v_g(x)))^2

    ``hint`` is the teacher's hint-layer output u_h(x), ``regressed`` the regressor r applied to
    the student's guided-layer output v_g(x); their shapes must be equal. The paper's
    1/2 ||.||^2 per sample is replaced by the element mean (a constant factor, so the scale no
    longer depends on the layer's size).
    """
    if regressed.shape != hint.shape:
        raise ValueError(
            f"hint loss: regressed student features {tuple(regressed.shape)} and teacher hint "
            f"{tuple(hint.shape)} differ in shape."
        )
    return F.mse_loss(regressed.float(), hint.float())


def activation_matching_loss(
    activations: dict[str, torch.Tensor], targets: dict[str, torch.Tensor]
) -> torch.Tensor:
    """Data-free reconstruction loss (Lopes, Fenu & Starner, 2017, "all layers" statistics).

    L = sum over layers l of mean over batch and units of (a_l(x) - t_l)^2

    ``activations[l]`` and ``targets[l]`` are ``(N, d_l)``; each layer weighs the same whatever
    its width. Each sample's term depends only on that sample, so a batch is N independent
    problems solved at once.
    """
    if set(activations) != set(targets):
        raise ValueError(
            f"activation matching: layers {sorted(activations)} and targets {sorted(targets)} differ."
        )
    terms = [F.mse_loss(activations[k].float(), targets[k].float()) for k in sorted(targets)]
    return torch.stack(terms).sum()
