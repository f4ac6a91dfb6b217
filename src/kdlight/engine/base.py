"""What every kdlight system shares: validation/test loops, the NaN guard, the optimizer wiring.

:class:`EvalModule` is the base of :class:`~kdlight.engine.classifier.ClassifierModule` and
:class:`~kdlight.engine.distill.DistillationModule`; it trains nothing itself.
"""

from __future__ import annotations

import functools
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

from kdlight.data.protocol import as_batch
from kdlight.errors import ConfigError, TrainingDiverged
from kdlight.optim import (
    fill_momentum_buffers,
    fills_momentum,
    fused_optimizer_setting,
    make_optimizer,
)

#: The optimizer of the library API when none is given: SGD, lr 0.01, momentum 0.9.
DEFAULT_OPTIMIZER = functools.partial(torch.optim.SGD, lr=0.01, momentum=0.9)

#: Between the steps the loggers write, ``train/loss`` is refreshed for the progress bar at most this often.
BAR_REFRESH_S = 0.5

#: Plain attributes set on every step: Lightning's hook name (set and restored around each of
#: the ~20 hooks a step calls) and the training-accuracy counters. None is ever a parameter,
#: buffer or submodule, so :meth:`EvalModule.__setattr__` stores them directly.
STEP_ATTRIBUTES = frozenset(
    {"_current_fx_name", "_train_hits", "_train_seen", "_bar_time", "_term_sums", "_term_seen"}
)


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


def num_classes_of(net: nn.Module) -> int:
    """The class count a classifier predicts: the width of its last layer with ``out_features``."""
    last = [m for m in net.modules() if isinstance(getattr(m, "out_features", None), int)]
    if not last:
        raise ConfigError(
            f"cannot tell how many classes {type(net).__name__} predicts (no layer with "
            "out_features); pass num_classes=."
        )
    return int(last[-1].out_features)


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
        self._term_sums: dict[str, torch.Tensor] = {}  # the epoch's sum of each term x batch size
        self._term_seen = 0

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
        return self.eval_net()(x)

    def eval_net(self) -> nn.Module:
        """The network validation and test run (and :meth:`forward`): ``self.net`` here."""
        return self.net

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

        Every step also adds each term (times ``batch_size``) to a running tensor, without a
        host sync; :meth:`on_train_epoch_end` logs their sample-weighted means as
        ``train/<name>_epoch``, so a run shorter than ``log_every_n_steps`` still has curves.
        """
        sums = self._term_sums
        for name, value in terms.items():
            value = (
                value.detach() if isinstance(value, torch.Tensor) else torch.tensor(float(value))
            )
            if name in sums:
                sums[name].add_(value, alpha=batch_size)
            else:
                sums[name] = value.float() * batch_size
        self._term_seen += batch_size
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
        self._term_sums, self._term_seen = {}, 0

    def on_train_epoch_end(self) -> None:
        # the metric object: Lightning computes it (synced across processes) and resets it
        if self._train_seen:
            self.train_acc.update(self._train_hits / self._train_seen, weight=self._train_seen)
            self.log("train/acc", self.train_acc, on_step=False, on_epoch=True)
        for name, total in self._term_sums.items():  # the mean over ranks of each rank's mean
            self.log(
                f"train/{name}_epoch", total / self._term_seen, on_step=False, on_epoch=True,
                sync_dist=True,
            )  # fmt: skip
        self._term_sums, self._term_seen = {}, 0

    def _eval_metrics(self, stage: str) -> tuple[MulticlassAccuracy, MeanMetric]:
        return (self.val_acc, self.val_loss) if stage == "val" else (self.test_acc, self.test_loss)

    def _eval_step(self, batch: dict[str, Any], stage: str) -> torch.Tensor:
        acc, mean_loss = self._eval_metrics(stage)
        batch = as_batch(batch)
        logits = self.eval_net()(batch["x"])
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
        if optimizer_closure is not None and fills_momentum(inner):
            closure = optimizer_closure

            def optimizer_closure():
                out = closure()
                fill_momentum_buffers(inner)
                return out

        optimizer.step(closure=optimizer_closure)

    def build_optimizer(self, params: list[torch.Tensor], clips: bool) -> torch.optim.Optimizer:
        """``module.optimizer`` over ``params`` (its fused kernel where it can run)."""
        return make_optimizer(
            self.optimizer_factory, params, self.fused_optimizer, clips_scaled_gradients=clips
        )

    def configure_optimizers(self):
        trainer = self._trainer
        clips = (
            trainer is not None
            and bool(trainer.gradient_clip_val)
            and str(trainer.precision).startswith("16")
        )
        optimizer = self.build_optimizer(
            [p for p in self.trainable_parameters() if p.requires_grad], clips
        )
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer=optimizer)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"},
        }
