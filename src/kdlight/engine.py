"""The Lightning systems: one engine runs every distillation method; a classifier trains alone.

- :class:`EvalModule`: validation/test loops, the NaN guard and the optimizer wiring.
- :class:`ClassifierModule`: cross-entropy training of one network (teachers, baselines).
- :class:`DistillationModule`: a student learning from a frozen teacher through any
  :class:`kdlight.methods.base.Method`.
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from collections.abc import Callable
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.aggregation import MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from kdlight.errors import ConfigError, TrainingDiverged
from kdlight.hooks import plain, tapped_forward
from kdlight.methods.base import RAW, Context, Form, Method

log = logging.getLogger(__name__)

#: Between the steps the loggers write, ``train/loss`` is refreshed for the progress bar at most this often.
BAR_REFRESH_S = 0.5

#: Plain attributes set on every step: Lightning's hook name (set and restored around each of
#: the ~20 hooks a step calls) and the training-accuracy counters. None is ever a parameter,
#: buffer or submodule, so :meth:`EvalModule.__setattr__` stores them directly.
STEP_ATTRIBUTES = frozenset({"_current_fx_name", "_train_hits", "_train_seen", "_bar_time"})

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


def logs_this_step(trainer) -> bool:
    """Whether Lightning hands this training step's values to the loggers.

    Lightning writes step values every ``trainer.log_every_n_steps`` steps (and when training
    stops, and every step under ``fast_dev_run``); a value logged on any other step only
    reaches the progress bar and ``trainer.callback_metrics``.
    """
    if trainer.fast_dev_run:
        return True
    try:
        return bool(trainer._logger_connector.should_update_logs)
    except AttributeError:  # another Lightning: log every step, as before
        return True


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


def _fills_momentum(optimizer: torch.optim.Optimizer) -> bool:
    return isinstance(optimizer, torch.optim.SGD) and any(
        g.get("fused") and g.get("momentum") for g in optimizer.param_groups
    )


class EvalModule(L.LightningModule):
    """Validation/test loops, NaN guard and optimizer configuration over ``self.net``.

    ``optimizer`` is a partial (``_partial_: true`` in Hydra) called with the trainable
    parameters; ``scheduler`` (optional) is a partial called with the optimizer and stepped
    once per epoch.
    """

    net: nn.Module

    def __init__(
        self,
        num_classes: int,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., Any] | None = None,
        compile: bool = False,
        fused_optimizer: bool | str = "auto",
    ) -> None:
        super().__init__()
        if optimizer is None:
            raise ConfigError("module.optimizer is missing; give a partial optimizer config.")
        self.optimizer_factory = optimizer
        self.fused_optimizer = fused_optimizer_setting(fused_optimizer)
        self.scheduler_factory = scheduler
        self.compile_net = bool(compile)
        self.val_acc = MulticlassAccuracy(num_classes=num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes=num_classes, average="micro")
        # evaluation losses as sample-weighted means: an update costs ~40 us where a per-step
        # self.log costs ~1.3 ms on a CPU (Lightning moves its result object to the device each call)
        self.val_loss = MeanMetric()
        self.test_loss = MeanMetric()
        # training accuracy: each step adds its count of correct predictions to a running tensor
        # (no host sync, a few microseconds where a metric update costs ~100 on a CPU); the
        # epoch's accuracy enters this weighted mean once, in on_train_epoch_end, which sums it
        # across processes, so the logged value is the accuracy over every rank's samples
        self.train_acc = MeanMetric()
        self._train_hits: torch.Tensor | None = None
        self._train_seen = 0
        self._bar_time = -math.inf

    def __setattr__(self, name: str, value: Any) -> None:
        # nn.Module.__setattr__ checks the value against parameters, buffers and submodules
        # (about 1.9 us on a CPU); a step sets these ~40 times and they are never any of those
        if name in STEP_ATTRIBUTES:
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)

    def setup(self, stage: str) -> None:
        if self.compile_net and stage == "fit":
            self.net = torch.compile(self.net)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def check_finite(self, loss: torch.Tensor) -> None:
        """Stop training with a clear message at the first non-finite loss."""
        if not torch.isfinite(loss):
            raise TrainingDiverged(
                f"the training loss became {loss.item()} at global step {self.global_step} "
                f"(epoch {self.current_epoch}); lower module.optimizer.lr or check the data (the last "
                "good checkpoint is kept)."
            )

    def log_train_terms(self, terms: dict[str, torch.Tensor], batch_size: int) -> None:
        """Log ``train/<name>`` for every term, where and when Lightning would show it.

        Each ``self.log`` call costs Lightning's bookkeeping (about as much as a small model's
        step on a CPU), yet a step value reaches the loggers only on the steps they write (see
        :func:`logs_this_step`). So every term is logged on those steps, which keeps every
        TensorBoard/CSV point of logging them all every step; on the other steps only
        ``train/loss`` is logged, for the progress bar, at most every ``BAR_REFRESH_S`` seconds
        (and on the first step of each epoch). ``trainer.callback_metrics`` therefore holds the
        values of the last logged step (every step with ``trainer.log_every_n_steps=1``).
        """
        trainer = self._trainer
        if trainer is None or logs_this_step(trainer):
            for name, value in terms.items():
                self.log(f"train/{name}", value, prog_bar=name == "loss", batch_size=batch_size)
            self._bar_time = time.monotonic()
        elif trainer.progress_bar_callback is not None:
            now = time.monotonic()
            if now - self._bar_time >= BAR_REFRESH_S:
                self.log("train/loss", terms["loss"], prog_bar=True, batch_size=batch_size)
                self._bar_time = now

    def update_train_acc(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        """Count this batch into the epoch's ``train/acc`` (logged in :meth:`on_train_epoch_end`)."""
        hits = (logits.detach().argmax(dim=1) == labels).sum()
        self._train_hits = hits if self._train_hits is None else self._train_hits.add_(hits)
        self._train_seen += labels.numel()

    def on_train_epoch_start(self) -> None:
        self._bar_time = -math.inf
        self._train_hits, self._train_seen = None, 0

    def on_train_epoch_end(self) -> None:
        # the metric object: Lightning computes it (synced across processes) and resets it
        if self._train_seen:
            self.train_acc.update(self._train_hits / self._train_seen, weight=self._train_seen)
            self.log("train/acc", self.train_acc, on_step=False, on_epoch=True)

    def _eval_metrics(self, stage: str) -> tuple[MulticlassAccuracy, MeanMetric]:
        return (self.val_acc, self.val_loss) if stage == "val" else (self.test_acc, self.test_loss)

    def _eval_step(self, batch: dict[str, Any], stage: str) -> torch.Tensor:
        acc, mean_loss = self._eval_metrics(stage)
        logits = self.net(batch["x"])
        y = batch["y"]
        loss = F.cross_entropy(logits.float(), y)
        # updates only: a metric's forward() also computes a batch value nobody reads, and each
        # self.log call moves Lightning's result object to the device (about 1 ms on a CPU); the
        # epoch's values are logged once, in _log_eval_epoch
        acc.update(logits, y)
        mean_loss.update(loss.detach(), weight=y.numel())
        return logits

    def _log_eval_epoch(self, stage: str) -> None:
        acc, mean_loss = self._eval_metrics(stage)
        # the metric objects: Lightning computes them over the epoch (synced across processes)
        # and resets them; an epoch without a batch logs nothing, as before
        if acc.update_called:
            self.log(f"{stage}/loss", mean_loss)
            self.log(f"{stage}/acc", acc, prog_bar=True)

    def on_validation_epoch_end(self) -> None:
        self._log_eval_epoch("val")

    def on_test_epoch_end(self) -> None:
        self._log_eval_epoch("test")

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        return self._eval_step(batch, "test")  # logits, for test-end callbacks

    def trainable_parameters(self):
        return self.net.parameters()

    def optimizer_step(self, epoch: int, batch_idx: int, optimizer, optimizer_closure=None) -> None:
        # Lightning's default, plus the momentum buffers a fused SGD needs once the closure has
        # computed this step's gradients (see fill_momentum_buffers)
        inner = getattr(optimizer, "optimizer", optimizer)  # the torch optimizer Lightning wraps
        if optimizer_closure is not None and _fills_momentum(inner):
            closure = optimizer_closure

            def optimizer_closure():
                out = closure()
                fill_momentum_buffers(inner)
                return out

        optimizer.step(closure=optimizer_closure)

    def configure_optimizers(self):
        trainer = self._trainer
        clips = (
            trainer is not None
            and bool(trainer.gradient_clip_val)
            and str(trainer.precision).startswith("16")
        )
        optimizer = make_optimizer(
            self.optimizer_factory,
            [p for p in self.trainable_parameters() if p.requires_grad],
            self.fused_optimizer,
            clips_scaled_gradients=clips,
        )
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer=optimizer)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"},
        }


def check_outputs(net: nn.Module, example: torch.Tensor, num_classes: int, role: str) -> None:
    """Raise :class:`ConfigError` unless ``net`` takes ``example``'s shape and predicts ``num_classes``."""
    was = net.training
    net.eval()
    try:
        with torch.no_grad():
            out = net(example)
    except RuntimeError as exc:
        raise ConfigError(
            f"the {role} {type(net).__name__} cannot take this dataset's inputs of shape "
            f"{tuple(example.shape[1:])}: {str(exc).splitlines()[0]}"
        ) from None
    finally:
        net.train(was)
    if out.shape[1] != num_classes:
        raise ConfigError(
            f"the {role} {type(net).__name__} predicts {out.shape[1]} classes but the data has "
            f"{num_classes}; set {role}.num_classes={num_classes}."
        )


class ClassifierModule(EvalModule):
    """Cross-entropy training of ``net``; logs ``train/loss``, ``train/acc``, ``val/*``, ``test/*``."""

    def __init__(
        self,
        net: nn.Module,
        num_classes: int,
        optimizer,
        scheduler=None,
        compile: bool = False,
        fused_optimizer: bool | str = "auto",
    ):
        super().__init__(num_classes, optimizer, scheduler, compile, fused_optimizer)
        self.net = net
        self.save_hyperparameters(ignore=["net", "optimizer", "scheduler"])

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        if "y" not in batch:
            raise ConfigError(
                "cross-entropy training needs labels but data.unlabeled=true; "
                "train on unlabeled data with distillation (distill=kd distill.alpha=1.0)."
            )
        logits = self.net(batch["x"])
        loss = F.cross_entropy(logits.float(), batch["y"])
        self.check_finite(loss)
        self.update_train_acc(logits, batch["y"])
        self.log_train_terms({"loss": loss}, logits.shape[0])
        return loss


class DistillationModule(EvalModule):
    """Trains ``student`` from a frozen ``teacher`` through ``method`` (any distillation method).

    The teacher is frozen: always in eval mode (dropout off, BatchNorm statistics fixed), no
    gradients, not in the optimizer, and left out of checkpoints (it is rebuilt from its own
    file). Each step runs what ``method.plan(epoch)`` asks for: forward hooks only on the
    layers it names and only during the step; teacher logits, and the forms the method declares
    for its teacher layers (:meth:`Method.teacher_forms`), from ``teacher_store`` (computed once
    per (view, sample) for the exact same inputs, in one teacher pass) when the method allows
    it and every teacher layer the step taps has a stored form, else online (the forms then
    computed from the taps); logits carried by the batch (a data-free transfer set) win.
    Which it is is decided once per run (compact forms are always stored; raw maps only when
    they fit ``teacher_store.max_gb`` over the run's views) and logged when training starts.
    The method's own parameters are in the optimizer and, with its buffers, in checkpoints.
    Logs ``train/<term>`` for every term the method returns, ``train/acc`` and
    ``test/agreement`` (top-1 agreement of student and teacher on the test set).
    """

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module,
        method: Method,
        num_classes: int,
        optimizer,
        scheduler=None,
        compile: bool = False,
        teacher_store=None,
        log_agreement: bool = True,
        fused_optimizer: bool | str = "auto",
    ) -> None:
        super().__init__(num_classes, optimizer, scheduler, compile, fused_optimizer)
        if not isinstance(method, Method):
            raise ConfigError(
                f"distill._target_ builds a {type(method).__name__}, which is not a kdlight method "
                "(a subclass of kdlight.methods.base.Method)."
            )
        self.net = student
        self.teacher = teacher
        self.teacher.requires_grad_(False)
        self.teacher.eval()
        self.method = method
        self.teacher_store = teacher_store if method.uses_store else None
        self.log_agreement = bool(log_agreement)
        self.agreement = MulticlassAccuracy(num_classes=num_classes, average="micro")
        self.num_classes = int(num_classes)
        self._positions: torch.Tensor | None = None
        self._positions_on_table: torch.Tensor | None = None
        self._served = None  # the StoredView of this epoch's view, on the training device
        self._served_tables: dict[str, str] = {}  # teacher layer -> its table in self._served
        self._table_view: int | None = None
        self._forms: dict[str, Form] = {}  # teacher layer -> the form the method reads
        self._form_shapes: dict[str, tuple[int, ...]] = {}
        self._stored_layers: frozenset[str] | None = None  # decided at the first epoch
        self._built = False
        self.strict_loading = False  # teacher weights are not stored in our checkpoints
        self.save_hyperparameters(
            ignore=["student", "teacher", "method", "optimizer", "scheduler", "teacher_store"]
        )

    @property
    def student(self) -> nn.Module:
        return self.net

    def train(self, mode: bool = True):
        super().train(mode)
        self.teacher.eval()
        return self

    # ---- the method's own layers ---------------------------------------------------------
    @torch.no_grad()
    def build_method(self, example: torch.Tensor) -> None:
        """Give the method the tapped features of ``example`` so it can size its own layers."""
        student = plain(self.net)
        self.method.resolve_layers(student, self.teacher)
        was = student.training
        student.eval()
        try:
            s_layers, t_layers = self.method.student_layers, self.method.teacher_layers
            _, s_feats = tapped_forward(student, example, s_layers, True, "student layer")
            _, t_feats = tapped_forward(self.teacher, example, t_layers, True, "teacher layer")
        finally:
            student.train(was)
        self.method.build(s_feats, t_feats, self.num_classes)
        self.method.to(example.device)
        self._forms = {n: f for n, f in self.method.teacher_forms().items() if n in t_feats}
        self._form_shapes = {
            n: tuple(int(d) for d in f.fn(t_feats[n]).shape[1:]) for n, f in self._forms.items()
        }
        self._built = True

    def setup(self, stage: str) -> None:
        if not self._built:
            dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
            dm = getattr(dm, "real", dm)  # a transfer-set module wraps the real data
            if dm is None or not hasattr(dm, "view_batch"):
                raise RuntimeError(
                    "DistillationModule needs an example input to build its method: call "
                    "build_method(example) or fit with a kdlight data module."
                )
            idx = dm.train_idx if dm.train_idx.numel() else dm.val_idx
            self.method.bind_data(
                int(dm.arrays.train_y.numel()),
                dm.train_idx,
                None if getattr(dm, "unlabeled", False) else dm.arrays.train_y[dm.train_idx],
            )
            self.build_method(dm.view_batch(idx[:2], None))
        super().setup(stage)

    def fit_datamodule(self, datamodule):
        """The data module to fit on (the method may swap the training data, e.g. data-free KD)."""
        return self.method.fit_datamodule(datamodule, self.teacher)

    def trainable_parameters(self):
        return itertools.chain(self.net.parameters(), self.method.parameters())

    # ---- teacher outputs -----------------------------------------------------------------
    def _apply_forms(self, feats: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Online taps turned into the forms the method reads (raw where it declares none)."""
        return {n: self._forms[n].fn(f) if n in self._forms else f for n, f in feats.items()}

    @torch.no_grad()
    def teacher_logits(self, batch: dict[str, Any]) -> torch.Tensor:
        """The teacher's logits for this batch's exact inputs: from the store, or online."""
        if self.teacher_store is None or self._positions is None:
            return self.teacher(batch["x"]).float()
        view = batch.get("view") or 0
        if view != self._table_view or self._served is None:  # not this epoch's view
            pos = self._positions[batch["idx"].cpu()]
            return self.teacher_store.gather(view, pos).to(batch["x"].device)
        # on the table's device, no host sync; a row outside training is out of range: IndexError
        return self._served.logits(self._positions_on_table[batch["idx"]])

    def _served_from_store(self, plan, batch: dict[str, Any]) -> bool:
        """Whether this step's teacher outputs all come from this epoch's stored view."""
        return (
            self._served is not None
            and (batch.get("view") or 0) == self._table_view
            and (plan.teacher_logits or bool(plan.teacher_layers))
            and set(plan.teacher_layers) <= self._served_tables.keys()
        )

    def _store_serves(self, epoch: int) -> bool:
        plan = self.method.plan(epoch)
        if self.teacher_store is None or not (plan.teacher_logits or plan.teacher_layers):
            return False
        return set(plan.teacher_layers) <= (self._stored_layers or frozenset())

    def _form_tables(self) -> dict[str, Any]:
        """Teacher layer -> the store table of its form."""
        return {
            n: self.teacher_store.feature_table(n, f.name, self._form_shapes[n])
            for n, f in self._forms.items()
        }

    def _decide_store(self, dm) -> None:
        """Which teacher layers the store keeps for this run (once); say so in the log."""
        store, name = self.teacher_store, type(self.method).__name__.lower()
        tapped = list(dict.fromkeys(self.method.teacher_layers))
        tables = self._form_tables()
        views = (getattr(dm, "views", None) or self.trainer.max_epochs) if dm.augment else 1
        rows = int(dm.train_idx.numel())
        per_view = rows * sum(tables[n].row_bytes for n in tables)
        # compact forms are always kept; raw maps only within max_gb over the run's views
        raw = rows * sum(t.row_bytes for n, t in tables.items() if self._forms[n].name == RAW.name)
        total_gb = raw * views / 2**30 if views and views > 0 else math.inf
        forms = ", ".join(f"{self._forms[n].name} of {n}" for n in tables)
        self._stored_layers = frozenset()
        if not tapped:
            msg = f"teacher store: distill={name} is served the teacher's logits"
        elif not tables or set(tapped) - set(tables):
            raw = ", ".join(sorted(set(tapped) - set(tables)))
            msg = (
                f"teacher store: distill={name} declares no store form for the teacher layer(s) "
                f"{raw}, so the teacher runs online on the steps that tap them"
            )
        elif raw and total_gb > store.max_gb:
            msg = (
                f"teacher store: distill={name} would keep {forms}: {raw / 2**20:.1f} MB of raw "
                f"maps per view, {total_gb:.2f} GB over the run's views > teacher_store.max_gb="
                f"{store.max_gb:g}, so the teacher runs online on the steps that tap them"
            )
        else:
            self._stored_layers = frozenset(tables)
            msg = (
                f"teacher store: distill={name} is served the teacher's logits and {forms} "
                f"({store.dtype}, {per_view / 2**20:.1f} MB per view)"
            )
        if self.trainer.is_global_zero:
            log.info(msg)

    def on_train_epoch_start(self) -> None:
        super().on_train_epoch_start()
        if self.teacher_store is None:
            return
        dm = self.trainer.datamodule
        if self._stored_layers is None:
            self._decide_store(dm)
        if not self._store_serves(self.current_epoch):
            return
        train_idx = dm.train_idx
        if self._positions is None:
            # row -> position in the store; rows not trained on get N (out of range), never a
            # silent wrong row
            self._positions = torch.full(
                (dm.arrays.train_y.numel(),), train_idx.numel(), dtype=torch.long
            )
            self._positions[train_idx] = torch.arange(train_idx.numel())
        view = dm.current_view() if dm.augment else 0
        # this epoch's tables: the logits and the forms of the layers its steps tap
        layers = list(dict.fromkeys(self.method.plan(self.current_epoch).teacher_layers))
        tables = {n: t for n, t in self._form_tables().items() if n in layers}

        def compute(pos: torch.Tensor) -> torch.Tensor | dict[str, torch.Tensor]:
            x = dm.view_batch(train_idx[pos], view if dm.augment else None, device=self.device)
            with torch.inference_mode():
                if not layers:
                    return self.teacher(x).float().cpu()
                logits, feats = tapped_forward(self.teacher, x, layers, False, "teacher layer")
                out = {"logits": logits.float().cpu()}
                for n in layers:
                    out[tables[n].name] = self._forms[n].fn(feats[n]).float().cpu()
                return out

        served = self.teacher_store.get_view(
            view,
            compute,
            {t.name: t.row_shape for t in tables.values()},
            progress=self.trainer.is_global_zero,
        )
        # the view just validated by get_view(), kept for the epoch on the training device (a
        # CPU table stays a memory map): each step gathers its rows without re-reading files
        self._served = served.to(self.device)
        self._served_tables = {n: t.name for n, t in tables.items()}
        self._table_view = view
        self._positions_on_table = self._positions.to(self.device)

    # ---- steps ---------------------------------------------------------------------------
    def context(self, batch: dict[str, Any]) -> Context:
        """Run what the method's plan asks for on ``batch`` and collect it into a :class:`Context`."""
        self.method.check_batch(batch)
        epoch = self.current_epoch
        plan = self.method.plan(epoch)
        labels = batch.get("y")
        if labels is None and self.method.needs_labels:
            raise ConfigError(
                f"distill={type(self.method).__name__} needs labels but the training data is "
                "unlabeled (data.unlabeled=true); use a method or setting that learns from the "
                "teacher alone (e.g. distill=kd distill.alpha=1.0)."
            )
        x = batch["x"]
        stop = plan.stop_early
        if plan.student_layers:
            s_logits, s_feats = tapped_forward(
                self.net, x, plan.student_layers, stop, "student layer"
            )
        else:
            s_logits, s_feats = self.net(x), {}
        t_logits, t_feats = None, {}
        if "teacher_logits" in batch:  # computed with the batch (data-free transfer set)
            t_logits = batch["teacher_logits"]
        elif self._served_from_store(plan, batch):
            # on the tables' device, no host sync; a row outside training: IndexError
            pos = self._positions_on_table[batch["idx"]]
            if plan.teacher_logits:
                t_logits = self._served.logits(pos)
            for n in plan.teacher_layers:
                t_feats[n] = self._served.rows(self._served_tables[n], pos).float()
        elif plan.teacher_layers:
            with torch.no_grad():
                t_logits, t_feats = tapped_forward(
                    self.teacher, x, plan.teacher_layers, stop, "teacher layer"
                )
                t_feats = self._apply_forms(t_feats)
            t_logits = None if t_logits is None else t_logits.float()
        elif plan.teacher_logits:
            t_logits = self.teacher_logits(batch)
        trainer = self._trainer
        return Context(
            student_logits=s_logits,
            teacher_logits=t_logits,
            labels=labels,
            idx=batch["idx"],
            epoch=epoch,
            step=self.global_step,
            max_epochs=trainer.max_epochs if trainer is not None else None,
            student_feats=s_feats,
            teacher_feats=t_feats,
            batch=batch,
        )

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        ctx = self.context(batch)
        terms = self.method(ctx)
        loss = terms["loss"]
        self.check_finite(loss)
        if ctx.labels is not None and ctx.student_logits is not None:
            self.update_train_acc(ctx.student_logits, ctx.labels)
        self.log_train_terms(terms, batch["x"].shape[0])
        return loss

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        logits = self._eval_step(batch, "test")
        if self.log_agreement:
            with torch.no_grad():
                teacher_pred = self.teacher(batch["x"]).argmax(dim=1)
            self.agreement.update(logits, teacher_pred)
        return logits

    def on_test_epoch_end(self) -> None:
        super().on_test_epoch_end()
        if self.log_agreement and self.agreement.update_called:
            self.log("test/agreement", self.agreement)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("state_dict", {})
        for key in [k for k in state if k.startswith("teacher.")]:
            del state[key]
