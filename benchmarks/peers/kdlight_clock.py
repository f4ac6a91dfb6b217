"""A Lightning callback that times kdlight's training epochs, added from the command line.

``python -m kdlight.train ... +callbacks.peer_clock._target_=kdlight_clock.EpochClock
+callbacks.peer_clock.out=PATH`` (with benchmarks/peers on ``PYTHONPATH``): the harness's only
addition to a user's kdlight command. An epoch runs from ``on_train_epoch_start`` to
``on_train_epoch_end``; a teacher-store fill (a cold store) happens inside it, so it is counted.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import lightning as L


class EpochClock(L.Callback):
    """Seconds, samples and steps of each training epoch; JSON to ``out`` when training ends."""

    def __init__(self, out: str) -> None:
        self.out = out
        self.epochs: list[dict] = []
        self._t0 = 0.0
        self._samples = 0
        self._steps = 0

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._t0, self._samples, self._steps = time.perf_counter(), 0, 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        y = batch["y"] if isinstance(batch, dict) and "y" in batch else batch[1]
        self._samples += int(y.shape[0])
        self._steps += 1

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.epochs.append(
            {
                "seconds": time.perf_counter() - self._t0,
                "samples": self._samples,
                "steps": self._steps,
            }
        )

    def on_train_end(self, trainer, pl_module) -> None:
        Path(self.out).parent.mkdir(parents=True, exist_ok=True)
        Path(self.out).write_text(json.dumps({"tool": "kdlight", "epochs": self.epochs}))
