"""Grey-scale data with torchvision and timm students: in_chans comes from the data, no override."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from kdlight.run.train import run


@pytest.mark.parametrize("model", ["timm", "torchvision"])
def test_a_library_student_takes_the_datas_one_channel(make_cfg, model, tmp_path):
    cfg = make_cfg(
        "+experiment=fmnist_mlp_kd",
        f"model@student={model}",
        "student.name=resnet18",
        "+trainer.fast_dev_run=true",
    )
    (Path(cfg.paths.output_dir) / ".hydra").mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, Path(cfg.paths.output_dir) / ".hydra" / "config.yaml")
    assert run(cfg)["status"] == "finished"
    saved = OmegaConf.load(Path(cfg.paths.output_dir) / ".hydra" / "config.yaml")
    assert saved.student.in_chans == 1  # the saved config rebuilds the network it trained
