"""Normalized KD (Yang, Zeng, Li, Zhang, Yuan & Li, ICCV 2023, "From Knowledge Distillation to
Self-Knowledge Distillation: A Unified Approach with Normalized Loss and Customized Soft Labels").

The KD loss is split into the target term and the non-target term, and the non-target
distributions are renormalised over the C - 1 other classes before matching:

    p = softmax(z) (T = 1),   y the label
    L_target = - mean_i p_t[i, y_i] * log p_s[i, y_i]
    ^p^T = softmax over the C - 1 non-target logits / T
    L_non = - gamma * T^2 * mean_i sum_{c != y_i} ^p_t^T[i, c] * log ^p_s^T[i, c]
    L = ce_weight * CE(z_student, y) + nkd_weight * (L_target + L_non)

as the authors' code (yzd-v/cls_KD, ``mmcls/models/dis_losses/nkd.py``) computes it: both
terms are cross-entropies (they include the teacher's entropy, a constant for the student).
Its distiller adds the term to the student's CE with weight 1 (``ce_weight``,
``nkd_weight`` = 1). The non-target classes are dropped exactly (as the code's mask does).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kdlight.methods.base import Context, Method, check_range


def _drop_target(z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The (B, C - 1) logits of each row without its label's column."""
    b, c = z.shape
    keep = ~F.one_hot(labels, c).bool()
    return z[keep].view(b, c - 1)


def nkd_terms(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    temperature: float,
    gamma: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(L_target, L_non) of the module docstring (L_non includes gamma * T^2)."""
    z_s, z_t = student_logits.float(), teacher_logits.float()
    log_s_y = F.log_softmax(z_s, dim=1).gather(1, labels[:, None])
    t_y = F.softmax(z_t, dim=1).gather(1, labels[:, None])
    target = -(t_y * log_s_y).mean()
    t = float(temperature)
    log_s_non = F.log_softmax(_drop_target(z_s, labels) / t, dim=1)
    p_t_non = F.softmax(_drop_target(z_t, labels) / t, dim=1)
    non = -gamma * t * t * (p_t_non * log_s_non).sum(dim=1).mean()
    return target, non


class NKD(Method):
    """Normalized KD; see the module docstring.

    Args:
        temperature: T > 0 of the non-target term (the code's ``temp``).
        gamma: weight of the non-target term, >= 0 (the code's ``gamma``).
        nkd_weight: weight of the whole NKD loss, >= 0.
        ce_weight: weight of cross-entropy with the labels, >= 0.

    Returns ``{"loss", "loss_nkd", "loss_nkd_target", "loss_nkd_non", "loss_ce"}``
    (``loss_nkd`` = target + non-target, unweighted).
    """

    needs_labels = True  # the target term reads the label

    def __init__(
        self,
        temperature: float = 3.0,
        gamma: float = 3.5,
        nkd_weight: float = 1.0,
        ce_weight: float = 1.0,
    ) -> None:
        super().__init__()
        self.temperature = check_range("temperature", temperature, 0.0, low_open=True)
        self.gamma = check_range("gamma", gamma, 0.0)
        self.nkd_weight = check_range("nkd_weight", nkd_weight, 0.0)
        self.ce_weight = check_range("ce_weight", ce_weight, 0.0)

    def forward(self, ctx: Context) -> dict[str, torch.Tensor]:
        target, non = nkd_terms(
            ctx.student_logits,
            ctx.teacher_logits.detach(),
            ctx.labels,
            self.temperature,
            self.gamma,
        )
        loss_ce = F.cross_entropy(ctx.student_logits.float(), ctx.labels)
        nkd = target + non
        loss = self.ce_weight * loss_ce + self.nkd_weight * nkd
        return {
            "loss": loss,
            "loss_nkd": nkd,
            "loss_nkd_target": target,
            "loss_nkd_non": non,
            "loss_ce": loss_ce,
        }

    def hparams(self) -> dict[str, float]:
        return {"temperature": self.temperature, "gamma": self.gamma}

    def extra_repr(self) -> str:
        return (
            f"temperature={self.temperature}, gamma={self.gamma}, "
            f"nkd_weight={self.nkd_weight}, ce_weight={self.ce_weight}"
        )
