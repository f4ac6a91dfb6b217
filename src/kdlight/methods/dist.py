"""DIST (Huang, You, Wang, Qian & Xu, NeurIPS 2022, "Knowledge Distillation from A Stronger Teacher").

With Y = softmax(Z / T) the (B, C) probability matrices and rho the Pearson correlation

    rho(u, v) = sum((u - mean u) * (v - mean v)) / (||u - mean u|| * ||v - mean v|| + eps)
    inter = T^2 * (1 - mean_i rho(Y_s[i, :], Y_t[i, :]))    (each sample's class distribution)
    intra = T^2 * (1 - mean_c rho(Y_s[:, c], Y_t[:, c]))    (each class across the batch)
    L = ce_weight * CE(z_student, y) + beta * inter + gamma * intra

``eps = 1e-8`` as in the authors' code (hunto/image_classification_sota,
``lib/models/losses/dist_kd.py``). Their CIFAR-100 recipe (``dist_cifar.yaml``) uses
``DIST(beta=1, gamma=1, tau=4)`` with ``kd_loss_weight: 2`` and ``ori_loss_weight: 1``, i.e.
beta = gamma = 2, T = 4, ce_weight = 1: the defaults here. (ImageNet: beta = gamma = 1, T = 1.)
The intra-class term correlates over the batch, so it needs batches of more than one sample.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kdlight.methods.base import Context, Method, check_range


def pearson_rows(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Pearson correlation of each row of ``a`` with the same row of ``b``, shape (rows,)."""
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    return (a * b).sum(dim=1) / (a.norm(dim=1) * b.norm(dim=1) + eps)


def dist_terms(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(inter, intra): T^2 * (1 - mean Pearson) over samples, and over classes."""
    t = float(temperature)
    y_s = F.softmax(student_logits.float() / t, dim=1)
    y_t = F.softmax(teacher_logits.float() / t, dim=1)
    inter = 1.0 - pearson_rows(y_s, y_t).mean()
    intra = 1.0 - pearson_rows(y_s.t(), y_t.t()).mean()
    return inter * (t * t), intra * (t * t)


class DIST(Method):
    """DIST: match the teacher's inter- and intra-class relations; see the module docstring.

    Args:
        beta: weight of the inter-class relation term, >= 0.
        gamma: weight of the intra-class relation term, >= 0.
        temperature: softmax temperature T > 0 (the paper's tau).
        ce_weight: weight of the cross-entropy term, >= 0 (0: learns from the teacher alone).

    Returns ``{"loss", "loss_ce", "loss_inter", "loss_intra"}``; the last three are unweighted.
    """

    def __init__(
        self,
        beta: float = 2.0,
        gamma: float = 2.0,
        temperature: float = 4.0,
        ce_weight: float = 1.0,
    ) -> None:
        super().__init__()
        self.beta = check_range("beta", beta, 0.0)
        self.gamma = check_range("gamma", gamma, 0.0)
        self.temperature = check_range("temperature", temperature, 0.0, low_open=True)
        self.ce_weight = check_range("ce_weight", ce_weight, 0.0)
        self.needs_labels = self.ce_weight > 0.0

    def forward(self, ctx: Context) -> dict[str, torch.Tensor]:
        inter, intra = dist_terms(ctx.student_logits, ctx.teacher_logits.detach(), self.temperature)
        loss = self.beta * inter + self.gamma * intra
        if ctx.labels is None:
            loss_ce = torch.zeros((), device=loss.device)
        else:
            loss_ce = F.cross_entropy(ctx.student_logits.float(), ctx.labels)
            loss = loss + self.ce_weight * loss_ce
        return {"loss": loss, "loss_ce": loss_ce, "loss_inter": inter, "loss_intra": intra}

    def extra_repr(self) -> str:
        return (
            f"beta={self.beta}, gamma={self.gamma}, temperature={self.temperature}, "
            f"ce_weight={self.ce_weight}"
        )
