"""USKD, the teacher-free form of "From Knowledge Distillation to Self-Knowledge Distillation: A
Unified Approach with Normalized Loss and Customized Soft Labels" (Yang, Zeng, Li, Zhang, Yuan &
Li, ICCV 2023), as in the authors' ``mmcls/models/dis_losses/uskd.py`` and the self-KD branch of
``mmcls/models/classifiers/distiller.py`` (yzd-v/cls_KD@1e5d48f36957ee460d39d7ebc592c6cc7f8f3d66).

No teacher: with the student's logits z, labels y, the softmax s = softmax(z) and a weak
linear head ``fc`` on the globally pooled output f of an intermediate stage (the stage before
the last; the authors' ``neck(fea_s[-2])``), w = fc(f):

- target: p_t = s_y^2 + 1 - mean_batch(s_y^2) (no gradient);
  L_t = -mean_i p_t,i * log s_y,i;
- weak supervision: L_weak = -mu * mean_i sum_k q_k log softmax(w)_k with
  q = 0.9 * onehot(y) + 0.1 / C;
- soft non-target labels: rank the classes by r = softmax(w) / (1 - softmax(w)_y) +
  log s / (1 - log s_y) (the authors' code, which reuses the log-softmax there), give the class
  at rank j (descending, from 1) the Zipf weight 1/j, drop the target class and normalise:
  z^nt; L_non = -mean_i sum_{k != y} z^nt_k log softmax(z_{k != y})_k;

    L = CE(z, y) + alpha * L_t + beta * L_non + L_weak

(CE is the student head's own loss, which the authors' distiller adds beside ``loss_uskd``).
Defaults are the authors' CIFAR-100 config (``res18_sd_cifar.py``: alpha 0.1, beta 0.1, mu 0.1);
their ImageNet configs use alpha 1.0, beta 0.1, mu 0.005. Only hard labels (the authors' mixup
branch with soft label rows is not reproduced).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from kdlight.errors import ConfigError
from kdlight.methods.base import Context, Method, Plan, check_range


def pooled(x: torch.Tensor) -> torch.Tensor:
    """Global average pooling of a (N, C, ...) map to (N, C); (N, D) features as they are."""
    return x.flatten(2).mean(dim=2) if x.dim() > 2 else x


def uskd_terms(
    logits: torch.Tensor, weak_logits: torch.Tensor, labels: torch.Tensor, mu: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(L_t, L_non, L_weak)`` of the module docstring (the authors' ``USKDLoss.forward``)."""
    n, c = logits.shape
    label = labels.view(-1, 1)
    s_t = F.softmax(logits, dim=1).gather(1, label)
    p_t = (s_t**2 + 1.0 - (s_t**2).mean(0, keepdim=True)).detach()
    log_s = F.log_softmax(logits, dim=1)
    log_s_t = log_s.gather(1, label)
    loss_t = -(p_t * log_s_t).sum(dim=1).mean()

    target = torch.zeros_like(logits).scatter_(1, label, 0.9) + 0.1 / c
    log_w = F.log_softmax(weak_logits, dim=1)
    loss_weak = -(mu * target * log_w).sum(dim=1).mean()

    with torch.no_grad():
        w = log_w.exp()
        w_t = w.gather(1, label)
        rank = w / (1 - w_t + 1e-6) + log_s / (1 - log_s_t + 1e-6)
        order = torch.sort(rank, dim=-1, descending=True)[1]
        position = torch.argsort(order, dim=1)  # each class's place in the ranking, from 0
        zipf = 1.0 / (position + 1).to(logits.dtype)
        mask = torch.ones_like(logits).scatter_(1, label, 0).bool()
        nz = zipf[mask].reshape(n, -1)
        nz = nz / nz.sum(dim=1, keepdim=True)
    log_ns = F.log_softmax(logits[mask].reshape(n, -1), dim=1)
    loss_non = -(nz * log_ns).sum(dim=1).mean()
    return loss_t, loss_non, loss_weak


class USKD(Method):
    """USKD; see the module docstring.

    Args:
        alpha: weight of the normalized target term L_t, >= 0.
        beta: weight of the soft non-target term L_non, >= 0.
        mu: weight inside the weak-supervision term L_weak, >= 0.
        ce_weight: weight of the student's cross-entropy, >= 0 (1 in the authors' code).
        layer: the intermediate layer the weak head reads (``named_modules()`` name), or
            ``auto``: the student's stage before its last.

    Returns ``{"loss", "loss_ce", "loss_t", "loss_non", "loss_weak"}`` (``loss_weak`` includes mu).
    """

    needs_teacher = False
    uses_store = False

    def __init__(
        self,
        alpha: float = 0.1,
        beta: float = 0.1,
        mu: float = 0.1,
        ce_weight: float = 1.0,
        layer: str = "auto",
    ) -> None:
        super().__init__()
        self.alpha = check_range("alpha", alpha, 0.0)
        self.beta = check_range("beta", beta, 0.0)
        self.mu = check_range("mu", mu, 0.0)
        self.ce_weight = check_range("ce_weight", ce_weight, 0.0)
        if not isinstance(layer, str) or not layer:
            raise ConfigError(f"distill.layer={layer!r} is invalid; give auto or a module name.")
        self.layer = layer
        self.fc: nn.Linear | None = None

    def resolve_layers(self, student: nn.Module, teacher: nn.Module | None) -> None:
        if self.layer == "auto":
            from kdlight.methods.features import stage_layers

            stages = stage_layers(student, "student")
            self.layer = stages[max(len(stages) - 2, 0)]
        self.student_layers = (self.layer,)

    def build(self, student_feats, teacher_feats, num_classes: int) -> None:
        if num_classes < 2:
            raise ConfigError("distill=uskd needs at least 2 classes.")
        channels = pooled(student_feats[self.layer]).shape[1]
        self.fc = nn.Linear(channels, num_classes)

    def plan(self, epoch: int) -> Plan:
        return Plan(student_layers=(self.layer,), teacher_logits=False)

    def forward(self, ctx: Context) -> dict[str, torch.Tensor]:
        z = ctx.student_logits.float()
        weak = self.fc(pooled(ctx.student_feats[self.layer]).float())
        loss_t, loss_non, loss_weak = uskd_terms(z, weak, ctx.labels, self.mu)
        loss_ce = F.cross_entropy(z, ctx.labels)
        loss = self.ce_weight * loss_ce + self.alpha * loss_t + self.beta * loss_non + loss_weak
        return {
            "loss": loss,
            "loss_ce": loss_ce,
            "loss_t": loss_t,
            "loss_non": loss_non,
            "loss_weak": loss_weak,
        }

    def hparams(self) -> dict[str, Any]:
        return {"layer": self.layer}

    def extra_repr(self) -> str:
        return (
            f"alpha={self.alpha}, beta={self.beta}, mu={self.mu}, ce_weight={self.ce_weight}, "
            f"layer={self.layer!r}"
        )
