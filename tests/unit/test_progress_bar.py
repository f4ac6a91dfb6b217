"""kdlight's Rich progress bar: Lightning's, updated at most every min_interval_s in training."""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch.callbacks import RichProgressBar as LightningBar

import kdlight.callbacks as callbacks_module
from kdlight.callbacks import RichProgressBar
from kdlight.errors import ConfigError


@pytest.fixture
def drawn(monkeypatch):
    """The batch indices Lightning's bar is asked to draw, "end" for its epoch end; a fake clock."""
    calls: list = []
    monkeypatch.setattr(
        LightningBar, "on_train_batch_end", lambda s, t, m, o, b, i: calls.append(i)
    )
    monkeypatch.setattr(LightningBar, "on_train_epoch_end", lambda s, t, m: calls.append("end"))
    monkeypatch.setattr(LightningBar, "on_train_epoch_start", lambda s, t, m: None)
    clock = {"now": 100.0}
    monkeypatch.setattr(callbacks_module.time, "monotonic", lambda: clock["now"])
    return calls, clock


def _bar(monkeypatch, total, **kwargs) -> RichProgressBar:
    monkeypatch.setattr(RichProgressBar, "total_train_batches", property(lambda self: total))
    return RichProgressBar(**kwargs)


def test_fast_steps_draw_the_first_and_last_batch_only(drawn, monkeypatch):
    calls, clock = drawn
    bar = _bar(monkeypatch, 5, min_interval_s=0.1)
    bar.on_train_epoch_start(None, None)
    for i in range(5):
        clock["now"] += 0.01  # 10 ms steps
        bar.on_train_batch_end(None, None, None, None, i)
    bar.on_train_epoch_end(None, None)
    assert calls == [0, 4, "end"]


def test_steps_slower_than_the_interval_draw_every_batch(drawn, monkeypatch):
    calls, clock = drawn
    bar = _bar(monkeypatch, 3, min_interval_s=0.1)
    bar.on_train_epoch_start(None, None)
    for i in range(3):
        clock["now"] += 0.5
        bar.on_train_batch_end(None, None, None, None, i)
    assert calls == [0, 1, 2]


def test_an_update_skipped_before_the_epoch_ends_is_drawn_at_its_end(drawn, monkeypatch):
    calls, clock = drawn
    bar = _bar(monkeypatch, float("inf"), min_interval_s=0.1)  # a loader of unknown length
    bar.on_train_epoch_start(None, None)
    for i in range(4):
        clock["now"] += 0.04
        bar.on_train_batch_end(None, None, None, None, i)
    # 0 drawn; 1 and 2 skipped (0.04, 0.08 s after it); 3 drawn (0.12 s); nothing pending
    assert calls == [0, 3]
    clock["now"] += 0.01
    bar.on_train_batch_end(None, None, None, None, 4)  # skipped, then drawn at the epoch's end
    bar.on_train_epoch_end(None, None)
    assert calls == [0, 3, 4, "end"]
    # the next epoch draws its first batch at once
    bar.on_train_epoch_start(None, None)
    bar.on_train_batch_end(None, None, None, None, 0)
    assert calls[-1] == 0


def test_zero_interval_is_lightnings_bar_and_a_bad_interval_is_refused(drawn, monkeypatch):
    calls, _ = drawn
    bar = _bar(monkeypatch, 4, min_interval_s=0)
    for i in range(4):
        bar.on_train_batch_end(None, None, None, None, i)
    assert calls == [0, 1, 2, 3]
    with pytest.raises(ConfigError, match=r"min_interval_s=-1 is invalid"):
        RichProgressBar(min_interval_s=-1)


def test_a_real_fit_with_the_bar_ends_at_the_batch_count():
    import lightning as L
    from torch import nn

    class Tiny(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = nn.Linear(4, 2)

        def training_step(self, batch, batch_idx):
            return self.net(batch[0]).pow(2).mean()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    data = torch.utils.data.TensorDataset(torch.randn(40, 4))
    bar = RichProgressBar(min_interval_s=3600)
    trainer = L.Trainer(
        max_epochs=2,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        callbacks=[bar],
    )
    trainer.fit(Tiny(), torch.utils.data.DataLoader(data, batch_size=8))
    task = bar.progress.tasks[bar.train_progress_bar_id]
    assert task.completed == task.total == 5
