"""DeiT distillation through a distillation token (Touvron, Cord, Douze, Massa, Sablayrolles &
Jegou, ICML 2021, "Training data-efficient image transformers & distillation through attention").

The student is a vision transformer with a class token and a distillation token, each with its
own linear head (timm's ``VisionTransformerDistilled``: ``head`` and ``head_dist``). With z_cls
and z_dist those heads' logits and z_t the teacher's (facebookresearch/deit ``losses.py``,
``DistillationLoss``)::

    L = (1 - alpha) * CE_ls(z_cls, y) + alpha * L_dist
    hard: L_dist = CE(z_dist, argmax z_t)
    soft: L_dist = T^2 * sum KL(softmax(z_t / T) || softmax(z_dist / T)) / (N * C)

``CE_ls`` is cross-entropy with label smoothing (DeiT's ``--smoothing 0.1``); the soft term is
divided by the number of logits N * C, as the authors do "to have the legacy PyTorch behavior"
(``reduction="legacy"``; ``batchmean`` divides by N). Defaults: DeiT's ``main.py``
(``--distillation-alpha 0.5 --distillation-tau 1.0``) and its README's ``--distillation-type
hard``, the paper's best.

The two heads are read by forward hooks on ``head`` and ``head_dist`` (timm's distilled model
returns their mean unless ``distilled_training`` is set; kdlight leaves the model as it is, so
its logits, the ones evaluated, are that mean: DeiT's inference). The teacher contributes its
logits only, which the teacher store serves.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from kdlight.errors import ConfigError
from kdlight.methods.base import Context, Method, check_range
from kdlight.methods.kd import REDUCTIONS, soft_kl
from kdlight.methods.taps import plain

TYPES = ("hard", "soft")
HEADS = ("head", "head_dist")


def hard_distillation(dist_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """CE of the distillation head against the teacher's decision (DeiT's hard distillation)."""
    return F.cross_entropy(dist_logits.float(), teacher_logits.argmax(dim=1))


class DeiT(Method):
    """DeiT's hard or soft token distillation; see the module docstring.

    Args:
        distillation_type: ``hard`` (teacher argmax, default) or ``soft`` (KL at ``tau``).
        alpha: weight of the distillation term in [0, 1]; the class head's CE gets 1 - alpha.
        tau: temperature of the soft term, > 0.
        label_smoothing: smoothing of the class head's CE in [0, 1) (DeiT: 0.1).
        reduction: of the soft KL: ``legacy`` (sum / (N * C), DeiT's) or ``batchmean``.

    Returns ``{"loss", "loss_ce", "loss_dist"}`` (unweighted terms).
    """

    student_layers = HEADS

    def __init__(
        self,
        distillation_type: str = "hard",
        alpha: float = 0.5,
        tau: float = 1.0,
        label_smoothing: float = 0.1,
        reduction: str = "legacy",
    ) -> None:
        super().__init__()
        if distillation_type not in TYPES:
            raise ConfigError(
                f"distill.distillation_type={distillation_type!r} is invalid; valid values are "
                f"{', '.join(TYPES)}."
            )
        if reduction not in REDUCTIONS:
            raise ConfigError(
                f"distill.reduction={reduction!r} is invalid; valid values are {', '.join(REDUCTIONS)}."
            )
        self.distillation_type = distillation_type
        self.alpha = check_range("alpha", alpha, 0.0, 1.0)
        self.tau = check_range("tau", tau, 0.0, low_open=True)
        self.label_smoothing = check_range("label_smoothing", label_smoothing, 0.0, 0.999)
        self.reduction = reduction
        self.needs_labels = self.alpha < 1.0

    def resolve_layers(self, student: nn.Module, teacher: nn.Module) -> None:
        net = plain(student)
        if not all(isinstance(getattr(net, h, None), nn.Module) for h in HEADS):
            raise ConfigError(
                f"distill=deit needs a student with a distillation token and its head_dist "
                f"classifier but the student {type(net).__name__} has none; use a DeiT student "
                f"such as model@student=deit_cifar_tiny (timm's *_distilled_* models), or "
                f"distill=kd for this one."
            )

    def forward(self, ctx: Context) -> dict[str, torch.Tensor]:
        cls_logits = ctx.student_feats["head"].float()
        dist_logits = ctx.student_feats["head_dist"].float()
        teacher = ctx.teacher_logits.float().detach()
        if self.distillation_type == "hard":
            loss_dist = hard_distillation(dist_logits, teacher)
        else:
            loss_dist = soft_kl(dist_logits, teacher, self.tau, self.reduction)
        if ctx.labels is None:  # unlabeled batch: the distillation term alone
            loss_ce = loss_dist.new_zeros(())
        else:
            loss_ce = F.cross_entropy(cls_logits, ctx.labels, label_smoothing=self.label_smoothing)
        loss = (1.0 - self.alpha) * loss_ce + self.alpha * loss_dist
        return {"loss": loss, "loss_ce": loss_ce, "loss_dist": loss_dist}

    def hparams(self) -> dict[str, Any]:
        return {"alpha": self.alpha, "tau": self.tau, "type": self.distillation_type}

    def extra_repr(self) -> str:
        return (
            f"distillation_type={self.distillation_type!r}, alpha={self.alpha}, tau={self.tau}, "
            f"label_smoothing={self.label_smoothing}, reduction={self.reduction!r}"
        )
