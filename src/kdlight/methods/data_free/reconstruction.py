"""Data-free KD metadata (Lopes, Fenu & Starner, 2017): activation statistics and transfer sets.

"Data-Free Knowledge Distillation for Deep Neural Networks" keeps, next to a trained teacher,
a little *metadata* about its activations on the training set, and later reconstructs a
transfer set from noise by optimising inputs until the teacher's activations match targets
sampled from that metadata. This module implements the "all layers" activation-statistics
variant:

1. :func:`record_statistics`: per-layer, per-unit mean and std of the teacher's activations
   over the training images, overall and per class (the class a sample is grouped under is
   the teacher's own prediction, so the metadata needs no labels).
2. :func:`reconstruct`: for each synthetic sample, pick a class (balanced), sample per-unit
   targets t_l ~ N(mean_l[c], std_l[c]) for every recorded layer, start x from Gaussian noise
   in the normalised input space and minimise sum_l mean (a_l(x) - t_l)^2 with Adam.

Recorded layers, by default (:func:`default_layers`): the output of every ``nn.Linear`` but
the last, i.e. for an MLP each hidden layer's pre-activation, plus the network's output (the
logits), under the name ``"logits"``. Pre-activations are used rather than ReLU outputs
because a Gaussian describes them far better (a rectified unit is zero on about half the
inputs, and targets drawn below zero could never be met).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from kdlight.errors import ConfigError
from kdlight.methods.taps import tapped_forward

log = logging.getLogger(__name__)

LOGITS = "logits"
STATS_VERSION = 1


@dataclass(frozen=True)
class Reconstruction:
    """How a transfer set is reconstructed (see :func:`reconstruct`): the one list of these settings.

    ``num_samples`` inputs, ``batch_size`` reconstructed at once, ``steps`` Adam steps of ``lr``
    on the inputs, ``class_balanced`` targets, ``init_std`` of the initial noise, ``clamp`` to the
    normalised image of pixel values [0, 1], ``seed``. Values are coerced and checked on creation.
    """

    num_samples: int = 20000
    batch_size: int = 1000
    steps: int = 50
    lr: float = 0.1
    class_balanced: bool = True
    init_std: float = 1.0
    clamp: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        for name, kind in (("num_samples", int), ("batch_size", int), ("steps", int),
                           ("lr", float), ("class_balanced", bool), ("init_std", float),
                           ("clamp", bool), ("seed", int)):  # fmt: skip
            object.__setattr__(self, name, kind(getattr(self, name)))
        if self.num_samples <= 0 or self.batch_size <= 0 or self.steps < 0:
            raise ConfigError(
                f"distill: num_samples={self.num_samples}, batch_size={self.batch_size}, "
                f"steps={self.steps} are invalid; num_samples and batch_size must be > 0 and "
                "steps >= 0."
            )


def activation_matching_loss(
    activations: dict[str, torch.Tensor], targets: dict[str, torch.Tensor]
) -> torch.Tensor:
    """Data-free reconstruction loss (Lopes, Fenu & Starner, 2017, "all layers" statistics).

    L = sum over layers l of mean over batch and units of (a_l(x) - t_l)^2

    ``activations[l]`` and ``targets[l]`` are ``(N, d_l)``; each layer weighs the same whatever
    its width. Each sample's term depends only on that sample, so a batch is N independent
    problems solved at once.
    """
    if set(activations) != set(targets):
        raise ValueError(
            f"activation matching: layers {sorted(activations)} and targets {sorted(targets)} differ."
        )
    terms = [F.mse_loss(activations[k].float(), targets[k].float()) for k in sorted(targets)]
    return torch.stack(terms).sum()


def default_layers(net: nn.Module) -> list[str]:
    """Names of every ``nn.Linear`` of ``net`` except the last one (whose output is the logits)."""
    names = [n for n, m in net.named_modules() if isinstance(m, nn.Linear)]
    return names[:-1]


def resolve_layers(net: nn.Module, layers: Sequence[str] | None) -> list[str]:
    """``layers`` checked against ``net.named_modules()``, or :func:`default_layers` when None."""
    if layers is None:
        return default_layers(net)
    known = dict(net.named_modules())
    bad = [n for n in layers if n not in known or n == "" or n == LOGITS]
    if bad:
        shown = ", ".join(n for n in list(known)[1:26])
        raise ConfigError(
            f"distill.layers={list(layers)} names {bad}, which are not modules of "
            f"{type(net).__name__}; valid names (named_modules()) are: {shown}, ... "
            f"(the logits are always recorded, as {LOGITS!r})."
        )
    return [str(n) for n in layers]


def teacher_activations(
    net: nn.Module, layers: Sequence[str], x: torch.Tensor
) -> dict[str, torch.Tensor]:
    """``{layer: (N, d_l)}`` for every named layer, plus ``"logits"``: the output of ``net(x)``."""
    logits, feats = tapped_forward(net, x, list(layers), role="teacher layer")
    out = {name: feats[name].flatten(1) for name in layers}
    out[LOGITS] = logits.flatten(1)
    return out


@torch.no_grad()
def record_statistics(
    teacher: nn.Module,
    batches: Iterable[torch.Tensor],
    num_classes: int,
    layers: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Per-layer, per-unit mean and std of ``teacher``'s activations over all inputs in ``batches``.

    For layer l with activations a_i (i = 1..N, one row per input):
        mean_l = (1/N) sum_i a_i,   std_l = sqrt((1/N) sum_i a_i^2 - mean_l^2)   (population std)
    and the same per class c over the inputs the teacher predicts as c (argmax of its logits).
    Sums are accumulated in float64. The teacher is run in eval mode.

    Returns ``{"version", "layers", "num_classes", "count" (N), "class_count" (C,),
    "mean"/"std": {layer: (d,)}, "class_mean"/"class_std": {layer: (C, d)}}`` with float32
    tensors on the CPU; ``layers`` ends with ``"logits"``. A class the teacher never predicts
    gets the overall statistics (and ``class_count`` 0, so sampling skips it).
    """
    names = resolve_layers(teacher, layers)
    was = teacher.training
    teacher.eval()
    sums: dict[str, torch.Tensor] = {}
    sqs: dict[str, torch.Tensor] = {}
    counts = torch.zeros(num_classes, dtype=torch.float64)
    try:
        for x in batches:
            acts = teacher_activations(teacher, names, x)
            pred = acts[LOGITS].argmax(dim=1).cpu()
            counts += torch.bincount(pred, minlength=num_classes).double()
            for name, a in acts.items():
                a = a.detach().double().cpu()
                if name not in sums:
                    sums[name] = torch.zeros(num_classes, a.shape[1], dtype=torch.float64)
                    sqs[name] = torch.zeros(num_classes, a.shape[1], dtype=torch.float64)
                sums[name].index_add_(0, pred, a)
                sqs[name].index_add_(0, pred, a * a)
    finally:
        teacher.train(was)
    n = counts.sum()
    if n == 0:
        raise ConfigError("cannot record activation statistics: the training set is empty.")
    order = [*names, LOGITS]
    stats: dict[str, Any] = {
        "version": STATS_VERSION,
        "layers": order,
        "num_classes": int(num_classes),
        "count": int(n),
        "class_count": counts.long(),
        "mean": {},
        "std": {},
        "class_mean": {},
        "class_std": {},
    }
    seen = counts > 0
    per = counts.clamp(min=1).unsqueeze(1)
    for name in order:
        mean = sums[name].sum(0) / n
        std = (sqs[name].sum(0) / n - mean * mean).clamp(min=0).sqrt()
        cmean = torch.where(seen.unsqueeze(1), sums[name] / per, mean)
        cstd = (sqs[name] / per - cmean * cmean).clamp(min=0).sqrt()
        cstd = torch.where(seen.unsqueeze(1), cstd, std)
        stats["mean"][name], stats["std"][name] = mean.float(), std.float()
        stats["class_mean"][name], stats["class_std"][name] = cmean.float(), cstd.float()
    return stats


def balanced_classes(class_count: torch.Tensor, n: int, generator: torch.Generator) -> torch.Tensor:
    """``n`` class indices, as equal in number as possible over the classes with a count > 0, shuffled."""
    present = torch.nonzero(class_count > 0).flatten()
    classes = present[torch.arange(n) % present.numel()]
    return classes[torch.randperm(n, generator=generator)]


def sample_targets(
    stats: dict[str, Any],
    classes: torch.Tensor,
    generator: torch.Generator,
    device: torch.device | str = "cpu",
) -> dict[str, torch.Tensor]:
    """Per-unit targets t_l ~ N(mean_l[c], std_l[c]) for each recorded layer, one row per entry of ``classes``.

    ``classes`` is (N,) long; an entry of -1 draws that row from the overall (unconditional)
    statistics instead of a class's.
    """
    cond = (classes >= 0).unsqueeze(1)
    idx = classes.clamp(min=0)
    out = {}
    for name in stats["layers"]:
        mean = torch.where(cond, stats["class_mean"][name][idx], stats["mean"][name])
        std = torch.where(cond, stats["class_std"][name][idx], stats["std"][name])
        noise = torch.randn(mean.shape, generator=generator)
        out[name] = (mean + std * noise).to(device)
    return out


def reconstruct(
    teacher: nn.Module,
    stats: dict[str, Any],
    input_shape: Sequence[int],
    num_samples: int,
    batch_size: int = 1000,
    steps: int = 50,
    lr: float = 0.1,
    class_balanced: bool = True,
    init_std: float = 1.0,
    bounds: tuple[torch.Tensor, torch.Tensor] | None = None,
    seed: int = 0,
    device: torch.device | str = "cpu",
    progress: Callable[[int, int, float, float], None] | None = None,
) -> dict[str, torch.Tensor]:
    """A transfer set of ``num_samples`` inputs reconstructed from ``stats``, batch by batch.

    Per batch of B samples: classes c (balanced over the classes the teacher predicted, or
    unconditional when ``class_balanced`` is false), targets t_l ~ N(mean_l[c], std_l[c]),
    x_0 ~ N(0, init_std^2) in the normalised input space, then ``steps`` Adam steps (``lr``) on
    L(x) = sum_l mean (a_l(x) - t_l)^2 over the recorded layers (logits included). With
    ``bounds = (lo, hi)`` (broadcastable to x) x is projected onto [lo, hi] after each step,
    e.g. the normalised image of pixel values [0, 1].

    Returns ``{"x" (N, *input_shape), "classes" (N,), "teacher_logits" (N, C),
    "loss_start" (batches,), "loss_end" (batches,)}`` on the CPU; ``loss_*`` are L at the
    first and after the last step, per batch. Deterministic for a given ``seed``.
    """
    if int(num_samples) <= 0 or int(batch_size) <= 0 or int(steps) < 0:
        raise ConfigError(
            f"data-free reconstruction: num_samples={num_samples}, batch_size={batch_size}, "
            f"steps={steps} are invalid; num_samples and batch_size must be > 0, steps >= 0."
        )
    if not float(lr) > 0:
        raise ConfigError(f"data-free reconstruction: lr={lr} is invalid; it must be > 0.")
    layers = [n for n in stats["layers"] if n != LOGITS]
    gen = torch.Generator().manual_seed(int(seed))
    n = int(num_samples)
    if class_balanced:
        classes = balanced_classes(stats["class_count"], n, gen)
    else:
        classes = torch.full((n,), -1, dtype=torch.long)
    was = teacher.training
    teacher.eval()
    lo, hi = (b.to(device) for b in bounds) if bounds is not None else (None, None)
    xs, logits, start, end = [], [], [], []
    n_batches = (n + int(batch_size) - 1) // int(batch_size)
    try:
        for b, first in enumerate(range(0, n, int(batch_size))):
            cls = classes[first : first + int(batch_size)]
            targets = sample_targets(stats, cls, gen, device)
            x = (torch.randn((cls.numel(), *input_shape), generator=gen) * float(init_std)).to(
                device
            )
            if lo is not None:
                x = torch.maximum(torch.minimum(x, hi), lo)
            x.requires_grad_(True)
            opt = torch.optim.Adam([x], lr=float(lr))
            first_loss = last_loss = float("nan")
            for step in range(int(steps) + 1):
                acts = teacher_activations(teacher, layers, x)
                loss = activation_matching_loss(acts, targets)
                if step == 0:
                    first_loss = float(loss.detach())
                if step == int(steps):
                    last_loss = float(loss.detach())
                    break
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                if lo is not None:
                    with torch.no_grad():
                        x.copy_(torch.maximum(torch.minimum(x, hi), lo))
            with torch.no_grad():
                xs.append(x.detach().cpu())
                logits.append(teacher(x).float().cpu())
            start.append(first_loss)
            end.append(last_loss)
            if progress is not None:
                progress(b + 1, n_batches, first_loss, last_loss)
    finally:
        teacher.train(was)
    return {
        "x": torch.cat(xs),
        "classes": classes,
        "teacher_logits": torch.cat(logits),
        "loss_start": torch.tensor(start),
        "loss_end": torch.tensor(end),
    }
