"""A comprehensive overhaul of feature distillation (Heo, Kim, Yun, Park, Kwak & Choi, ICCV 2019,
"A Comprehensive Overhaul of Feature Distillation").

OFD distills pre-ReLU features: for each paired stage i of n, the student's pre-ReLU map goes
through a connector r_i (conv k x k without bias, then BatchNorm), the teacher's pre-ReLU map
T is average-pooled to the student's H x W, and the partial L2 distance with margin m
(paper eq. 5, mdistiller's ``feat_loss``) is

    d(S, T) = (S - m)^2  where S > m and T <= m      (the teacher is off: only a too-high S costs)
            + (S - T)^2  where S > T and m < T <= 0
            + (S - T)^2  where T > 0
    L_OFD = sum_i d(r_i(S_i), T_i) summed over C, H, W, averaged over the batch, / 2^(n - i - 1)

(the deepest stage weighs 1, each shallower one half the next). The margin is per teacher
channel, the expectation of the negative responses of the BatchNorm that precedes the ReLU
(paper eq. 4): with gamma, beta that BN's weight and bias, s = |gamma|, m = beta,
    margin = m - s * phi(m / s) / Phi(-m / s)      if Phi(-m / s) > 0.001,    else -3 s.
``beta = 0.001`` (weight) and kernel 1 are mdistiller's ``CFG.OFD``.

Layers. ``auto``: each network's declared stage outputs (mdistiller's ``preact_feats[1:]``),
moved to the point before their final ReLU (:func:`pre_relu_layers`): a ReLU stage (the
5-layer CNN's ``relu1..3``) is tapped at its input (``relu1:in``), a ResNet stage at the input
of its last block's ReLU (``layer1.2.relu:in``, the sum ``bn2 + shortcut`` mdistiller taps).
A stage that does not end in a ReLU (pre-activation ResNets, WRN: the residual stream) is
tapped as is. The margin's BatchNorm is the last BatchNorm2d with the map's channel count to
run before the tapped point (found by one eval-mode forward of a 32 x 32 example: ``bn2`` of a
ResNet's last basic block, ``bn3`` of a bottleneck, the CNN's ``bn1..3``). When the networks
have different numbers of stages, the deepest ones are paired (mdistiller's ``_align_list``).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from kdlight.errors import ConfigError
from kdlight.methods.base import RAW, Context, Form, Plan
from kdlight.methods.features import FeatureKD, auto_layers
from kdlight.methods.taps import find_module, plain, split_tap, tapped_forward


# ---- pre-ReLU taps (also used by AB) ----------------------------------------------------------
def _candidate(modules: dict[str, nn.Module], name: str) -> str:
    """The tap just before ``name``'s final ReLU, if its structure ends in one; else ``name``."""
    m = modules[name]
    if isinstance(m, nn.ReLU):
        return name + ":in"
    if isinstance(m, nn.Sequential) and len(m) > 0:
        return _candidate(modules, f"{name}.{len(m) - 1}")
    relus = [n for n, c in m.named_children() if isinstance(c, nn.ReLU)]
    return f"{name}.{relus[-1]}:in" if relus else name


def _example(net: nn.Module) -> torch.Tensor:
    conv = next((m for m in net.modules() if isinstance(m, nn.Conv2d)), None)
    p = next(net.parameters(), None)
    if conv is None or p is None:
        raise ConfigError(
            f"{type(net).__name__} has no Conv2d: pre-ReLU feature maps need a convolutional "
            "network (name its layers in distill.student_layers / distill.teacher_layers)."
        )
    g = torch.Generator().manual_seed(0)
    return torch.randn(2, conv.in_channels, 32, 32, generator=g).to(p.device, p.dtype)


def pre_relu_layers(
    net: nn.Module, layers: Sequence[str], role: str, move: bool = True
) -> list[tuple[str, int, nn.BatchNorm2d | None]]:
    """``(tap, channels, BatchNorm before it or None)`` per layer of ``net``.

    ``move``: replace each layer by the point before its final ReLU (see the module
    docstring); else tap the layers as named. Runs ``net`` once in eval mode on a 32 x 32
    example (no gradient, BatchNorm statistics unchanged) to see the call order.
    """
    net = plain(net)
    modules = dict(net.named_modules())
    for name in layers:
        find_module(net, split_tap(name)[0], role)
    cand = [_candidate(modules, n) if move and n in modules else n for n in layers]
    order: list[str] = []
    leaves = [(n, m) for n, m in net.named_modules() if n and not any(True for _ in m.children())]
    handles = [
        m.register_forward_pre_hook(lambda mod, inp, n=n: order.append(n)) for n, m in leaves
    ]
    was = net.training
    net.eval()
    try:
        with torch.no_grad():
            _, feats = tapped_forward(net, _example(net), list(dict.fromkeys(cand + list(layers))), False, role)  # fmt: skip
    except ConfigError:
        raise
    except Exception as exc:  # a network that does not take 32 x 32 inputs
        raise ConfigError(
            f"could not trace the {role}s {list(layers)} of {type(net).__name__} on a 32 x 32 "
            f"example ({type(exc).__name__}: {exc}); name its pre-ReLU layers in "
            "distill.student_layers / distill.teacher_layers."
        ) from exc
    finally:
        for h in handles:
            h.remove()
        net.train(was)

    def last_call(name: str) -> int:
        hits = [i for i, n in enumerate(order) if n == name or n.startswith(name + ".")]
        return hits[-1] if hits else -1

    out = []
    for layer, tap in zip(layers, cand, strict=True):
        module, is_input = split_tap(tap)
        if tap != layer and last_call(module) != last_call(split_tap(layer)[0]):
            tap, (module, is_input) = layer, split_tap(layer)  # its ReLU is not the last op
        feat = feats[tap]
        channels = int(feat.shape[1]) if feat.dim() >= 2 else 0
        end = last_call(module) - (1 if is_input else 0)
        bn = None
        for j in range(end, -1, -1):
            m = modules[order[j]]
            if isinstance(m, nn.BatchNorm2d) and m.num_features == channels:
                bn = m
                break
        out.append((tap, channels, bn))
    return out


def bn_margin(bn: nn.BatchNorm2d) -> torch.Tensor:
    """Per channel E[x | x < 0] of x ~ N(beta, |gamma|) (else -3 |gamma|), shape (1, C, 1, 1)."""
    margins = []
    for s, m in zip(bn.weight.detach().double().abs().tolist(), bn.bias.detach().double().tolist(), strict=True):  # fmt: skip
        s = max(s, 1e-12)
        cdf = 0.5 * math.erfc((m / s) / math.sqrt(2.0))  # Phi(-m / s)
        if cdf > 0.001:
            margins.append(-s * math.exp(-((m / s) ** 2) / 2) / math.sqrt(2 * math.pi) / cdf + m)
        else:
            margins.append(-3 * s)
    return torch.tensor(margins, dtype=torch.float32).view(1, -1, 1, 1)


def ofd_distance(source: torch.Tensor, target: torch.Tensor, margin: torch.Tensor) -> torch.Tensor:
    """The partial L2 distance d(S, T) with margin, summed over C, H, W, averaged over the batch."""
    margin = margin.to(source)
    loss = (
        (source - margin).pow(2) * ((source > margin) & (target <= margin))
        + (source - target).pow(2) * ((source > target) & (target > margin) & (target <= 0))
        + (source - target).pow(2) * (target > 0)
    )
    return loss.sum() / source.shape[0]


class Connector(nn.Module):
    """conv k x k (no bias) + BatchNorm, He-initialised as mdistiller's ``ConnectorConvBN``."""

    def __init__(self, student_channels: int, teacher_channels: int, kernel_size: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(
            student_channels, teacher_channels, kernel_size, padding=(kernel_size - 1) // 2, bias=False
        )  # fmt: skip
        self.bn = nn.BatchNorm2d(teacher_channels)
        n = kernel_size * kernel_size * teacher_channels
        nn.init.normal_(self.conv.weight, 0.0, math.sqrt(2.0 / n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))


def pooled(feature: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``feature`` adaptively average-pooled to ``size`` (the teacher's form when it is larger)."""
    return F.adaptive_avg_pool2d(feature, size)


class OFD(FeatureKD):
    """Overhaul of feature distillation; see the module docstring.

    Args:
        connector_kernel: the connectors' conv k x k, odd >= 1 (mdistiller: 1).
        beta, gamma, alpha, temperature: see :class:`kdlight.methods.features.FeatureKD`.
        student_layers / teacher_layers: ``auto`` (the stages' pre-ReLU maps) or lists of names,
            tapped as named (the margin's BatchNorm is still found as for ``auto``).

    Returns ``{"loss", "loss_ofd", "loss_ce"[, "loss_kd"]}``; the terms are unweighted.
    """

    term = "loss_ofd"
    needs_maps = True

    def __init__(self, beta: float = 1e-3, connector_kernel: int = 1, **kwargs) -> None:
        super().__init__(beta, **kwargs)
        k = int(connector_kernel)
        if k != connector_kernel or k < 1 or k % 2 == 0:
            raise ConfigError(
                f"distill.connector_kernel={connector_kernel} is invalid; use an odd size >= 1."
            )
        self.connector_kernel = k
        self.connectors = nn.ModuleList()
        self.student_channels: list[int] = []
        self.sizes: list[tuple[tuple[int, ...], tuple[int, ...]]] = []

    def resolve_layers(self, student: nn.Module, teacher: nn.Module) -> None:
        sides = []
        for spec, net, role in ((self.student_spec, student, "student"), (self.teacher_spec, teacher, "teacher")):  # fmt: skip
            auto = spec == "auto"
            names = auto_layers(net, "stages", role) if auto else spec
            sides.append(pre_relu_layers(net, names, f"{role} layer", move=auto))
        n = min(len(sides[0]), len(sides[1]))
        s, t = sides[0][-n:], sides[1][-n:]  # mdistiller's _align_list: the deepest ones
        for i, (tap, _, bn) in enumerate(t):
            if bn is None:
                raise ConfigError(
                    f"distill=ofd needs the BatchNorm before the teacher layer {tap!r}'s ReLU (its "
                    f"margin) but none with its channels runs before it; name teacher layers that "
                    f"follow a BatchNorm2d in distill.teacher_layers."
                )
            self.register_buffer(f"margin{i}", bn_margin(bn).to(bn.weight.device))
        self.student_layers = tuple(x[0] for x in s)
        self.teacher_layers = tuple(x[0] for x in t)
        self.student_channels = [x[1] for x in s]

    def margins(self) -> list[torch.Tensor]:
        return [getattr(self, f"margin{i}") for i in range(len(self.teacher_layers))]

    def build_heads(self, student, teacher) -> None:
        # channels from the trace: a build example may stop at the first call of a shared ReLU
        channels = self.student_channels or [f.shape[1] for f in student]
        self.connectors = nn.ModuleList(
            Connector(c, m.shape[1], self.connector_kernel)
            for c, m in zip(channels, self.margins(), strict=True)
        )
        self.sizes = [
            (tuple(s.shape[-2:]), tuple(t.shape[-2:]))
            for s, t in zip(student, teacher, strict=True)
        ]

    def teacher_forms(self) -> dict[str, Form]:
        """The raw map, or the map pooled to the student's size where that is different."""
        forms: dict[str, Form] = {}
        if len(self.sizes) != len(self.teacher_layers):
            return forms  # not built yet
        for layer, (size, t_size) in zip(self.teacher_layers, self.sizes, strict=True):
            fn = functools.partial(pooled, size=size)
            form = RAW if size == t_size else Form(f"avgpool_{size[0]}x{size[1]}", fn)
            if forms.get(layer, form).name != form.name:
                return {}
            forms[layer] = form
        return forms

    def plan(self, epoch: int) -> Plan:
        # no stop_early: a tap at a shared ReLU's input must see that ReLU's last call
        return Plan(self.student_layers, self.teacher_layers)

    def feature_loss(self, student, teacher, ctx: Context) -> torch.Tensor:
        total = student[0].new_zeros(())
        n = len(student)
        for i, (fs, ft, conn, margin) in enumerate(zip(student, teacher, self.connectors, self.margins(), strict=True)):  # fmt: skip
            s = conn(fs)
            t = F.adaptive_avg_pool2d(ft, s.shape[-2:])
            total = total + ofd_distance(s, t, margin) / 2 ** (n - i - 1)
        return total

    def hparams(self) -> dict:
        return {**super().hparams(), "connector_kernel": self.connector_kernel}
