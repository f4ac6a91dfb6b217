"""What every feature and relation method shares: the layers it taps and how its term joins KD.

Loss (RepDistiller's ``train_student.py``; mdistiller alike)::

    L = gamma * CE(z_s, y) + alpha * T^2 * KL(softmax(z_t / T) || softmax(z_s / T)) + beta * L_feat

``L_feat`` is the method's own term; RepDistiller's baselines use gamma 1, alpha 0 and the
method's beta ("+KD" variants: alpha 1, T 4). Teacher features are read from forward hooks on
the frozen teacher, as the :class:`~kdlight.methods.base.Form` the method declares per teacher
layer (``teacher_form``: the raw map by default, the flattened embedding for the penultimate
methods, the attention map for AT), which the teacher store keeps beside the logits (raw maps
only when the run's raw maps fit ``teacher_store.max_gb``, else the teacher runs online).

Layers. ``student_layers`` / ``teacher_layers`` are lists of ``named_modules()`` names (a name
ending in ``:in`` taps that module's input, e.g. ``fc:in``, the penultimate feature), paired
in order, or ``auto``: the stage outputs each network declares (:func:`stage_layers`,
RepDistiller's ``feat[1:-1]``; see :mod:`kdlight.models.base`) and/or its penultimate feature
(:func:`penultimate_layer`, its ``feat[-1]``), as the method's paper uses them. When the two networks have different numbers
of stages, ``auto`` pairs the first ones both have (RepDistiller zips the two lists).
"""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import ListConfig
from torch import nn

from kdlight.errors import ConfigError
from kdlight.methods.base import RAW, Context, Form, Method, check_range
from kdlight.methods.kd import soft_kl
from kdlight.methods.taps import INPUT_SUFFIX, find_module, plain, split_tap
from kdlight.models.base import penultimate_name, stage_names

log = logging.getLogger(__name__)


def warn_if_first_stage_covers_training(
    method: nn.Module, ctx: Context, setting: str, epochs: int, untrained: str
) -> None:
    """Warn once when a two-stage method's first stage (``setting`` = ``epochs``) takes every epoch.

    ``untrained`` names what the second stage would have trained (e.g. "the classifier").
    """
    if getattr(method, "_warned_first_stage", False):
        return
    if ctx.max_epochs is not None and 0 < ctx.max_epochs <= epochs:
        log.warning(
            "%s: %s=%d >= max_epochs=%d, so %s is never trained.",
            type(method).__name__, setting, epochs, ctx.max_epochs, untrained,
        )  # fmt: skip
        method._warned_first_stage = True


KINDS = ("stages", "last_stage", "penultimate", "stages+penultimate")


def stage_layers(net: nn.Module, role: str = "network") -> tuple[str, ...]:
    """The stage outputs ``net`` declares in ``feature_info`` (:mod:`kdlight.models.base`), shallow to deep.

    Every zoo network declares them (post-activation maps where a stage ends in one; the
    table is in :mod:`kdlight.models`), as do torchvision ResNets and timm models built by
    :mod:`kdlight.models.external`. Other networks: ConfigError.
    """
    names = stage_names(net)
    if not names:
        raise ConfigError(
            f"layers=auto does not know the stages of the {role} {type(plain(net)).__name__} (it "
            f"declares no feature_info); name its layers in distill.student_layers / "
            f"distill.teacher_layers (named_modules() names)."
        )
    return names


def hint_stage(net: nn.Module, role: str = "network") -> str:
    """The second stage output, the one FitNets hints or guides by default (``auto``).

    RepDistiller's ``--hint_layer 2`` (``feat[2]``): ``layer2`` of a CIFAR ResNet, ``relu2``
    of the 5-layer CNN, an MLP's second hidden ReLU (the first when it has one hidden layer).
    """
    stages = stage_layers(net, role)
    return stages[min(1, len(stages) - 1)]


def penultimate_layer(net: nn.Module, role: str = "network") -> str:
    """The feature vector the classifier reads (RepDistiller's ``feat[-1]``).

    The network's declared ``penultimate`` tap (CNN5: ``relu4``, before its dropout), else
    ``"<last Linear>:in"``.
    """
    declared = penultimate_name(net)
    if declared is not None:
        return declared
    linears = tuple(n for n, x in plain(net).named_modules() if isinstance(x, nn.Linear))
    if not linears:
        raise ConfigError(
            f"layers=auto found no nn.Linear classifier in the {role} {type(net).__name__}; name "
            f"its penultimate layer in distill.student_layers / distill.teacher_layers."
        )
    return linears[-1] + INPUT_SUFFIX


def auto_layers(net: nn.Module, kind: str, role: str = "network") -> tuple[str, ...]:
    """The layers ``auto`` means for a method of ``kind`` (one of :data:`KINDS`)."""
    if kind == "penultimate":
        return (penultimate_layer(net, role),)
    stages = stage_layers(net, role)
    if kind == "last_stage":
        return stages[-1:]
    if kind == "stages+penultimate":
        return (*stages, penultimate_layer(net, role))
    return stages


def match_spatial(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Average-pool the larger of two (N, C, H, W) maps so both have (min H, min W)."""
    size = (min(a.shape[-2], b.shape[-2]), min(a.shape[-1], b.shape[-1]))
    if tuple(a.shape[-2:]) != size:
        a = F.adaptive_avg_pool2d(a, size)
    if tuple(b.shape[-2:]) != size:
        b = F.adaptive_avg_pool2d(b, size)
    return a, b


def _layer_spec(name: str, value: Any) -> str | tuple[str, ...]:
    if isinstance(value, str):
        return "auto" if value == "auto" else (value,)
    if (
        isinstance(value, (list, tuple, ListConfig))
        and value
        and all(isinstance(v, str) for v in value)
    ):
        return tuple(value)
    raise ConfigError(
        f"distill.{name}={value!r} is invalid; give auto or a list of named_modules() names."
    )


class FeatureKD(Method):
    """Base of the feature/relation methods: ``gamma * CE + alpha * KD + beta * feature term``.

    Subclasses set ``layer_kind`` (what ``auto`` taps, one of :data:`KINDS`), ``term`` (the
    logged name of their term), ``needs_maps`` (the term needs (N, C, H, W) maps), and
    implement :meth:`feature_loss`; :meth:`build_heads` creates their own layers;
    ``teacher_form`` (or :meth:`teacher_forms`) says what the loss reads of each teacher layer.

    Args:
        beta: weight of the method's term, >= 0.
        gamma: weight of cross-entropy with the labels, >= 0 (0: no labels needed).
        alpha: weight of the Hinton KD term, >= 0 (RepDistiller: 0 alone, 1 for "+KD").
        temperature: KD temperature T > 0.
        student_layers / teacher_layers: ``auto`` or lists of names, paired in order.
    """

    layer_kind: str = "stages"
    term: str = "loss_feat"
    needs_maps: bool = False
    #: what the store keeps of each teacher layer (and what ``feature_loss`` gets for it)
    teacher_form: Form = RAW

    def __init__(
        self,
        beta: float,
        gamma: float = 1.0,
        alpha: float = 0.0,
        temperature: float = 4.0,
        student_layers: Any = "auto",
        teacher_layers: Any = "auto",
    ) -> None:
        super().__init__()
        self.beta = check_range("beta", beta, 0.0)
        self.gamma = check_range("gamma", gamma, 0.0)
        self.alpha = check_range("alpha", alpha, 0.0)
        self.temperature = check_range("temperature", temperature, 0.0, low_open=True)
        self.needs_labels = self.gamma > 0
        self.student_spec = _layer_spec("student_layers", student_layers)
        self.teacher_spec = _layer_spec("teacher_layers", teacher_layers)
        both = (self.student_spec, self.teacher_spec)
        if "auto" not in both and len(both[0]) != len(both[1]):
            raise ConfigError(
                f"distill.student_layers has {len(both[0])} names but distill.teacher_layers has "
                f"{len(both[1])}; give one teacher layer per student layer, paired in order."
            )
        if "auto" not in both:
            self.student_layers, self.teacher_layers = both

    # ---- layers --------------------------------------------------------------------------
    def resolve_layers(self, student: nn.Module, teacher: nn.Module) -> None:
        s, t = self.student_spec, self.teacher_spec
        s = auto_layers(student, self.layer_kind, "student") if s == "auto" else s
        t = auto_layers(teacher, self.layer_kind, "teacher") if t == "auto" else t
        if len(s) != len(t):  # only auto can differ: pair what both have, deepest feature kept
            n = min(len(s), len(t))
            if self.layer_kind == "stages+penultimate":
                s, t = (*s[: n - 1], s[-1]), (*t[: n - 1], t[-1])
            else:
                s, t = s[:n], t[:n]
        for names, net, role in ((s, student, "student layer"), (t, teacher, "teacher layer")):
            for name in names:
                find_module(net, split_tap(name)[0], role)
        self.student_layers, self.teacher_layers = tuple(s), tuple(t)

    def build(self, student_feats, teacher_feats, num_classes) -> None:
        s = [student_feats[n] for n in self.student_layers]
        t = [teacher_feats[n] for n in self.teacher_layers]
        if self.needs_maps:
            for feats, names, side in ((s, self.student_layers, "student"), (t, self.teacher_layers, "teacher")):  # fmt: skip
                for f, name in zip(feats, names, strict=True):
                    if f.dim() != 4:
                        raise ConfigError(
                            f"distill={self.method_name} needs (N, C, H, W) feature maps but the "
                            f"{side} layer {name!r} gives shape {tuple(f.shape)}; name "
                            f"convolutional layers in distill.{side}_layers."
                        )
        self.build_heads(s, t)

    def teacher_forms(self) -> dict[str, Form]:
        return {name: self.teacher_form for name in self.teacher_layers}

    def build_heads(self, student: list[torch.Tensor], teacher: list[torch.Tensor]) -> None:
        """Create the method's own layers from example features (default: none)."""

    @property
    def method_name(self) -> str:
        return type(self).__name__.lower()

    # ---- loss ----------------------------------------------------------------------------
    def feature_loss(
        self, student: list[torch.Tensor], teacher: list[torch.Tensor], ctx: Context
    ) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def feature_weight(self, ctx: Context) -> float:
        """The weight of the method's term this step (default: ``beta``)."""
        return self.beta

    def forward(self, ctx: Context) -> dict[str, torch.Tensor]:
        s = [ctx.student_feats[n].float() for n in self.student_layers]
        t = [ctx.teacher_feats[n].float().detach() for n in self.teacher_layers]
        feat = self.feature_loss(s, t, ctx)
        terms = {self.term: feat}
        loss = self.feature_weight(ctx) * feat
        if self.gamma > 0:
            terms["loss_ce"] = F.cross_entropy(ctx.student_logits.float(), ctx.labels)
            loss = loss + self.gamma * terms["loss_ce"]
        if self.alpha > 0:
            terms["loss_kd"] = soft_kl(ctx.student_logits, ctx.teacher_logits, self.temperature)
            loss = loss + self.alpha * terms["loss_kd"]
        return {"loss": loss, **terms}

    def hparams(self) -> dict[str, Any]:
        return {"beta": self.beta, "gamma": self.gamma, "alpha": self.alpha}

    def extra_repr(self) -> str:
        return (
            f"beta={self.beta}, gamma={self.gamma}, alpha={self.alpha}, T={self.temperature}, "
            f"student_layers={list(self.student_layers)}, teacher_layers={list(self.teacher_layers)}"
        )


def flat(x: torch.Tensor) -> torch.Tensor:
    """(N, ...) -> (N, D)."""
    return x.reshape(x.shape[0], -1)
