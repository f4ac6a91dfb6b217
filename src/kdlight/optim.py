"""The optimizer a system trains with: its fused kernel where it can run (``module.fused_optimizer``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from kdlight.errors import ConfigError

#: Optimizers whose ``fused=True`` kernel kdlight uses (``module.fused_optimizer``), and the
#: devices it does so on. The fused kernel updates every parameter in one pass instead of a few
#: elementwise kernels each: on a CPU, an SGD step of the 784-800-800-10 MLP (momentum, weight
#: decay) takes 0.3 ms instead of 1.0-1.2 ms. It rounds once where those round at each kernel,
#: so weights differ from the unfused optimizer's by a few ulp a step (about 1e-7).
FUSABLE_OPTIMIZERS = (torch.optim.SGD, torch.optim.Adam, torch.optim.AdamW)
FUSED_DEVICES = ("cpu", "cuda")


def fused_optimizer_setting(value: Any) -> bool | str:
    """``module.fused_optimizer`` checked: ``"auto"``, ``True`` or ``False``."""
    if value is None or (isinstance(value, str) and value.lower() == "auto"):
        return "auto"
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise ConfigError(f"module.fused_optimizer={value} is not valid; use auto, true or false.")


def make_optimizer(
    factory: Callable[..., torch.optim.Optimizer],
    params: list[torch.Tensor],
    fused: bool | str = "auto",
    clips_scaled_gradients: bool = False,
) -> torch.optim.Optimizer:
    """``factory(params=params)``, with the optimizer's fused kernel where it can run.

    ``fused`` (``module.fused_optimizer``): ``"auto"`` passes ``fused=True`` when ``factory`` is
    a partial of SGD, Adam or AdamW that sets neither ``fused`` nor ``foreach`` (the config's
    own choice wins) and every parameter is a floating-point tensor on a CPU or CUDA device;
    ``True`` does the same or raises :class:`ConfigError` naming what prevents it; ``False``
    calls ``factory`` as written. ``clips_scaled_gradients``: the run clips gradients under
    16-bit mixed precision, where Lightning refuses optimizers that unscale gradients themselves
    (fused ones do), so ``"auto"`` leaves them out.
    """
    fused = fused_optimizer_setting(fused)
    if fused is False:
        return factory(params=params)
    cls = getattr(factory, "func", None)
    given = getattr(factory, "keywords", None) or {}
    name = getattr(cls, "__name__", type(factory).__name__)
    if given.get("fused") is not None or given.get("foreach") is not None:
        return factory(params=params)  # the optimizer config says how to run it
    if not (isinstance(cls, type) and issubclass(cls, FUSABLE_OPTIMIZERS)):
        reason = f"{name} is not one of the optimizers with a fused kernel (SGD, Adam, AdamW)"
    elif given.get("differentiable"):
        reason = f"{name} is differentiable=true, which a fused kernel is not"
    elif issubclass(cls, torch.optim.SGD) and given.get("dampening"):
        # parameters that start training late (FitNets' second stage) get their first momentum
        # buffer from fill_momentum_buffers, which is exact only without dampening
        reason = (
            "SGD with dampening cannot start a late parameter's momentum as the unfused SGD does"
        )
    elif not all(p.is_floating_point() and p.device.type in FUSED_DEVICES for p in params):
        reason = "its parameters are not all floating point on a CPU or CUDA device"
    elif clips_scaled_gradients:
        reason = "the run clips gradients under 16-bit mixed precision, which Lightning refuses for fused optimizers"
    else:
        return factory(params=params, fused=True)
    if fused is True:
        raise ConfigError(
            f"module.fused_optimizer=true but {reason}; set module.fused_optimizer=auto or false."
        )
    return factory(params=params)


def fill_momentum_buffers(optimizer: torch.optim.Optimizer) -> None:
    """Give each parameter with a gradient but no momentum buffer a zero one, if others have one.

    torch's fused SGD fails on a step where some parameters of a group have a momentum buffer and
    others, given a gradient for the first time (FitNets' KD stage after its hint stage), do not.
    The unfused SGD starts such a buffer as the gradient; without dampening the fused update of a
    zero buffer, ``momentum * 0 + grad``, is that exactly. Costs one length check once every
    parameter has its buffer.
    """
    state = optimizer.state
    groups = optimizer.param_groups
    if len(state) == sum(len(g["params"]) for g in groups):
        return
    for group in groups:
        params = [p for p in group["params"] if p.grad is not None]
        if any("momentum_buffer" in state.get(p, ()) for p in params):
            for p in params:
                if state[p].get("momentum_buffer") is None:
                    state[p]["momentum_buffer"] = torch.zeros_like(p.grad)


def fills_momentum(optimizer: torch.optim.Optimizer) -> bool:
    return isinstance(optimizer, torch.optim.SGD) and any(
        g.get("fused") and g.get("momentum") for g in optimizer.param_groups
    )
