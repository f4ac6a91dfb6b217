"""Curriculum Temperature KD (Li et al., AAAI 2023, "Curriculum Temperature for Knowledge Distillation").

Hinton KD whose temperature is one learned global parameter theta, trained *adversarially*:
it reaches T through a gradient reversal layer GRL_lambda (identity forward, gradient times
-lambda backward), so the optimizer moves T to *increase* the KD loss, while the student
minimizes it. lambda rises over the first ``decay_epochs`` epochs (easy to hard):

    T = t_start + t_range * sigmoid(GRL_lambda(theta))                 (T in (t_start, t_start + t_range))
    lambda(e) = lambda_min + (lambda_max - lambda_min) * (1 - cos(pi * min(e + 1, E) / E)) / 2
    L = alpha * T^2 * KL(q_teacher^T || q_student^T) + (1 - alpha) * CE(z_student, y)

with e = ``ctx.epoch`` (0-based) and E = ``decay_epochs``. The authors' code
(zhengli97/CTKD, ``train_student.py``, ``models/temp_global.py``) counts epochs from 1, hence
``e + 1``: the first epoch already has a small lambda (0.024 for E = 10), full strength from
epoch E - 1 (0-based) on. Their script passes ``--decay_max 0 --decay_min -1`` as the GRL's
signed gradient multiplier (0 -> -1); here lambda is the reversal strength (0 -> 1). Their
``--t_start 1 --t_end 20`` bound T to (1, 21) (``t_end`` is the range), theta starts at 1
(T = 1 + 20 * sigmoid(1) ~ 15.6 at the start), and ``-r 0.1 -a 0.9`` weight CE and KD, i.e.
``alpha = 0.9`` here (alpha weights the soft term, as in :class:`kdlight.methods.kd.KD`).
theta is a parameter of this method: it is in the optimizer (with the optimizer's weight
decay, as in the authors' code) and in checkpoints.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from kdlight.errors import ConfigError
from kdlight.methods.base import Context, Method, check_range
from kdlight.methods.kd import soft_kl


class GradientReversal(torch.autograd.Function):
    """Identity forward; the backward multiplies the gradient by ``-lambda`` (Ganin & Lempitsky 2015)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, lambda_: float) -> torch.Tensor:
        ctx.lambda_ = float(lambda_)
        return x.clone()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return -ctx.lambda_ * grad, None


class CTKD(Method):
    """Hinton KD with a learned global temperature trained through gradient reversal.

    Args:
        alpha: weight of the soft (teacher) term, in [0, 1]; ``1 - alpha`` weights the CE term.
        t_start: lower bound of the temperature, > 0.
        t_range: width of the temperature's range, > 0 (T in (t_start, t_start + t_range)).
        theta_init: initial value of the raw parameter theta (before the sigmoid).
        lambda_min / lambda_max: reversal strength at the start / after ``decay_epochs``,
            0 <= lambda_min <= lambda_max.
        decay_epochs: epochs of the cosine curriculum, a whole number >= 1.

    Returns ``{"loss", "loss_kd", "loss_ce", "temperature", "lambda"}``; ``loss_kd`` and
    ``loss_ce`` are unweighted; ``temperature`` (detached) and ``lambda`` are for the logs.
    """

    def __init__(
        self,
        alpha: float = 0.9,
        t_start: float = 1.0,
        t_range: float = 20.0,
        theta_init: float = 1.0,
        lambda_min: float = 0.0,
        lambda_max: float = 1.0,
        decay_epochs: int = 10,
    ) -> None:
        super().__init__()
        self.alpha = check_range("alpha", alpha, 0.0, 1.0)
        self.t_start = check_range("t_start", t_start, 0.0, low_open=True)
        self.t_range = check_range("t_range", t_range, 0.0, low_open=True)
        self.lambda_min = check_range("lambda_min", lambda_min, 0.0)
        self.lambda_max = check_range("lambda_max", lambda_max, self.lambda_min)
        self.decay_epochs = int(check_range("decay_epochs", decay_epochs, 1.0))
        if self.decay_epochs != float(decay_epochs):
            raise ConfigError(
                f"distill.decay_epochs={decay_epochs} is invalid; it must be a whole number >= 1."
            )
        self.theta = nn.Parameter(torch.tensor(check_range("theta_init", theta_init)))
        self.needs_labels = self.alpha < 1.0

    def grl_lambda(self, epoch: int) -> float:
        """The reversal strength for kdlight's 0-based ``epoch`` (cosine, rising)."""
        e = min(epoch + 1, self.decay_epochs)
        ramp = (1.0 - math.cos(math.pi * e / self.decay_epochs)) / 2.0
        return self.lambda_min + (self.lambda_max - self.lambda_min) * ramp

    def temperature(self, lambda_: float) -> torch.Tensor:
        """T = t_start + t_range * sigmoid(GRL_lambda(theta)), a 0-d tensor."""
        return self.t_start + self.t_range * torch.sigmoid(
            GradientReversal.apply(self.theta, lambda_)
        )

    def forward(self, ctx: Context) -> dict[str, torch.Tensor]:
        lambda_ = self.grl_lambda(ctx.epoch)
        t = self.temperature(lambda_)
        loss_kd = soft_kl(ctx.student_logits, ctx.teacher_logits.detach(), t)
        logs = {"temperature": t.detach(), "lambda": torch.tensor(lambda_, device=t.device)}
        if ctx.labels is None:
            loss_ce = torch.zeros((), device=loss_kd.device)
            return {"loss": loss_kd, "loss_kd": loss_kd, "loss_ce": loss_ce, **logs}
        loss_ce = F.cross_entropy(ctx.student_logits.float(), ctx.labels)
        loss = self.alpha * loss_kd + (1.0 - self.alpha) * loss_ce
        return {"loss": loss, "loss_kd": loss_kd, "loss_ce": loss_ce, **logs}

    def extra_repr(self) -> str:
        return (
            f"alpha={self.alpha}, t_start={self.t_start}, t_range={self.t_range}, "
            f"lambda_min={self.lambda_min}, lambda_max={self.lambda_max}, "
            f"decay_epochs={self.decay_epochs}"
        )
