"""The method API: what a distillation method declares and the one context it computes from.

A method is an ``nn.Module`` in its own file ``kdlight/methods/<name>.py`` with a config
``conf/distill/<name>.yaml`` whose ``_target_`` is the class. The engine
(:class:`kdlight.engine.DistillationModule`) runs every method the same way:

1. Before training, :meth:`Method.resolve_layers` sees both networks (to resolve ``auto``
   layer settings), :meth:`Method.bind_data` the training rows (for memory banks), and
   :meth:`Method.build` is called once with the student's and teacher's
   tapped features for two example inputs, so the method can size its own layers
   (regressors, embedding heads); its parameters join the optimizer and its parameters and
   buffers (memory banks) are saved in checkpoints.
2. Each training step the engine asks :meth:`Method.plan` what the step needs (layers to tap
   on each side, whether a forward may stop at the last tapped layer, whether teacher logits
   are needed), runs the networks with forward hooks on exactly those layers (removed after
   the step), and calls :meth:`Method.forward` with a :class:`Context`.
3. The method returns ``{"loss": total, "<term>": value, ...}``; every entry is logged as
   ``train/<term>``.

Teacher store. The teacher's logits for each (view, sample) are computed once and served from
disk (exact: same inputs). A method may also declare, per tapped teacher layer, the compact
:class:`Form` its loss reads (an attention map, a pooled embedding, or the raw map): then
``ctx.teacher_feats[layer]`` always holds that form, computed online from the tap or served
from the store, which keeps it beside the logits (a raw map only when the run's raw maps fit
``teacher_store.max_gb``; see :meth:`Method.teacher_forms`). Layers without a form are tapped
online.

Optional hooks (each default keeps the behaviour above):

- ``needs_teacher = False``: the method learns without a teacher network (teacher-free KD,
  self-KD); no teacher is built, loaded, trained or stored, ``ctx.teacher_logits`` is None and
  ``ctx.teacher_feats`` empty.
- :meth:`Method.deployed`: the network validation, test, ``kdlight eval`` and ``kdlight export``
  use instead of the bare student (a student head reusing the teacher's classifier);
  :meth:`Method.restore` rebuilds the method's layers from a checkpoint for them.
- :meth:`Method.optimizer` + :meth:`Method.separate_gradients`: an optimizer of the method's
  own that receives the gradient of part of the loss separately (two-momentum SGD).

A method never subclasses the engine and the engine never names a method.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from kdlight.errors import ConfigError


@dataclass(frozen=True)
class Plan:
    """What one training step needs from the networks.

    ``student_layers`` / ``teacher_layers``: ``named_modules()`` names whose outputs the step
    reads (``Context.student_feats`` / ``teacher_feats``). ``stop_early``: the forwards may stop
    right after the last tapped layer (layers above it neither run nor update BatchNorm
    statistics), so no logits are computed on a side with taps. ``teacher_logits``: the step
    reads the teacher's logits (from the store when the teacher has no taps).
    """

    student_layers: tuple[str, ...] = ()
    teacher_layers: tuple[str, ...] = ()
    stop_early: bool = False
    teacher_logits: bool = True


@dataclass(frozen=True)
class Form:
    """What the teacher store may keep of one tapped teacher layer: a name and a pure function.

    ``fn`` maps the layer's raw output batch (N, ...) to the (N, ...) tensor the method reads.
    It must be pure and per-sample (row i of its output depends only on row i of its input,
    no state), so the store can compute it once per (view, sample) in large batches. ``name``
    identifies the store's files next to the layer name: it must change whenever ``fn``'s
    output would (put its parameters in it, e.g. ``attention_p2_8x8``).
    """

    name: str
    fn: Callable[[torch.Tensor], torch.Tensor]


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


def _flatten(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(x.shape[0], -1)


#: The whole map, as tapped (stored only when the run's raw maps fit ``teacher_store.max_gb``).
RAW = Form("raw", _identity)
#: The feature flattened to (N, D): the pooled embedding a classifier reads (``fc:in``).
EMBEDDING = Form("embedding", _flatten)


@dataclass
class Context:
    """Everything a method may compute its terms from, for one training batch.

    ``teacher_feats[layer]`` is the method's declared :class:`Form` of that layer (see
    :meth:`Method.teacher_forms`), else the layer's raw output.
    """

    student_logits: torch.Tensor | None
    teacher_logits: torch.Tensor | None
    labels: torch.Tensor | None
    idx: torch.Tensor
    epoch: int = 0
    step: int = 0
    max_epochs: int | None = None
    student_feats: dict[str, torch.Tensor] = field(default_factory=dict)
    teacher_feats: dict[str, torch.Tensor] = field(default_factory=dict)
    batch: dict[str, Any] = field(default_factory=dict)


class Method(nn.Module):
    """Base class of every distillation method; subclasses set the attributes and ``forward``.

    Attributes:
        needs_labels: the loss reads ``ctx.labels`` (False: it can train on unlabeled data).
        student_layers / teacher_layers: layers tapped every step (see :meth:`plan`).
        uses_store: the teacher outputs it reads may come from the teacher store (logits,
            and the forms of :meth:`teacher_forms`; taps without a form run online).
        needs_teacher: the method reads a teacher network. False (teacher-free methods): no
            teacher is built, loaded, trained or stored (a configured one is ignored with a
            warning), ``resolve_layers`` gets ``teacher=None``, ``build`` empty teacher features,
            and every step ``ctx.teacher_logits=None``, ``ctx.teacher_feats={}``.
    """

    needs_labels: bool = True
    student_layers: tuple[str, ...] = ()
    teacher_layers: tuple[str, ...] = ()
    uses_store: bool = True
    needs_teacher: bool = True

    def plan(self, epoch: int) -> Plan:
        """What the step of ``epoch`` needs; the default taps the declared layers every step."""
        return Plan(tuple(self.student_layers), tuple(self.teacher_layers))

    def resolve_layers(self, student: nn.Module, teacher: nn.Module) -> None:
        """Turn layer settings such as ``auto`` into names of these networks (called first, once).

        The default keeps ``student_layers`` / ``teacher_layers`` as configured.
        """

    def bind_data(
        self, num_rows: int, train_idx: torch.Tensor, train_labels: torch.Tensor | None
    ) -> None:
        """Told, before :meth:`build`, which dataset rows training draws ``ctx.idx`` from.

        ``num_rows``: the training arrays' length (``ctx.idx`` < num_rows); ``train_idx``: the
        rows actually trained on; ``train_labels``: their labels, or None when the student may
        not see labels (``data.unlabeled``). Methods with per-sample state (memory banks) size
        it here; the default ignores it.
        """

    def build(
        self,
        student_feats: dict[str, torch.Tensor],
        teacher_feats: dict[str, torch.Tensor],
        num_classes: int,
    ) -> None:
        """Create the method's own layers from example features (called once, before training)."""

    def teacher_forms(self) -> dict[str, Form]:
        """Teacher layer -> the :class:`Form` the loss reads from it (called after :meth:`build`).

        The engine puts ``form.fn(output)`` in ``ctx.teacher_feats[layer]``, online or from the
        teacher store, which keeps it per (view, sample) (:data:`RAW` maps only when they fit
        ``teacher_store.max_gb``).
        Default: none (every teacher tap runs online and is served raw).
        """
        return {}

    def check_batch(self, batch: dict[str, Any]) -> None:
        """Raise if ``batch`` cannot be trained on; called before any forward (default: accept)."""

    def fit_datamodule(self, datamodule, teacher: nn.Module):
        """The data module to train on; the default is the real one (data-free KD swaps it)."""
        return datamodule

    def forward(self, ctx: Context) -> dict[str, torch.Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError

    def hparams(self) -> dict[str, Any]:
        """Scalar settings that tell runs apart (reports, TensorBoard); default: none."""
        return {}

    # ---- evaluation / deployment ---------------------------------------------------------
    def deployed(self, student: nn.Module) -> nn.Module | None:
        """The network that predicts at evaluation and deployment, or None: the student itself.

        Called after :meth:`build` (or :meth:`restore`). The engine's validation and test steps,
        ``kdlight eval`` and ``kdlight export`` run the returned module, which may reuse the
        method's own submodules (they are in the student's checkpoint under ``method.``; a part
        taken from the teacher must be copied into the method, frozen, to be saved with it).
        It must be traceable for export (plain tensor ops on ``x`` -> logits).
        """
        return None

    def restore(self, state: dict[str, torch.Tensor], student: nn.Module) -> None:
        """Load the method's checkpoint entries (``method.`` stripped) without :meth:`build`.

        Readers of a finished run (``kdlight eval``, ``kdlight export``) call it, with the
        student, before :meth:`deployed` when the method overrides that; they have neither the
        teacher nor data. The default loads ``state`` into the modules the constructor made; a
        method that sizes its layers in :meth:`build` creates them from ``state``'s shapes first.
        """
        self.load_state_dict(state)

    # ---- optimisation --------------------------------------------------------------------
    def restarts_optimizer(self, epoch: int) -> bool:
        """True: the optimizer's state (momenta, Adam's moments) is cleared before ``epoch``.

        A staged method whose authors train its later stage with a new optimizer (AB's and
        FSP's init stages: RepDistiller's ``init`` builds its own SGD) says so for the later
        stage's first epoch, so the first stage's gradient scale is not carried over (Adam
        remembers about 1/(1 - beta2) steps). The learning-rate schedule is not restarted.
        Default: never.
        """
        return False

    def optimizer(self, factory: Callable[..., Any], params: list[torch.Tensor]):
        """The optimizer of ``params``, or None: the engine's (``factory(params=...)``).

        ``factory`` is ``module.optimizer`` (a partial: read its ``func`` / ``keywords``, and
        raise :class:`ConfigError` naming a setting the method cannot train with). The
        scheduler, gradient clipping and mixed precision apply to it as to any optimizer.
        """
        return None

    def separate_gradients(
        self, terms: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """``(task loss, distillation loss)`` whose gradients the optimizer takes apart, or None.

        None (default): the engine back-propagates ``terms["loss"]``. Otherwise the task loss is
        back-propagated by Lightning (``param.grad``: mixed-precision scaling, gradient clipping
        and accumulation apply to it), and the distillation loss's gradient is computed with
        ``torch.autograd.grad`` (scaled like the task loss, divided by the accumulation) and
        handed to ``optimizer.add_distill_gradients(params, grads, scale)`` before the step,
        so :meth:`optimizer` must return an optimizer with that method. Single-process only.
        """
        return None


def check_range(
    name: str,
    value: float,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
) -> float:
    """``float(value)``, or :class:`ConfigError` naming ``distill.<name>`` and the valid range."""
    v = float(value)
    bad = (low is not None and (v <= low if low_open else v < low)) or (
        high is not None and v > high
    )
    if bad or v != v:
        if high is None:
            valid = f"{'>' if low_open else '>='} {low:g}"
        elif low is None:
            valid = f"<= {high:g}"
        else:
            valid = f"in {'(' if low_open else '['}{low:g}, {high:g}]"
        raise ConfigError(f"distill.{name}={value} is invalid; it must be {valid}.")
    return v
