"""benchmarks/diagnose/optimizer_state.py: the probe records sqrt of the mean of Adam's
exp_avg_sq over the student's parameters at each epoch start, and clears the optimizer state
at ``reset_at_epoch`` after recording. Expected values: Adam's second moment written out
(beta2 (1 - beta2^t)-weighted squares of the gradients), from gradients computed here."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import pytest
import torch
from torch import nn

from tests.helpers.scripts import load_script

ROOT = Path(__file__).resolve().parents[2]
probe_module = load_script(ROOT / "benchmarks" / "diagnose" / "optimizer_state.py", "diag_probe")


class Tiny(L.LightningModule):
    """One Linear layer as ``net`` (what the probe reads), a constant gradient per step."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Linear(3, 1, bias=False)
        with torch.no_grad():
            self.net.weight.zero_()

    def training_step(self, batch, batch_idx):
        x, y = batch
        return ((self.net(x) - y) ** 2).mean()

    def configure_optimizers(self):
        return torch.optim.Adam(self.net.parameters(), lr=0.0, betas=(0.9, 0.999))


def test_probe_records_adam_second_moment_and_resets(tmp_path):
    x = torch.tensor([[1.0, 2.0, -1.0]])
    y = torch.tensor([[2.0]])
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=1)
    out = tmp_path / "state.json"
    probe = probe_module.AdamStateProbe(out=str(out), reset_at_epoch=2)
    trainer = L.Trainer(
        max_epochs=4, callbacks=[probe], logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, accelerator="cpu",
    )  # fmt: skip
    trainer.fit(Tiny(), loader)
    # lr 0: the weight stays 0, every step's gradient is d/dw (w.x - y)^2 = -2 y x
    g = -2 * y[0, 0] * x[0]

    def rms_after(steps: int) -> float:
        v = torch.zeros(3)
        for _ in range(steps):
            v = 0.999 * v + 0.001 * g * g
        return float(v.mean().sqrt())

    epochs = json.loads(out.read_text())["epochs"]
    assert [e["epoch"] for e in epochs] == [0, 1, 2, 3]
    assert epochs[0]["rms_sqrt_v"] is None  # no step yet: no state
    assert epochs[1]["rms_sqrt_v"] == pytest.approx(rms_after(1), rel=1e-6)
    # epoch 2: recorded before the reset; epoch 3: one step since the reset
    assert epochs[2]["rms_sqrt_v"] == pytest.approx(rms_after(2), rel=1e-6)
    assert epochs[2]["reset"] is True
    assert epochs[3]["rms_sqrt_v"] == pytest.approx(rms_after(1), rel=1e-6)
