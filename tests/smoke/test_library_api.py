"""The library API on plain data: the docs' examples run as written (docs/guide/library-api.md),
and DistillationModule trains from plain nn.Modules and (x, y) loaders as they say."""

from __future__ import annotations

import re
from pathlib import Path

import lightning
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import kdlight
from kdlight.errors import ConfigError

PAGE = Path(__file__).resolve().parents[2] / "docs" / "guide" / "library-api.md"


def python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def quiet_trainer(**kwargs) -> lightning.Trainer:
    return lightning.Trainer(
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        **kwargs,
    )


def mlp(width: int) -> nn.Module:
    return nn.Sequential(nn.Linear(20, width), nn.ReLU(), nn.Linear(width, 4))


def test_the_pages_examples_run_in_order():
    blocks = python_blocks(PAGE.read_text())
    assert len(blocks) == 3
    ns: dict = {}
    for block in blocks:
        exec(compile(block, str(PAGE), "exec"), ns)
    assert ns["loss"].requires_grad and torch.isfinite(ns["loss"])
    assert ns["loss_at"].dim() == 0 and torch.isfinite(ns["loss_at"])


def test_a_plain_trainer_distills_on_x_y_batches():
    torch.manual_seed(0)
    x, y = torch.randn(64, 20), torch.randint(0, 4, (64,))
    teacher, student = mlp(8), mlp(8)
    t0 = {k: v.clone() for k, v in teacher.state_dict().items()}
    s0 = {k: v.clone() for k, v in student.state_dict().items()}
    module = kdlight.DistillationModule(student, teacher, method="kd", alpha=0.9)
    trainer = quiet_trainer(max_epochs=1, log_every_n_steps=1)
    trainer.fit(module, DataLoader(TensorDataset(x, y), batch_size=16))
    assert {"train/loss", "train/loss_kd", "train/loss_ce"} <= set(trainer.callback_metrics)
    assert all(torch.equal(teacher.state_dict()[k], v) for k, v in t0.items())
    assert any(not torch.equal(student.state_dict()[k], v) for k, v in s0.items())
    assert module.num_classes == 4 and not teacher.training
    trainer.test(module, DataLoader(TensorDataset(x, y), batch_size=32), verbose=False)
    assert {"test/acc", "test/loss", "test/agreement"} <= set(trainer.callback_metrics)


def test_any_lightning_data_module_works():
    x, y = torch.randn(48, 20), torch.randint(0, 4, (48,))

    class Plain(lightning.LightningDataModule):
        def train_dataloader(self):
            return DataLoader(TensorDataset(x, y), batch_size=16)

    module = kdlight.DistillationModule(mlp(8), mlp(8), method="dkd", warmup=0)
    quiet_trainer(max_steps=2).fit(module, datamodule=Plain())
    assert module.global_step == 2


def test_a_feature_method_without_an_example_input_says_what_to_pass():
    module = kdlight.DistillationModule(
        mlp(8), mlp(8), method="rkd", student_layers=["1"], teacher_layers=["1"]
    )
    loader = DataLoader(TensorDataset(torch.randn(8, 20), torch.randint(0, 4, (8,))), batch_size=4)
    with pytest.raises(ConfigError, match="pass example_input=<a batch of inputs>"):
        quiet_trainer(max_steps=1).fit(module, loader)


def test_a_method_with_per_sample_state_needs_a_kdlight_data_module():
    module = kdlight.DistillationModule(mlp(8), mlp(8), method="crd", nce_k=4)
    loader = DataLoader(TensorDataset(torch.randn(8, 20), torch.randint(0, 4, (8,))), batch_size=4)
    with pytest.raises(ConfigError, match="fit it with a kdlight data module"):
        quiet_trainer(max_steps=1).fit(module, loader)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"method": "kdd"}, "method='kdd' is not a kdlight method; valid names are ab, at, cc,"),
        (
            {"method": "kd", "alpah": 0.5},
            "method='kd' has no setting 'alpah'; its settings are alpha,",
        ),
        ({"method": "kd", "alpha": 1.5}, r"distill.alpha=1.5 is invalid; it must be in \[0, 1\]"),
    ],
)
def test_bad_method_settings_are_one_sentence(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        kdlight.DistillationModule(mlp(8), mlp(8), **kwargs)


def test_a_student_without_a_classifier_layer_needs_num_classes():
    with pytest.raises(ConfigError, match="pass num_classes="):
        kdlight.DistillationModule(nn.Identity(), mlp(8))
