"""Weighted transformed teacher matching (Zheng & Yang, ICLR 2024, "Knowledge Distillation
Based on Transformed Teacher Matching").

TTM drops the temperature on the student's side and power-transforms the teacher's
distribution instead (a temperature T is the power gamma = 1 / T). WTTM weighs each sample by
the power sum U, which is large where the teacher is uncertain:

    p_t = softmax(z_teacher),  p_s = softmax(z_student)
    U_i = sum_c p_t[i, c]^gamma,   q_i = p_t[i]^gamma / U_i
    L = ce_weight * CE(z_student, y) + beta * mean_i U_i * KL(q_i || p_s[i])

The authors' code (zkxufo/TTM, ``distiller_zoo/wttm.py``; ``-b`` weighs it, ``-r`` the CE
term) raises the softmax to the power; here ``gamma * log_softmax`` is normalised by
log-sum-exp, which gives the same values and stays finite where ``p_t ** gamma`` underflows.
``ce_weight = 0`` learns from the teacher alone (no labels needed).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kdlight.methods.base import Context, Method, check_range


def wttm_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, power: float
) -> torch.Tensor:
    """mean_i U_i * KL(q_i || softmax(z_s)_i), q = softmax(z_t)^power / U (see the module)."""
    log_p_s = F.log_softmax(student_logits.float(), dim=1)
    powered = power * F.log_softmax(teacher_logits.float(), dim=1)
    log_u = torch.logsumexp(powered, dim=1, keepdim=True)  # log U_i
    log_q = powered - log_u
    kl = F.kl_div(log_p_s, log_q, reduction="none", log_target=True).sum(dim=1)
    return (log_u.squeeze(1).exp() * kl).mean()


class WTTM(Method):
    """Weighted transformed teacher matching; see the module docstring.

    Args:
        power: the teacher's power transform gamma = 1 / T, > 0 (the code's ``--ttm_l``).
        beta: weight of the WTTM term, >= 0 (the code's ``-b``).
        ce_weight: weight of cross-entropy with the labels, >= 0 (the code's ``-r``).

    Returns ``{"loss", "loss_wttm", "loss_ce"}``; the last two unweighted.
    """

    def __init__(self, power: float = 0.2, beta: float = 4.0, ce_weight: float = 1.0) -> None:
        super().__init__()
        self.power = check_range("power", power, 0.0, low_open=True)
        self.beta = check_range("beta", beta, 0.0)
        self.ce_weight = check_range("ce_weight", ce_weight, 0.0)
        self.needs_labels = self.ce_weight > 0.0

    def forward(self, ctx: Context) -> dict[str, torch.Tensor]:
        term = wttm_loss(ctx.student_logits, ctx.teacher_logits.detach(), self.power)
        loss = self.beta * term
        if ctx.labels is None:
            loss_ce = torch.zeros((), device=loss.device)
        else:
            loss_ce = F.cross_entropy(ctx.student_logits.float(), ctx.labels)
            loss = loss + self.ce_weight * loss_ce
        return {"loss": loss, "loss_wttm": term, "loss_ce": loss_ce}

    def hparams(self) -> dict[str, float]:
        return {"power": self.power, "beta": self.beta, "ce_weight": self.ce_weight}

    def extra_repr(self) -> str:
        return f"power={self.power}, beta={self.beta}, ce_weight={self.ce_weight}"
