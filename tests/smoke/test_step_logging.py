"""Training terms are logged only on the steps the loggers write, and lose nothing by it."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from omegaconf import open_dict

from kdlight.run.train import run

RUN = (
    "+experiment=fmnist_mlp_kd",
    "logger=csv",
    "seed=5",
    "trainer.max_epochs=2",
    "+trainer.limit_train_batches=4",
    "+trainer.limit_val_batches=1",
    "+trainer.limit_test_batches=1",
)
TERMS = ("train/loss", "train/loss_kd", "train/loss_ce")


def _rows(make_cfg, tmp_path: Path, every: int, store: Path) -> list[dict[str, str]]:
    cfg = make_cfg(*RUN, f"trainer.log_every_n_steps={every}", store_dir=store)
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path / "run")
    run(cfg)
    return list(csv.DictReader((Path(cfg.paths.output_dir) / "csv" / "metrics.csv").open()))


def _terms_by_step(rows):
    return {int(r["step"]): {k: float(r[k]) for k in TERMS} for r in rows if r.get("train/loss")}


def test_every_nth_step_writes_every_term_with_that_steps_value(make_cfg, tmp_path):
    store = tmp_path / "store"
    every = _terms_by_step(_rows(make_cfg, tmp_path / "a", 1, store))
    rows = _rows(make_cfg, tmp_path / "b", 2, store)
    second = _terms_by_step(rows)
    assert sorted(every) == list(range(8))  # 2 epochs x 4 steps, one row each
    assert sorted(second) == [1, 3, 5, 7]  # Lightning's steps for log_every_n_steps=2
    for step, values in second.items():
        assert values == pytest.approx(every[step], rel=1e-6)
    accs = [float(r["train/acc"]) for r in rows if r.get("train/acc")]
    assert len(accs) == 2 and all(0.0 <= a <= 1.0 for a in accs)  # one per epoch
