"""Networks from libraries: any ``torchvision.models`` or ``timm`` architecture, by name.

``model@teacher=torchvision teacher.name=resnet34`` and ``model@student=timm
student.name=resnet18`` build them; ``num_classes`` comes from the data. Weights are random
unless ``weights=`` (torchvision's enum names, e.g. ``IMAGENET1K_V1``) or ``pretrained=true``
(timm) asks for the library's download. Both factories return the library's own module, so
its parameter names (and torchvision or timm checkpoints) and its ``named_modules()`` layer
names (for feature methods) are the library's.

Stages (``feature_info``, :mod:`kdlight.models.base`): torchvision's ResNet family
(``resnet*``, ``resnext*``, ``wide_resnet*``) gets ``layer1..4`` (post-ReLU); a timm model
keeps timm's own ``feature_info`` without its stem entry. Other torchvision networks declare
none (name their layers in ``distill.*_layers``).

``input_size``: when a network expects another resolution than the data gives (an ImageNet
teacher at 224 over a 64-pixel student's batches), the network resizes each input batch to
``input_size x input_size`` first (``F.interpolate``, bilinear, ``antialias=False``), in a
forward pre-hook: its state dict and layer names stay those of the plain network.
"""

from __future__ import annotations

import difflib

import torch
import torch.nn.functional as F
from torch import nn

from kdlight.errors import ConfigError
from kdlight.models.base import stage

#: timm.create_model arguments that would read a file with timm's own loader (never passed on).
_TIMM_FILE_ARGUMENTS = ("checkpoint_path", "pretrained_cfg", "pretrained_cfg_overlay")


class InputResize(nn.Module):
    """Resize a (B, C, H, W) batch to ``size x size`` (bilinear, no antialiasing); same size: as is."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = int(size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-2:]) == (self.size, self.size):
            return x
        return F.interpolate(
            x, size=(self.size, self.size), mode="bilinear", align_corners=False, antialias=False
        )

    def extra_repr(self) -> str:
        return f"size={self.size}"


def _resize_first(module: nn.Module, args: tuple) -> tuple:
    return (module.input_resize(args[0]), *args[1:])


def with_input_size(net: nn.Module, input_size: int | None) -> nn.Module:
    """``net`` resizing its input to ``input_size`` (None: ``net`` unchanged).

    The resize is a parameter-free child ``input_resize`` (shown by ``print(net)``) run by a
    forward pre-hook, so the state dict and ``named_modules()`` names of ``net`` are unchanged
    and checkpoints of the plain network load into it.
    """
    if input_size is None:
        return net
    if isinstance(input_size, bool) or not isinstance(input_size, int) or input_size < 1:
        raise ConfigError(
            f"input_size={input_size!r} is invalid; use null (no resizing) or a positive pixel "
            "count such as 224."
        )
    net.input_resize = InputResize(input_size)
    net.register_forward_pre_hook(_resize_first)
    return net


def _torchvision_stages(net: nn.Module) -> None:
    """``feature_info`` of a torchvision ResNet-family network (layer1..4); others: unchanged."""
    layers = [getattr(net, f"layer{i}", None) for i in range(1, 5)]
    if not all(isinstance(x, nn.Sequential) for x in layers) or not hasattr(net, "fc"):
        return
    chans = []
    for layer in layers:
        bns = [m for m in layer[-1].modules() if isinstance(m, nn.BatchNorm2d)]
        if not bns:
            return
        chans.append(bns[-1].num_features)  # a block's last BN gives its output channels
    net.feature_info = [stage(f"layer{i + 1}", c, 4 << i) for i, c in enumerate(chans)]


def _timm_stages(net: nn.Module) -> None:
    """timm's ``feature_info`` without its stem entry (kdlight's stages are RepDistiller's feat[1:-1])."""
    info = getattr(net, "feature_info", None)
    if not isinstance(info, list) or not all(isinstance(d, dict) and "module" in d for d in info):
        return
    if len(info) > 1 and info[0].get("reduction", 0) < info[1].get("reduction", 0):
        info = info[1:]  # the stem's output: a lower reduction than the first stage's
    net.feature_info = [stage(d["module"], d["num_chs"], d["reduction"]) for d in info]


def _unknown(library: str, name: str, names: list[str], hint: str) -> ConfigError:
    close = difflib.get_close_matches(name, names, n=5, cutoff=0.6)
    near = f"close names: {', '.join(close)}" if close else f"e.g. {', '.join(names[:5])}"
    return ConfigError(f"{library} has no model named {name!r} ({near}; {hint}).")


def _check_classes(num_classes: int) -> None:
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ConfigError(f"num_classes={num_classes!r} is invalid; it must be an integer >= 1.")


def adapt_input_channels(net: nn.Module, in_chans: int) -> nn.Module:
    """Give ``net``'s first convolution ``in_chans`` input channels instead of 3.

    The new kernel is the old one summed over its RGB inputs (grey-scale: what the RGB filter
    sees of a grey image replicated to 3 channels), repeated and scaled by 3 / in_chans for other
    counts, so pretrained weights stay meaningful; as timm does for its ``in_chans``.
    """
    for parent in net.modules():
        for child_name, child in parent.named_children():
            if isinstance(child, nn.Conv2d) and child.in_channels == 3:
                conv = nn.Conv2d(
                    in_chans,
                    child.out_channels,
                    child.kernel_size,
                    child.stride,
                    child.padding,
                    child.dilation,
                    child.groups,
                    child.bias is not None,
                    child.padding_mode,
                )
                with torch.no_grad():
                    summed = child.weight.sum(dim=1, keepdim=True)
                    conv.weight.copy_(summed.repeat(1, in_chans, 1, 1) / in_chans)
                    if child.bias is not None:
                        conv.bias.copy_(child.bias)
                setattr(parent, child_name, conv)
                return net
    raise ConfigError(
        f"{type(net).__name__} has no 3-channel input convolution to adapt to in_chans={in_chans}."
    )


def torchvision_model(
    name: str,
    num_classes: int,
    weights: str | None = None,
    input_size: int | None = None,
    in_chans: int | None = None,
    **kwargs,
) -> nn.Module:
    """Build ``torchvision.models.get_model(name, weights=weights, num_classes=num_classes, **kwargs)``.

    ``weights``: a name of the model's weights enum (``IMAGENET1K_V1``, ``DEFAULT``, or the
    full ``ResNet34_Weights.IMAGENET1K_V1``); None keeps torchvision's random initialisation.
    Pretrained weights fix ``num_classes`` to theirs (1,000 for ImageNet). ``in_chans`` (None:
    3; the run code passes the data's channels) adapts the first convolution
    (:func:`adapt_input_channels`), e.g. 1 for grey-scale data.
    """
    import torchvision.models as tvm

    _check_classes(num_classes)
    names = tvm.list_models()
    if name not in names:
        raise _unknown("torchvision.models", name, names, "all: torchvision.models.list_models()")
    if weights is not None:
        enum = tvm.get_model_weights(name)
        key = str(weights).split(".")[-1]
        valid = [w.name for w in enum]
        if key != "DEFAULT" and key not in valid:
            raise ConfigError(
                f"weights={weights!r} is not a weight set of torchvision's {name}; valid: "
                f"{', '.join(['DEFAULT', *valid])}, or null for random weights."
            )
        weights = enum[key] if key != "DEFAULT" else enum.DEFAULT
        classes = len(weights.meta.get("categories") or [])
        if classes and classes != num_classes:
            raise ConfigError(
                f"weights={weights.name} of torchvision's {name} predict {classes} classes but the "
                f"data has num_classes={num_classes}; use weights=null or data with {classes} classes."
            )
    try:
        net = tvm.get_model(name, weights=weights, num_classes=num_classes, **kwargs)
    except TypeError as exc:
        raise ConfigError(f"torchvision's {name} does not take these arguments ({exc}).") from exc
    except Exception as exc:  # noqa: BLE001 - a failed download, in whichever form it comes
        if weights is None:
            raise
        raise ConfigError(
            f"could not fetch torchvision's {name} weights {weights.name} ({exc}); put the file in "
            f"{torch.hub.get_dir()}/checkpoints/ or use weights=null."
        ) from exc
    if in_chans is not None and int(in_chans) != 3:
        adapt_input_channels(net, int(in_chans))
    _torchvision_stages(net)
    return with_input_size(net, input_size)


def timm_model(
    name: str,
    num_classes: int,
    pretrained: bool = False,
    input_size: int | None = None,
    in_chans: int | None = None,
    **kwargs,
) -> nn.Module:
    """Build ``timm.create_model(name, pretrained=pretrained, num_classes=num_classes, **kwargs)``.

    Needs the optional ``timm`` extra (``pip install 'kdlight[timm]'``). ``pretrained=true``
    downloads timm's weights (from the Hugging Face hub); arguments that would read a local
    file with timm's loader (``checkpoint_path``, ``pretrained_cfg*``) are refused: load a
    checkpoint with ``teacher_ckpt=`` instead (weights-only).
    """
    try:
        import timm
    except ImportError as exc:
        raise ConfigError(
            "model=timm needs the optional timm package; install it with pip install 'kdlight[timm]'."
        ) from exc
    _check_classes(num_classes)
    blocked = [k for k in _TIMM_FILE_ARGUMENTS if k in kwargs]
    if blocked:
        raise ConfigError(
            f"timm_model does not pass {blocked[0]} to timm (it would load a file without "
            "kdlight's weights-only check); set teacher_ckpt=PATH instead."
        )
    if not timm.is_model(name):
        raise _unknown("timm", name, timm.list_models(), "all: timm.list_models()")
    try:
        if in_chans is not None:  # None: timm's default, 3 (the run code passes the data's)
            kwargs["in_chans"] = int(in_chans)
        net = timm.create_model(
            name, pretrained=bool(pretrained), num_classes=num_classes, **kwargs
        )
    except TypeError as exc:
        raise ConfigError(f"timm's {name} does not take these arguments ({exc}).") from exc
    except Exception as exc:  # noqa: BLE001 - a failed download, in whichever form it comes
        if not pretrained:
            raise
        raise ConfigError(
            f"could not fetch timm's pretrained {name} weights ({exc}); use pretrained=false "
            "or teacher_ckpt=PATH."
        ) from exc
    _timm_stages(net)
    return with_input_size(net, input_size)
