"""A diagnostic callback: the scale of Adam's second moments over the student's parameters.

Used to explain a two-stage method's result (docs/results/cifar10-cpu.md, "Where a sign
disagrees"): with ``distill.fresh_optimizer=false`` an AB or FSP init stage trains the
student with the run's optimizer on another loss, and Adam's second moments (beta2 0.999, a
memory of about 1,000 steps) carry that loss's gradient scale into the cross-entropy stage. Not part of kdlight: put ``benchmarks/`` on PYTHONPATH and add

    +callbacks.probe._target_=diagnose.optimizer_state.AdamStateProbe
    +callbacks.probe.out=PATH.json [+callbacks.probe.reset_at_epoch=2]

At the start of every training epoch it records the root mean square over the student's
parameters (``pl_module.net``) of sqrt(exp_avg_sq) (Adam's per-parameter step denominator,
raw: divide by sqrt(1 - beta2^t) after t steps for the bias-corrected one),
and, at ``reset_at_epoch``, clears the optimizer's state after recording (as the authors'
code, which builds a new optimizer for the second stage). The record is written as JSON
after every epoch.
"""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L


class AdamStateProbe(L.Callback):
    def __init__(self, out: str, reset_at_epoch: int | None = None) -> None:
        self.out = Path(out)
        self.reset_at_epoch = reset_at_epoch
        self.epochs: list[dict] = []

    @staticmethod
    def rms_sqrt_v(optimizer, pl_module: L.LightningModule) -> float | None:
        squares, count = 0.0, 0
        for p in pl_module.net.parameters():
            state = optimizer.state.get(p, {})
            if "exp_avg_sq" in state:
                squares += float(state["exp_avg_sq"].double().sum())  # (sqrt v)^2 = v
                count += state["exp_avg_sq"].numel()
        return (squares / count) ** 0.5 if count else None

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        epoch = trainer.current_epoch
        optimizer = trainer.optimizers[0]
        record = {"epoch": epoch, "rms_sqrt_v": self.rms_sqrt_v(optimizer, pl_module)}
        if self.reset_at_epoch is not None and epoch == self.reset_at_epoch:
            optimizer.state.clear()
            record["reset"] = True
        self.epochs.append(record)
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.out.write_text(
            json.dumps({"reset_at_epoch": self.reset_at_epoch, "epochs": self.epochs}, indent=1)
        )
