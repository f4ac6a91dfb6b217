"""Lightning's CSV, W&B (offline) and MLflow (local store) loggers get the hparams and final metrics."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml

from kdlight.run.train import run

SHORT_RUN = (
    "+experiment=fmnist_mlp_kd",
    "+trainer.limit_train_batches=2",
    "+trainer.limit_val_batches=1",
    "+trainer.limit_test_batches=1",
    "trainer.log_every_n_steps=1",
)


def _run(make_cfg, tmp_path, logger):
    cfg = make_cfg(*SHORT_RUN, f"logger={logger}", f"paths.log_dir={tmp_path / 'logs'}")
    return run(cfg), Path(cfg.paths.output_dir)


def test_csv_logger(make_cfg, tmp_path):
    metrics, out = _run(make_cfg, tmp_path, "csv")
    hp = yaml.safe_load((out / "csv" / "hparams.yaml").read_text())
    assert hp["method"] == "kd" and hp["alpha"] == 0.9 and hp["temperature"] == 20.0
    rows = list(csv.DictReader((out / "csv" / "metrics.csv").open()))
    assert any(r.get("train/loss_kd") for r in rows)
    final = [float(r["test/acc_best"]) for r in rows if r.get("test/acc_best")]
    assert final == [pytest.approx(metrics["test/acc_best"])]


def test_wandb_logger_offline(make_cfg, tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DISABLE_GIT", "true")
    metrics, out = _run(make_cfg, tmp_path, "wandb")
    logs = list((out / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(logs) == 1, "wandb wrote no offline run"
    body = logs[0].read_bytes()  # protobuf records; keys and JSON values are stored as text
    for text in (
        "test/acc_best",
        json.dumps(metrics["test/acc_best"]),
        "train/loss_kd",
        "temperature",
    ):
        assert text.encode() in body, text


def test_mlflow_logger_local_store(make_cfg, tmp_path):
    mlflow = pytest.importorskip("mlflow")
    metrics, _ = _run(make_cfg, tmp_path, "mlflow")
    client = mlflow.tracking.MlflowClient(
        tracking_uri=f"sqlite:///{tmp_path / 'logs' / 'mlflow.db'}"
    )
    experiment = client.get_experiment_by_name("fmnist_mlp_kd")
    (found,) = client.search_runs([experiment.experiment_id])
    assert found.data.params["method"] == "kd" and float(found.data.params["alpha"]) == 0.9
    assert found.data.metrics["test/acc_best"] == pytest.approx(metrics["test/acc_best"])
    assert "train/loss_kd" in found.data.metrics
