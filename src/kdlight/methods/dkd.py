"""Decoupled KD (Zhao, Cui, Song, Qiu & Liang, CVPR 2022, "Decoupled Knowledge Distillation").

With p = softmax(z / T) and y the label, split each distribution into the binary
b = [p_y, 1 - p_y] (target vs. the rest) and p^ = softmax over the non-target logits only:

    TCKD = T^2 * KL(b_teacher || b_student)
    NCKD = T^2 * KL(p^_teacher || p^_student)
    L = ce_weight * CE(z_student, y) + min((epoch + 1) / warmup, 1) * (alpha * TCKD + beta * NCKD)

KL is summed over classes and averaged over the batch. The warm-up follows the authors' code
(mdistiller), which counts epochs from 1 and weighs the first epoch by 1 / warmup; kdlight's
``ctx.epoch`` counts from 0, so it uses ``epoch + 1``: the first epoch gets 1 / warmup and the
full weight is reached in epoch ``warmup - 1`` (0-based). ``warmup = 0`` means no warm-up.

The authors' code removes the target class from NCKD by subtracting 1000 from its scaled
logit; here it is dropped exactly (the softmax runs over the C - 1 other logits), which gives
the same values without depending on the logits' scale. The binary log-probabilities are
computed with log-sum-exp instead of ``log(sum(p))``, so they stay finite where p underflows.

With ``logit_standardization`` (Sun et al., CVPR 2024, "Logit Standardization in Knowledge
Distillation", who apply it to DKD too) both logit vectors are z-scored per sample with
:func:`kdlight.methods.kd.standardize` before the temperature; CE keeps the raw logits.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kdlight.errors import ConfigError
from kdlight.methods.base import Context, Method, check_range
from kdlight.methods.kd import standardize


def _binary_log_probs(z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """log [p_y, 1 - p_y] of softmax(z), shape (B, 2), by log-sum-exp."""
    log_norm = torch.logsumexp(z, dim=1)
    target = F.one_hot(labels, z.shape[1]).bool()
    log_target = z.gather(1, labels[:, None]).squeeze(1) - log_norm
    log_other = torch.logsumexp(z.masked_fill(target, float("-inf")), dim=1) - log_norm
    return torch.stack([log_target, log_other], dim=1)


def _non_target_log_probs(z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """log softmax over the C - 1 non-target logits of each row, shape (B, C - 1)."""
    b, c = z.shape
    keep = ~F.one_hot(labels, c).bool()
    return F.log_softmax(z[keep].view(b, c - 1), dim=1)


def dkd_terms(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    temperature: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(TCKD, NCKD), each T^2 * KL(teacher || student) summed over classes, batch-averaged."""
    t = float(temperature)
    z_s = student_logits.float() / t
    z_t = teacher_logits.float() / t
    n = z_s.shape[0]
    tckd = F.kl_div(
        _binary_log_probs(z_s, labels),
        _binary_log_probs(z_t, labels),
        reduction="sum",
        log_target=True,
    )
    nckd = F.kl_div(
        _non_target_log_probs(z_s, labels),
        _non_target_log_probs(z_t, labels),
        reduction="sum",
        log_target=True,
    )
    return tckd * (t * t) / n, nckd * (t * t) / n


class DKD(Method):
    """Decoupled KD, optionally with logit standardization; see the module docstring.

    Args:
        alpha: weight of TCKD (target vs. non-target), >= 0.
        beta: weight of NCKD (among the non-target classes), >= 0.
        temperature: softmax temperature T > 0 for both networks.
        warmup: epochs over which the DKD weight ramps linearly up to 1 (0: no warm-up).
        ce_weight: weight of the cross-entropy term, >= 0.
        logit_standardization: z-score both logit vectors before T (Sun et al. 2024).

    Returns ``{"loss", "loss_ce", "loss_tckd", "loss_nckd"}``; the last three are unweighted.
    """

    needs_labels = True

    def __init__(
        self,
        alpha: float = 1.0,
        beta: float = 8.0,
        temperature: float = 4.0,
        warmup: int = 20,
        ce_weight: float = 1.0,
        logit_standardization: bool = False,
    ) -> None:
        super().__init__()
        self.alpha = check_range("alpha", alpha, 0.0)
        self.beta = check_range("beta", beta, 0.0)
        self.temperature = check_range("temperature", temperature, 0.0, low_open=True)
        self.warmup = int(check_range("warmup", warmup, 0.0))
        if self.warmup != float(warmup):
            raise ConfigError(
                f"distill.warmup={warmup} is invalid; it must be a whole number >= 0."
            )
        self.ce_weight = check_range("ce_weight", ce_weight, 0.0)
        self.logit_standardization = bool(logit_standardization)

    def warmup_factor(self, epoch: int) -> float:
        """min((epoch + 1) / warmup, 1) for kdlight's 0-based ``epoch``."""
        return 1.0 if self.warmup == 0 else min((epoch + 1) / self.warmup, 1.0)

    def forward(self, ctx: Context) -> dict[str, torch.Tensor]:
        s, t = ctx.student_logits, ctx.teacher_logits.detach()
        if self.logit_standardization:
            s, t = standardize(s), standardize(t)
        tckd, nckd = dkd_terms(s, t, ctx.labels, self.temperature)
        loss_ce = F.cross_entropy(ctx.student_logits.float(), ctx.labels)
        dkd = self.warmup_factor(ctx.epoch) * (self.alpha * tckd + self.beta * nckd)
        loss = self.ce_weight * loss_ce + dkd
        return {"loss": loss, "loss_ce": loss_ce, "loss_tckd": tckd, "loss_nckd": nckd}

    def extra_repr(self) -> str:
        return (
            f"alpha={self.alpha}, beta={self.beta}, temperature={self.temperature}, "
            f"warmup={self.warmup}, ce_weight={self.ce_weight}, "
            f"logit_standardization={self.logit_standardization}"
        )
