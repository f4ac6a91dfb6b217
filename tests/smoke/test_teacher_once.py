"""A trained teacher depends only on its own config: the student's trainer never retrains it."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from omegaconf import open_dict

from kdlight.run.train import run


def _run(make_cfg, tmp_path: Path, name: str, *overrides: str) -> dict:
    cfg = make_cfg("+experiment=fmnist_mlp_kd", *overrides, store_dir=tmp_path / "store")
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path / name)
    return run(cfg)


def test_the_students_epochs_and_limits_reuse_the_stored_teacher(make_cfg, tmp_path, caplog):
    first = _run(make_cfg, tmp_path, "a")
    caplog.clear()  # only the second run's records (an earlier test may have enabled INFO)
    with caplog.at_level(logging.INFO, logger="kdlight.run.teacher"):
        second = _run(
            make_cfg, tmp_path, "b", "trainer.max_epochs=2", "+trainer.limit_train_batches=3"
        )
    teachers = sorted((tmp_path / "store" / "teachers").iterdir())
    assert len(teachers) == 1, teachers  # trained once
    assert second["teacher/source"] == first["teacher/source"]
    assert second["teacher/test_acc"] == first["teacher/test_acc"]
    assert "reusing stored teacher" in caplog.text
    assert "training teacher" not in caplog.text
    assert second["epochs"] == 2 and first["epochs"] == 1  # the students did differ
    key = json.loads((teachers[0] / "key.json").read_text())
    assert "trainer" not in key  # nothing of the student's run
    assert key["teacher_train"]["trainer"] == {"precision": "32-true"}


def test_the_teachers_own_trainer_settings_train_another_teacher(make_cfg, tmp_path, caplog):
    _run(make_cfg, tmp_path, "a")
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="kdlight.run.teacher"):
        limited = _run(make_cfg, tmp_path, "b", "+teacher_train.trainer.limit_train_batches=2")
    assert "training teacher" in caplog.text
    assert len(list((tmp_path / "store" / "teachers").iterdir())) == 2
    assert limited["status"] == "finished"
