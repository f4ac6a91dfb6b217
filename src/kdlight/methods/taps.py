"""Feature taps by module name: forward hooks on ``named_modules()`` layers, for one forward only.

Every method that reads intermediate features (FitNets, attention transfer, ...) and the
data-free statistics recorder go through :func:`tapped_forward`; hooks exist only inside it.

A name is a module's ``named_modules()`` name, whose OUTPUT is tapped, or that name with the
suffix ``:in`` (:data:`INPUT_SUFFIX`), whose first INPUT is tapped: ``fc:in`` is the
penultimate feature vector a classifier ``fc`` reads.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
from torch import nn

from kdlight.errors import ConfigError

INPUT_SUFFIX = ":in"


def split_tap(name: str) -> tuple[str, bool]:
    """``(module name, whether the module's input rather than its output is tapped)``."""
    if name.endswith(INPUT_SUFFIX):
        return name[: -len(INPUT_SUFFIX)], True
    return name, False


class _StopForward(Exception):
    """Raised by a tap to skip the layers above the last one captured."""


def plain(net: nn.Module) -> nn.Module:
    """``net`` itself, also after ``torch.compile`` (hooks go on the uncompiled network)."""
    return getattr(net, "_orig_mod", net)


def find_module(net: nn.Module, name: str, role: str = "module") -> nn.Module:
    """The submodule of ``net`` called ``name`` in ``net.named_modules()``; ConfigError if none."""
    modules = dict(plain(net).named_modules())
    if name not in modules or name == "":
        names = [n for n in modules if n]
        shown = ", ".join(names[:40]) + (", ..." if len(names) > 40 else "")
        raise ConfigError(
            f"the {role} {name!r} is not a module of {type(plain(net)).__name__}; valid names "
            f"(from named_modules(), each optionally with {INPUT_SUFFIX!r} to tap its input) "
            f"are: {shown}."
        )
    return modules[name]


@contextlib.contextmanager
def taps(
    net: nn.Module, names: Sequence[str], stop: bool = False, role: str = "module"
) -> Iterator[dict[str, torch.Tensor]]:
    """Within the block, each forward of ``net`` stores the outputs (``:in``: inputs) of ``names``.

    With ``stop=True`` the forward is aborted once every named layer has run (call the network
    through :func:`tapped_forward`), so the layers above neither run nor update BatchNorm
    statistics. Without ``stop`` outputs are cloned: a later in-place op
    (``ReLU(inplace=True)``) could overwrite them.
    """
    box: dict[str, torch.Tensor] = {}
    wanted = set(names)
    handles = []

    def keep(name: str, value: torch.Tensor) -> None:
        box[name] = value if stop else value.clone()
        if stop and wanted <= box.keys():
            raise _StopForward

    def make_hook(name: str):
        def hook(module, inputs, output):
            keep(name, output)

        return hook

    def make_pre_hook(name: str):
        def pre_hook(module, inputs):  # before the module runs: a stop skips it too
            keep(name, inputs[0])

        return pre_hook

    try:
        for name in names:
            module_name, is_input = split_tap(name)
            module = find_module(net, module_name, role)
            if is_input:
                handles.append(module.register_forward_pre_hook(make_pre_hook(name)))
            else:
                handles.append(module.register_forward_hook(make_hook(name)))
        yield box
    finally:
        for h in handles:
            h.remove()


def tapped_forward(
    net: nn.Module, x: torch.Tensor, names: Sequence[str], stop: bool = False, role: str = "module"
) -> tuple[torch.Tensor | None, dict[str, torch.Tensor]]:
    """``(logits, {name: output})`` of one forward; logits are None when ``stop`` cut it short."""
    if not names:
        return net(x), {}
    logits = None
    with taps(plain(net), names, stop, role) as box:
        try:
            logits = plain(net)(x)
        except _StopForward:
            pass
    missing = [n for n in names if n not in box]
    if missing:
        raise ConfigError(
            f"the {role} {missing[0]!r} of {type(plain(net)).__name__} is never called in its forward."
        )
    return logits, dict(box)


def features(net: nn.Module, name: str, x: torch.Tensor) -> torch.Tensor:
    """The output of ``net``'s submodule ``name`` for input ``x``, running ``net`` only up to it."""
    return tapped_forward(net, x, [name], stop=True)[1][name]
