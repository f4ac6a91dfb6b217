"""DOT, the Distillation-Oriented Trainer (Zhao, Song, Qiu, ICCV 2023, "DOT: A
Distillation-Oriented Trainer"), as in mdistiller's ``mdistiller/engine/dot.py`` and the ``DOT``
trainer of ``mdistiller/engine/trainer.py``
(megvii-research/mdistiller@a08d46f10d6102bd6e3f258ca5ac880b020ea259).

An optimizer-side method on top of KD's loss terms (:class:`kdlight.methods.kd.KD`): the task
loss ``ce_weight * CE`` and the distillation loss ``kd_weight * KD`` get separate SGD momentum
buffers, the task one with momentum ``m - delta`` and the distillation one with ``m + delta``
(``m``: ``module.optimizer.momentum``). Per parameter, with g_task, g_kd their gradients and
weight decay wd added to the task gradient (to the distillation gradient of a parameter only it
reaches, from its second step on):

    b_task <- (m - delta) b_task + g_task      (m instead of m - delta if g_kd is absent)
    p <- p - lr * b_task
    b_kd <- (m + delta) b_kd + g_kd            (m if g_task is absent)
    p <- p - lr * b_kd

each buffer starting as its first gradient. :class:`DOTOptimizer` implements this step; the
engine hands it the distillation gradient (:meth:`Method.separate_gradients`) and
back-propagates the task loss as usual, so ``module.optimizer``'s lr, weight decay and
dampening, the scheduler, gradient clipping (of the task gradient) and mixed precision apply.
``module.optimizer`` must be ``torch.optim.SGD`` without Nesterov momentum.
"""

from __future__ import annotations

from typing import Any

import torch

from kdlight.errors import ConfigError
from kdlight.methods.base import check_range
from kdlight.methods.kd import DEFAULT_TEMPERATURE, KD


class DOTOptimizer(torch.optim.Optimizer):
    """SGD with separate momentum buffers for the task and the distillation gradients.

    ``p.grad`` holds the task gradient at :meth:`step`; the distillation gradient arrives before
    it through :meth:`add_distill_gradients` (summed over accumulated batches, unscaled here).
    A step whose distillation gradient is not finite is skipped (as a mixed-precision scaler
    skips one whose task gradient is not).
    """

    def __init__(
        self,
        params,
        lr: float,
        momentum: float = 0.9,
        delta: float = 0.075,
        weight_decay: float = 0.0,
        dampening: float = 0.0,
    ) -> None:
        defaults = dict(
            lr=lr, momentum=momentum, delta=delta, weight_decay=weight_decay, dampening=dampening
        )
        super().__init__(params, defaults)
        self._distill: dict[int, torch.Tensor] = {}

    def add_distill_gradients(self, params, grads, scale: float = 1.0) -> None:
        """Add ``grads`` (the distillation loss's, times ``scale``) to the next step's."""
        for p, g in zip(params, grads, strict=True):
            if g is None:
                continue
            g = g.detach() / scale if scale != 1.0 else g.detach()
            prev = self._distill.get(id(p))
            self._distill[id(p)] = g if prev is None else prev + g

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        distill, self._distill = self._distill, {}
        if any(not bool(torch.isfinite(g).all()) for g in distill.values()):
            return loss
        for group in self.param_groups:
            lr, wd, damp = group["lr"], group["weight_decay"], group["dampening"]
            m_task = group["momentum"] - group["delta"]
            m_kd = group["momentum"] + group["delta"]
            mid = (m_task + m_kd) / 2.0
            params = group["params"]
            for p in params:  # the task gradient
                if p.grad is None:
                    continue
                d_p = p.grad if wd == 0 else p.grad.add(p, alpha=wd)
                if m_task != 0:
                    state = self.state[p]
                    buf = state.get("momentum_buffer")
                    if buf is None:
                        buf = state["momentum_buffer"] = torch.clone(d_p).detach()
                    else:
                        buf.mul_(m_task if id(p) in distill else mid).add_(d_p, alpha=1 - damp)
                    d_p = buf
                p.add_(d_p, alpha=-lr)
            for p in params:  # the distillation gradient
                d_p = distill.get(id(p))
                if d_p is None:
                    continue
                state = self.state[p]
                buf = state.get("momentum_kd_buffer")
                if buf is None:
                    buf = state["momentum_kd_buffer"] = torch.clone(d_p).detach()
                elif p.grad is not None:
                    buf.mul_(m_kd).add_(d_p, alpha=1 - damp)
                else:
                    if wd != 0:
                        d_p = d_p.add(p, alpha=wd)
                    buf.mul_(mid).add_(d_p, alpha=1 - damp)
                p.add_(buf, alpha=-lr)
        return loss


def sgd_settings(factory) -> dict[str, Any]:
    """``module.optimizer``'s SGD settings; ConfigError naming any other optimizer or Nesterov."""
    func = getattr(factory, "func", factory)
    keywords = dict(getattr(factory, "keywords", {}) or {})
    if func is not torch.optim.SGD:
        name = f"{getattr(func, '__module__', '')}.{getattr(func, '__qualname__', func)}"
        raise ConfigError(
            f"distill=dot updates with its own two-momentum SGD, so module.optimizer must be "
            f"torch.optim.SGD; module.optimizer._target_={name} is not supported (use module=sgd "
            f"or another SGD module config)."
        )
    if keywords.get("nesterov"):
        raise ConfigError(
            "distill=dot uses plain momentum; module.optimizer.nesterov=true is not supported."
        )
    if "lr" not in keywords:
        raise ConfigError("distill=dot needs module.optimizer.lr.")
    return {
        "lr": float(keywords["lr"]),
        "momentum": float(keywords.get("momentum", 0.0)),
        "weight_decay": float(keywords.get("weight_decay", 0.0)),
        "dampening": float(keywords.get("dampening", 0.0)),
    }


class DOT(KD):
    """KD's loss terms trained by :class:`DOTOptimizer`; see the module docstring.

    Args:
        delta: the momentum split, >= 0 (task momentum m - delta, distillation m + delta;
            mdistiller's ``SOLVER.DOT.DELTA``, 0.075).
        The rest: :class:`~kdlight.methods.kd.KD`'s.
    """

    def __init__(
        self,
        delta: float = 0.075,
        alpha: float | None = None,
        temperature: float = DEFAULT_TEMPERATURE,
        reduction: str = "batchmean",
        logit_standardization: bool = False,
        ce_weight: float | None = None,
        kd_weight: float | None = None,
    ) -> None:
        super().__init__(alpha, temperature, reduction, logit_standardization, ce_weight, kd_weight)
        self.delta = check_range("delta", delta, 0.0)
        self.needs_labels = True  # the task loss is the cross-entropy

    def optimizer(self, factory, params):
        settings = sgd_settings(factory)
        if settings["momentum"] - self.delta < 0:
            raise ConfigError(
                f"distill.delta={self.delta} exceeds module.optimizer.momentum="
                f"{settings['momentum']}; the task momentum m - delta must be >= 0."
            )
        return DOTOptimizer(params, delta=self.delta, **settings)

    def separate_gradients(self, terms):
        return self.ce_weight * terms["loss_ce"], self.kd_weight * terms["loss_kd"]

    def hparams(self) -> dict[str, Any]:
        return {"delta": self.delta}

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, delta={self.delta}"
