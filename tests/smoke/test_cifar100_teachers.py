"""CIFAR-100 KD from a teacher people already hold: RepDistiller's ``ckpt_epoch_240.pth``."""

from __future__ import annotations

import torch

from kdlight import models
from kdlight.run.train import run
from tests.smoke.cli import cli_args, cli_env, run_cli


def _repdistiller_ckpt(path, model: torch.nn.Module):
    """What RepDistiller's train_teacher.py writes: {'epoch', 'model', 'accuracy', 'optimizer'}."""
    with torch.no_grad():  # modest, trained-looking BN statistics: logits stay small
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_var.fill_(4.0)
                m.weight.fill_(0.5)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {
        "epoch": 240,
        "model": model.state_dict(),
        "accuracy": 72.34,
        "optimizer": opt.state_dict(),
    }
    torch.save(state, path)
    return path


def test_a_repdistiller_teacher_distills_into_the_student(tmp_path, make_cfg):
    torch.manual_seed(0)
    teacher = models.resnet56(num_classes=100).eval()
    ckpt = _repdistiller_ckpt(tmp_path / "save/models/resnet56_vanilla/ckpt_epoch_240.pth", teacher)
    cfg = make_cfg(
        "+experiment=cifar100_resnet56_resnet20",
        "+trainer.fast_dev_run=true",
        f"teacher_ckpt={ckpt}",
    )
    metrics = run(cfg)
    assert metrics["status"] == "finished"
    assert metrics["teacher/source"] == str(ckpt)


def test_a_teacher_of_another_architecture_is_named_in_one_sentence(tmp_path, tiny_data_dir):
    ckpt = _repdistiller_ckpt(
        tmp_path / "resnet110_vanilla/ckpt_epoch_240.pth", models.resnet110(num_classes=100)
    )
    args = cli_args(
        tmp_path / "run",
        tmp_path / "store",
        "+experiment=cifar100_resnet32x4_resnet8x4",
        f"teacher_ckpt={ckpt}",
    )
    proc = run_cli(args, tmp_path, cli_env(tiny_data_dir))
    assert proc.returncode == 2, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: checkpoint {ckpt} does not fit ResNet: ")
    assert last.endswith("; the model is the resnet32x4 architecture.")
    assert "Traceback" not in proc.stderr
