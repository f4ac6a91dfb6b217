"""Weighted soft labels (Zhou, Song, Chen, Zhou, Wang, Yuan & Zhang, ICLR 2021, "Rethinking
Soft Labels for Knowledge Distillation: A Bias-Variance Tradeoff Perspective").

Each sample's soft-label term is weighted by how much worse the student does on it than the
teacher (cross-entropies with the label at T = 1, no gradient through the weight):

    ce_s[i] = -log softmax(z_student)[i, y_i],   ce_t[i] = -log softmax(z_teacher)[i, y_i]
    w_i = 1 - exp(-max(ce_s[i] / (ce_t[i] + 1e-7), 0))
    soft_i = -sum_c softmax(z_t / T)[i, c] * log softmax(z_s / T)[i, c]
    L = ce_weight * CE(z_student, y) + alpha * T^2 * mean_i w_i * soft_i

as the authors' code (bellymonster/Weighted-Soft-Label-Distillation,
``knowledge_distiller.py``) computes it; its soft term is a cross-entropy (it includes the
teacher's entropy, a constant for the student). Its ImageNet settings are T = 2, alpha = 2.5;
CIFAR-100 uses T = 4, alpha = 2.25 (the paper's CIFAR setting, also yzd-v/cls_KD's
``WSLDLoss`` config).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kdlight.methods.base import Context, Method, check_range


def wsl_weights(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor
) -> torch.Tensor:
    """w_i = 1 - exp(-max(ce_s / (ce_t + 1e-7), 0)), shape (B,), without gradient."""
    with torch.no_grad():
        y = labels[:, None]
        ce_s = -F.log_softmax(student_logits.detach().float(), dim=1).gather(1, y).squeeze(1)
        ce_t = -F.log_softmax(teacher_logits.detach().float(), dim=1).gather(1, y).squeeze(1)
        return 1.0 - torch.exp(-(ce_s / (ce_t + 1e-7)).clamp(min=0.0))


def wsld_term(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    temperature: float,
) -> torch.Tensor:
    """T^2 * mean_i w_i * soft_i (the module docstring's soft term, before alpha)."""
    t = float(temperature)
    log_s = F.log_softmax(student_logits.float() / t, dim=1)
    p_t = F.softmax(teacher_logits.float() / t, dim=1)
    soft = -(p_t * log_s).sum(dim=1)
    w = wsl_weights(student_logits, teacher_logits, labels)
    return t * t * (w * soft).mean()


class WSLD(Method):
    """Weighted soft label distillation; see the module docstring.

    Args:
        alpha: weight of the weighted soft-label term, >= 0.
        temperature: softmax temperature T > 0 of the soft labels.
        ce_weight: weight of cross-entropy with the labels, >= 0.

    Returns ``{"loss", "loss_wsld", "loss_ce"}``; the last two unweighted.
    """

    needs_labels = True  # the weights compare the two networks' losses on the label

    def __init__(self, alpha: float = 2.25, temperature: float = 4.0, ce_weight: float = 1.0):
        super().__init__()
        self.alpha = check_range("alpha", alpha, 0.0)
        self.temperature = check_range("temperature", temperature, 0.0, low_open=True)
        self.ce_weight = check_range("ce_weight", ce_weight, 0.0)

    def forward(self, ctx: Context) -> dict[str, torch.Tensor]:
        t_logits = ctx.teacher_logits.detach()
        term = wsld_term(ctx.student_logits, t_logits, ctx.labels, self.temperature)
        loss_ce = F.cross_entropy(ctx.student_logits.float(), ctx.labels)
        loss = self.ce_weight * loss_ce + self.alpha * term
        return {"loss": loss, "loss_wsld": term, "loss_ce": loss_ce}

    def hparams(self) -> dict[str, float]:
        return {"alpha": self.alpha, "temperature": self.temperature}

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, temperature={self.temperature}, ce_weight={self.ce_weight}"
