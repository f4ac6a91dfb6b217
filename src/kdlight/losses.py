"""Distillation losses for your own training loop: plain functions and ``nn.Module`` forms.

The same code the CLI's methods run (``kdlight.methods``), without Lightning, Hydra or the
teacher store. Every function returns a scalar tensor, differentiable in the student's inputs;
the teacher's arguments are used as given (detach or compute them under ``torch.no_grad()``).
Cross-entropy with the labels is yours to add, as in the example below.

Logit methods (``student_logits`` and ``teacher_logits`` are (N, C)):

- :func:`kd_loss`: Hinton KD, T^2 * KL(p_t || p_s), optionally logit-standardized;
- :func:`dkd_loss`: decoupled KD, alpha * TCKD + beta * NCKD;
- :func:`dist_loss`: DIST, beta * inter-class + gamma * intra-class relation loss;
- CTKD is :func:`kd_loss` with a learned 0-d tensor as ``temperature``.

Feature methods: :class:`FeatureLoss` (``FeatureLoss("at")``, ``"nst"``, ``"sp"``, ``"pkt"``,
``"rkd"``, ``"vid"``, ``"cc"``) on lists of paired student and teacher features.

>>> import torch, torch.nn.functional as F
>>> from kdlight.losses import kd_loss
>>> student_logits = torch.tensor([[2.0, 0.5, -1.0]], requires_grad=True)
>>> teacher_logits = torch.tensor([[3.0, 0.0, -2.0]])
>>> labels = torch.tensor([0])
>>> loss = 0.9 * kd_loss(student_logits, teacher_logits, temperature=4.0) + 0.1 * F.cross_entropy(
...     student_logits, labels
... )
>>> loss.backward()
>>> round(kd_loss(student_logits, teacher_logits, temperature=4.0).item(), 4)
0.3699
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from kdlight.errors import ConfigError
from kdlight.methods.base import Context
from kdlight.methods.dist import dist_terms
from kdlight.methods.dkd import dkd_terms
from kdlight.methods.features import FeatureKD
from kdlight.methods.kd import soft_kl, standardize

__all__ = ["FEATURE_METHODS", "FeatureLoss", "dist_loss", "dkd_loss", "kd_loss"]


def kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    temperature: float | torch.Tensor = 4.0,
    *,
    standardized: bool = False,
    reduction: str = "batchmean",
) -> torch.Tensor:
    """Hinton KD: T^2 * KL(softmax(z_t / T) || softmax(z_s / T)), summed over classes, batch mean.

    Hinton, Vinyals & Dean (2015), "Distilling the Knowledge in a Neural Network".

    Args:
        student_logits, teacher_logits: (N, C) logits.
        temperature: T > 0, a float or a 0-d tensor (a learned T, as CTKD trains).
        standardized: z-score each logit vector first, z -> (z - mean z) / std z (Sun et al.,
            CVPR 2024, "Logit Standardization in Knowledge Distillation"); T is then their base
            temperature.
        reduction: ``"batchmean"`` (the true per-sample KL) or ``"legacy"`` (the original KD
            project's 1/C-scaled average over batch x classes, for comparison studies only).

    >>> z = torch.tensor([[1.0, 2.0, 3.0]])
    >>> kd_loss(z, z).item()  # a student that matches its teacher
    0.0
    """
    if standardized:
        student_logits, teacher_logits = standardize(student_logits), standardize(teacher_logits)
    return soft_kl(student_logits, teacher_logits, temperature, reduction)


def dkd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    alpha: float = 1.0,
    beta: float = 8.0,
    temperature: float = 4.0,
) -> torch.Tensor:
    """Decoupled KD: alpha * TCKD + beta * NCKD (Zhao et al., CVPR 2022, "Decoupled Knowledge Distillation").

    TCKD = T^2 KL(b_t || b_s) over the binary (target, rest) probabilities, NCKD = T^2
    KL(p^_t || p^_s) over the softmax of the non-target logits; both batch means. The
    defaults are the paper's CIFAR-100 ones; the CLI's warm-up (``distill.warmup``) scales
    this by min(epoch / warmup, 1), which your loop may do itself.

    >>> z = torch.tensor([[4.0, 1.0, 0.0], [0.0, 3.0, 1.0]])
    >>> dkd_loss(z, z, torch.tensor([0, 1])).item()
    0.0
    """
    tckd, nckd = dkd_terms(student_logits, teacher_logits, labels, temperature)
    return alpha * tckd + beta * nckd


def dist_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    *,
    beta: float = 2.0,
    gamma: float = 2.0,
    temperature: float = 4.0,
) -> torch.Tensor:
    """DIST: beta * T^2 (1 - mean_i rho(Y_s[i], Y_t[i])) + gamma * T^2 (1 - mean_j rho(Y_s[:, j], Y_t[:, j])).

    Huang et al., NeurIPS 2022, "Knowledge Distillation from A Stronger Teacher"; Y =
    softmax(Z / T), rho the Pearson correlation (inter-class: per sample over classes;
    intra-class: per class over the batch, so the batch needs 2 samples or more).
    """
    inter, intra = dist_terms(student_logits, teacher_logits, temperature)
    return beta * inter + gamma * intra


def _feature_methods() -> dict[str, type[FeatureKD]]:
    from kdlight.methods.at import AT
    from kdlight.methods.cc import CC
    from kdlight.methods.nst import NST
    from kdlight.methods.pkt import PKT
    from kdlight.methods.rkd import RKD
    from kdlight.methods.sp import SP
    from kdlight.methods.vid import VID

    return {"at": AT, "cc": CC, "nst": NST, "pkt": PKT, "rkd": RKD, "sp": SP, "vid": VID}


#: the methods :class:`FeatureLoss` computes: their term needs only the paired features
FEATURE_METHODS = ("at", "cc", "nst", "pkt", "rkd", "sp", "vid")


class FeatureLoss(nn.Module):
    """A feature method's term (unweighted) on lists of paired student and teacher features.

    ``FeatureLoss(name, **hparams)`` with ``name`` in :data:`FEATURE_METHODS` and the method's
    own hyper-parameters (e.g. ``p`` for AT, ``distance_weight`` for RKD; its weight ``beta``,
    cross-entropy and KD are yours to add). Call it with ``student_feats`` and
    ``teacher_feats``, equal-length lists of tensors taken from layers of your choice (e.g.
    with forward hooks). Methods with layers of their own (VID's regressors, CC's embeddings)
    create them on the first call, from those features' shapes: make one call on an example
    batch before building the optimizer, then optimise this module's parameters with the
    student's.

    >>> loss_fn = FeatureLoss("at")
    >>> s, t = [torch.randn(2, 4, 8, 8)], [torch.randn(2, 16, 8, 8)]
    >>> loss_fn(s, t).shape
    torch.Size([])
    """

    def __init__(self, name: str, **hparams: Any) -> None:
        super().__init__()
        methods = _feature_methods()
        if name not in methods:
            raise ConfigError(
                f"FeatureLoss({name!r}) is not a feature method kdlight can compute from features "
                f"alone; valid names are {', '.join(FEATURE_METHODS)}."
            )
        self.name = name
        self.hparams = dict(hparams)
        self.method: FeatureKD | None = None
        self._cls = methods[name]

    def _built(self, student: Sequence[torch.Tensor], teacher: Sequence[torch.Tensor]) -> FeatureKD:
        if len(student) != len(teacher) or not student:
            raise ConfigError(
                f"FeatureLoss({self.name!r}) needs equal-length, non-empty lists of student and "
                f"teacher features, got {len(student)} and {len(teacher)}."
            )
        names = [str(i) for i in range(len(student))]
        if self.method is None or list(self.method.student_layers) != names:
            method = self._cls(
                **{**self.hparams, "beta": 1.0, "gamma": 0.0, "alpha": 0.0},
                student_layers=names,
                teacher_layers=names,
            )
            s, t = dict(zip(names, student, strict=True)), dict(zip(names, teacher, strict=True))
            method.build(s, t, num_classes=0)
            self.method = method.to(student[0].device)
        return self.method

    def forward(
        self, student_feats: Sequence[torch.Tensor], teacher_feats: Sequence[torch.Tensor]
    ) -> torch.Tensor:
        method = self._built(student_feats, teacher_feats)
        student = [f.float() for f in student_feats]
        teacher = [f.float() for f in teacher_feats]
        ctx = Context(None, None, None, torch.arange(student[0].shape[0]))
        return method.feature_loss(student, teacher, ctx)

    def extra_repr(self) -> str:
        return f"{self.name!r}, " + ", ".join(f"{k}={v!r}" for k, v in self.hparams.items())
