"""A callback that records each training step's loss terms (for tests)."""

from __future__ import annotations

import lightning as L

RECORDS: list[dict[str, float]] = []


class LossRecorder(L.Callback):
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        RECORDS.append(
            {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("train/")}
        )
