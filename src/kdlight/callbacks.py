"""Lightning callbacks that kdlight adds to its runs (``conf/callbacks/default.yaml``)."""

from __future__ import annotations

import contextlib
import math
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.fabric.utilities.cloud_io import _is_local_file_protocol
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.callbacks import RichProgressBar as LightningRichProgressBar

from kdlight.errors import CheckpointError, ConfigError
from kdlight.io import atomic_torch_save, fsync_dir


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer, made atomic where the checkpoint is: a temporary file in the
    checkpoint's own folder, fsync, rename (:func:`kdlight.io.atomic_torch_save`).

    Lightning's own writer stages the file in the system temp folder and, when that is another
    file system, copies it over the old checkpoint: a SIGKILL in the copy destroyed ``last.ckpt``
    and left an orphan in ``/tmp``. Here the old file stays whole until the rename; a failed write
    (a full disk) removes its temporary file (freeing the space for the run's ``failed`` record)
    and stops the run in one sentence. A link planted at the checkpoint's name is refused, never
    written through. Remote paths (``s3://``...) keep Lightning's writer.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options=None) -> None:
        if storage_options is not None or not _is_local_file_protocol(str(path)):
            return super().save_checkpoint(checkpoint, path, storage_options)
        path = Path(path)
        try:
            atomic_torch_save(checkpoint, path)
        except OSError as exc:
            raise CheckpointError(
                f"writing the checkpoint {path} failed ({exc.strerror or exc}); the previous "
                f"{path.name} (if any) is intact, so free space or fix {path.parent} and resume "
                "with ckpt_path=last."
            ) from exc
        # temporary files of a process killed while writing this checkpoint (one process
        # writes in a locked run folder)
        for orphan in path.parent.glob(f".{path.name}.*.tmp"):
            with contextlib.suppress(OSError):
                orphan.unlink()
        fsync_dir(path.parent)


class AtomicModelCheckpoint(ModelCheckpoint):
    """Lightning's ``ModelCheckpoint`` whose files are written by :class:`AtomicCheckpointIO`.

    It installs that writer on the Trainer's strategy when the strategy uses Lightning's plain
    ``TorchCheckpointIO`` (a writer the user configured, e.g. async, is kept), so every
    checkpoint of the run (``last.ckpt``, the validation-best) appears whole or not at all.
    Arguments: Lightning's.
    """

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:
            trainer.strategy.checkpoint_io = AtomicCheckpointIO()


class RNGState(L.Callback):
    """Keep the global RNG states in every checkpoint and restore them on resume.

    Lightning restores weights, optimizer and loop counters, not the RNG, so without this a run
    resumed with ``ckpt_path=last`` draws other dropout masks than an uninterrupted run with the
    same seed. The shuffle order needs no help: it is a function of (seed, epoch) (see
    ``kdlight.data.modules.array``). Only tensors are stored, so the checkpoint stays weights-only loadable.
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
