"""FitNets and data-free KD end to end through ``kdlight.run.train.run`` on tiny CPU data."""

from __future__ import annotations

import lightning as L
import pytest

from kdlight.run.train import run
from tests.smoke import recorder

RECORD = [
    "+callbacks.recorder._target_=tests.smoke.recorder.LossRecorder",
    "trainer.log_every_n_steps=1",
]
SPLITS: list[str] = []


class SplitRecorder(L.Callback):
    """Records the ``split`` of every training batch the student gets."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        SPLITS.append(batch.get("split"))


def test_fitnets_hint_stage_then_kd_stage_with_logits_from_the_store(make_cfg, tmp_path):
    recorder.RECORDS.clear()
    # augment: one view per epoch, so the store's files show which epochs consulted it
    cfg = make_cfg(
        "+experiment=fmnist_mlp_kd", "distill=fitnets", "distill.hint_epochs=1", "data.augment=true",
        "trainer.max_epochs=2", "+trainer.limit_train_batches=3", "teacher_store.enabled=true", *RECORD,
    )  # fmt: skip
    metrics = run(cfg)
    assert metrics["status"] == "finished" and metrics["epochs"] == 2
    assert metrics["hparams"]["method"] == "fitnets" and metrics["hparams"]["hint_epochs"] == 1
    stage1, stage2 = recorder.RECORDS[:3], recorder.RECORDS[3:]
    assert len(stage2) == 3
    assert all("train/loss_hint" in r and "train/loss_kd" not in r for r in stage1)
    assert all("train/loss_kd" in r and "train/loss_ce" in r for r in stage2)
    views = sorted(p.name for p in (tmp_path / "store" / "logits").glob("*/view_*.npy"))
    # the hint stage (epoch 0) is served the teacher's hint layer (a raw map within
    # teacher_store.max_gb) beside the logits; the KD stage (epoch 1) the logits alone
    assert len(views) == 3 and views[1:] == ["view_0.npy", "view_1.npy"], views
    assert views[0].startswith("view_0.") and "_raw" in views[0], views


def test_fitnets_one_stage_is_ce_plus_hint_every_epoch(make_cfg):
    recorder.RECORDS.clear()
    cfg = make_cfg(
        "+experiment=fmnist_mlp_kd", "distill=fitnets", "distill.form=one_stage",
        "distill.alpha=0.0", "trainer.max_epochs=2", "+trainer.limit_train_batches=2", *RECORD,
    )  # fmt: skip
    assert run(cfg)["status"] == "finished"
    assert len(recorder.RECORDS) == 4
    for r in recorder.RECORDS:  # RepDistiller's FitNet: CE + 100 x hint from the first step
        assert "train/loss_kd" not in r
        expected = r["train/loss_ce"] + 100.0 * r["train/loss_hint"]
        assert r["train/loss"] == pytest.approx(expected, rel=1e-4)


def test_data_free_trains_on_the_transfer_set_only(make_cfg, tmp_path):
    SPLITS.clear()
    recorder.RECORDS.clear()
    cfg = make_cfg(
        "+experiment=fmnist_mlp_data_free", "distill.num_samples=48", "distill.batch_size=24",
        "distill.steps=3", "trainer.max_epochs=2", *RECORD,
        "+callbacks.splits._target_=tests.smoke.test_beyond_hinton.SplitRecorder",
    )  # fmt: skip
    metrics = run(cfg)
    assert metrics["status"] == "finished"
    assert metrics["hparams"]["method"] == "data_free" and metrics["hparams"]["alpha"] == 1.0
    assert metrics["hparams"]["distill.batch_size"] == 24  # not the data's batch_size
    assert SPLITS and set(SPLITS) == {"transfer"}
    assert len(SPLITS) == 6  # 48 samples, the tests' batch of 16: 3 per epoch, 2 epochs
    assert all(r["train/loss_ce"] == 0.0 and r["train/loss_kd"] > 0 for r in recorder.RECORDS)
    folder = next((tmp_path / "store" / "datafree").iterdir())
    assert (folder / "stats.pt").is_file() and list(folder.glob("*/transfer.pt"))
    assert 0.0 <= metrics["test/acc_best"] <= 1.0


def test_data_free_rejects_alpha_below_one(make_cfg):
    from kdlight.errors import ConfigError

    with pytest.raises(ConfigError, match="alpha=0.5"):
        run(
            make_cfg(
                "+experiment=fmnist_mlp_data_free",
                "distill.alpha=0.5",
                "+trainer.fast_dev_run=true",
            )
        )


def test_fitnets_on_the_cifar_networks_hints_their_second_stages_by_default(make_cfg, tmp_path):
    # distill.hint_layer / guided_layer default to auto: the ResNet-20's layer2, the CNN's relu2
    cfg = make_cfg(
        "+experiment=cifar_cnn_kd_5pct_cpu", "distill=fitnets", "distill.hint_epochs=1",
        "trainer.max_epochs=1", "+trainer.limit_train_batches=1", "teacher_store.enabled=true",
    )  # fmt: skip
    assert run(cfg)["status"] == "finished"
    views = [p.name for p in (tmp_path / "store" / "logits").glob("*/view_*.npy")]
    assert [v for v in views if v != "view_0.npy"][0].startswith("view_0.layer2_raw-"), views
