"""Lightning callbacks that kdlight adds to its runs (``conf/callbacks/default.yaml``)."""

from __future__ import annotations

import math
import time
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import RichProgressBar as LightningRichProgressBar

from kdlight.errors import ConfigError


class RNGState(L.Callback):
    """Keep the global RNG states in every checkpoint and restore them on resume.

    Lightning restores weights, optimizer and loop counters, not the RNG, so without this a run
    resumed with ``ckpt_path=last`` draws other dropout masks than an uninterrupted run with the
    same seed. The shuffle order needs no help: it is a function of (seed, epoch) (see
    ``kdlight.data.base``). Only tensors are stored, so the checkpoint stays weights-only loadable.
    """

    def state_dict(self) -> dict[str, Any]:
        state = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if "torch" in state_dict:
            torch.set_rng_state(state_dict["torch"])
        if "cuda" in state_dict and torch.cuda.is_available():
            torch.cuda.set_rng_state(state_dict["cuda"])


class RichProgressBar(LightningRichProgressBar):
    """Lightning's Rich progress bar, redrawn at most every ``min_interval_s`` seconds in training.

    Lightning's bar updates its task, collects the progress-bar metrics and refreshes after
    every training batch (``refresh_rate`` counts batches): on a terminal that costs 0.2-1.2 ms
    a step on a CPU (measured in the README, "Seventh measurement"), as much as a small model's
    whole step. Here a batch's update is skipped when the last one is less than
    ``min_interval_s`` ago, so fast steps pay nothing and a slow step (longer than the interval)
    still updates every batch. The epoch's last batch always updates, and an update skipped
    before the epoch ends is made then, so the bar ends at the right count with the last
    metrics. Validation and test bars are Lightning's, unchanged. Other arguments: Lightning's.
    """

    def __init__(self, min_interval_s: float = 0.1, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not (isinstance(min_interval_s, (int, float)) and min_interval_s >= 0):
            raise ConfigError(
                f"callbacks.progress_bar.min_interval_s={min_interval_s!r} is invalid; give seconds >= 0."
            )
        self.min_interval_s = float(min_interval_s)
        self._drawn_at = -math.inf
        self._pending: int | None = None  # the batch index of an update skipped so far

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._drawn_at, self._pending = -math.inf, None
        super().on_train_epoch_start(trainer, pl_module)

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        now = time.monotonic()
        if now - self._drawn_at < self.min_interval_s and batch_idx + 1 < self.total_train_batches:
            self._pending = batch_idx
            return
        self._pending, self._drawn_at = None, now
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._pending is not None:  # an epoch of unknown length, or one cut short
            super().on_train_batch_end(trainer, pl_module, None, None, self._pending)
            self._pending = None
        super().on_train_epoch_end(trainer, pl_module)
