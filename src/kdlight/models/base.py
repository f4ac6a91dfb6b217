"""The stage-name API: what a network declares so feature methods need not guess its layers.

A network lists its stage outputs in ``feature_info``, in timm's format: one dict per
stage, shallow to deep, ``{"module": <named_modules() name>, "num_chs": <channels>,
"reduction": <input size / map size>}`` (reductions for 32 x 32 inputs). Unlike timm's own
list it has no stem entry: the stages are RepDistiller's ``feat[1:-1]``. A network may also
name its ``penultimate`` layer, the feature vector its classifier reads (default: the input
of its last ``nn.Linear``, ``"<name>:in"``, chosen by the methods). Feature methods' ``auto`` layers
(:mod:`kdlight.methods.features`) read only these two attributes.

The tapped maps are post-activation wherever the network has an activation at a stage's
end (as RepDistiller taps them); pre-activation networks end their stages on the residual
stream, which is what their references tap too.
"""

from __future__ import annotations

from typing import Any

from torch import nn


def stage(module: str, num_chs: int, reduction: int) -> dict[str, Any]:
    """One ``feature_info`` entry: ``{"module", "num_chs", "reduction"}``."""
    return {"module": module, "num_chs": int(num_chs), "reduction": int(reduction)}


def _plain(net: nn.Module) -> nn.Module:
    return getattr(net, "_orig_mod", net)  # torch.compile keeps the network here


def stage_names(net: nn.Module) -> tuple[str, ...] | None:
    """The ``named_modules()`` names of ``net``'s declared stages, shallow to deep; None if none."""
    info = getattr(_plain(net), "feature_info", None)
    if not isinstance(info, (list, tuple)) or not info:
        return None
    if not all(isinstance(d, dict) and isinstance(d.get("module"), str) for d in info):
        return None
    return tuple(d["module"] for d in info)


def penultimate_name(net: nn.Module) -> str | None:
    """``net``'s declared ``penultimate`` tap, or None (methods then tap its last Linear's input)."""
    declared = getattr(_plain(net), "penultimate", None)
    return declared if isinstance(declared, str) else None
