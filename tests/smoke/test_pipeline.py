"""End-to-end behaviour of the training pipeline on tiny CPU data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kdlight.run.train import run
from tests.smoke import recorder

RECORD = [
    "+callbacks.recorder._target_=tests.smoke.recorder.LossRecorder",
    "trainer.log_every_n_steps=1",
]


def _losses(make_cfg, *overrides, store_dir):
    recorder.RECORDS.clear()
    run(
        make_cfg(
            *overrides, *RECORD, "+trainer.max_steps=4", "trainer.max_epochs=4", store_dir=store_dir
        )
    )
    return [r["train/loss"] for r in recorder.RECORDS]


@pytest.mark.parametrize(
    ("experiment", "dtype", "rel"),
    [
        ("fmnist_mlp_kd", "float32", 1e-5),
        ("fmnist_mlp_kd", "float16", 2e-3),
        ("cifar_cnn_kd_5pct_cpu", "float32", 1e-4),
    ],
)
def test_store_served_logits_give_the_online_losses(make_cfg, tmp_path, experiment, dtype, rel):
    store = tmp_path / "shared-store"
    common = (f"+experiment={experiment}", "seed=3", f"teacher_store.dtype={dtype}")
    online = _losses(make_cfg, *common, "teacher_store.enabled=false", store_dir=store)
    served = _losses(make_cfg, *common, "teacher_store.enabled=true", store_dir=store)
    assert len(online) == len(served) == 4
    assert served == pytest.approx(online, rel=rel)
    assert list((store / "logits").glob("*/view_0.npy")), "the store was not used"


def test_sweep_runs_share_one_trained_teacher(make_cfg, tmp_path):
    store = tmp_path / "store"
    first = run(make_cfg("+experiment=fmnist_mlp_kd", "distill.alpha=0.5", store_dir=store))
    teacher_file = Path(first["teacher/source"])
    stamp = teacher_file.stat().st_mtime_ns
    second = run(
        make_cfg(
            "+experiment=fmnist_mlp_kd",
            "distill.alpha=0.7",
            "distill.temperature=4",
            store_dir=store,
        )
    )
    assert second["teacher/source"] == first["teacher/source"]
    assert teacher_file.stat().st_mtime_ns == stamp
    assert len(list((store / "teachers").iterdir())) == 1


def test_run_directory_holds_metrics_checkpoints_and_tensorboard(make_cfg):
    cfg = make_cfg("+experiment=fmnist_mlp", "trainer.max_epochs=2")
    run(cfg)
    out = Path(cfg.paths.output_dir)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["status"] == "finished"
    for key in ("test/acc_last", "test/acc_best", "val/acc_best", "best_epoch"):
        assert key in metrics
    assert (out / "checkpoints" / "last.ckpt").is_file()
    assert list((out / "checkpoints").glob("best-*.ckpt"))
    assert list((out / "tb").glob("events.out.tfevents.*"))
    assert (out / "tb" / "hparams.yaml").is_file()
