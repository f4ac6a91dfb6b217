"""kdlight.deploy without exporting: MAC counts, inputs, run discovery, the report, user errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from kdlight.cli.export import main as export_main
from kdlight.deploy.convert import require_export_packages
from kdlight.deploy.export import compression
from kdlight.deploy.measure import (
    MACS_NOTE,
    check_forward,
    count_macs,
    count_parameters,
    latency_ms,
    time_torch,
)
from kdlight.deploy.plan import (
    build_named,
    compose_model,
    data_input_shape,
    model_names,
    parse_input_shape,
    plan_from_run,
)
from kdlight.deploy.render import render_markdown
from kdlight.errors import CheckpointError, ConfigError, KdlightError
from kdlight.models import MLP, resnet20
from kdlight.run.read import find_run, open_run, read_run
from tests.helpers.runs import lightning_checkpoint, write_run


def test_macs_of_the_study_student_mlp_match_the_hand_count():
    # 784*800 + 800*800 + 800*10 = 627,200 + 640,000 + 8,000 (biases and ReLU are not MACs)
    assert count_macs(MLP(784, (800, 800), 10), (1, 28, 28)) == 1_275_200


def test_macs_of_a_convolution_match_the_hand_count():
    # 8 output channels x 6 x 6 positions x (3 input channels x 3 x 3 taps) = 7,776
    conv = nn.Conv2d(3, 8, 3, padding=0)
    assert count_macs(conv, (3, 8, 8)) == 7_776


def test_macs_of_resnet20_match_the_hand_count():
    # stem 16*32*32*27 = 442,368; layer1 6 x 16*32*32*144 = 14,155,776;
    # layer2 32*16*16*144 + 5 x 32*16*16*288 + 1x1 shortcut 32*16*16*16 = 13,107,200;
    # layer3 64*8*8*288 + 5 x 64*8*8*576 + 1x1 shortcut 64*8*8*32 = 13,107,200; fc 64*10 = 640
    with torch.device("meta"):  # shapes only: no weights, no arithmetic
        net = resnet20()
    assert count_macs(net, (3, 32, 32)) == 40_813_184


def test_count_macs_restores_training_mode():
    net = MLP(784, (16,), 10, dropout=0.5).train()
    count_macs(net, (1, 28, 28))
    assert net.training


def test_parameters_of_the_study_student():
    assert count_parameters(MLP(784, (800, 800), 10)) == 1_276_810


@pytest.mark.parametrize(
    ("text", "shape"), [("3,32,32", (3, 32, 32)), ("1, 28, 28", (1, 28, 28)), ("784", (784,))]
)
def test_parse_input_shape(text, shape):
    assert parse_input_shape(text) == shape


@pytest.mark.parametrize("text", ["3x32x32", "", "0,28,28", "3,-32,32", "a,b"])
def test_bad_input_shape_is_a_config_error(text):
    with pytest.raises(ConfigError, match="--input-shape"):
        parse_input_shape(text)


@pytest.mark.parametrize(
    ("target", "shape"),
    [
        ("kdlight.data.datasets.mnist.MNISTDataModule", (1, 28, 28)),
        ("kdlight.data.datasets.cifar10.CIFAR10DataModule", (3, 32, 32)),
        ("my.pkg.ImageNetDataModule", None),
    ],
)
def test_input_shape_from_the_data_config(target, shape):
    assert data_input_shape({"_target_": target}) == shape


def test_model_names_are_the_model_configs():
    names = model_names()
    assert {"mlp_student", "mlp_teacher", "cnn5", "resnet18", "resnet20"} <= set(names)


def test_compose_model_sets_the_class_count():
    net = build_named("student", "mlp_student", None, num_classes=7)[0].net
    assert net(torch.zeros(2, 1, 28, 28)).shape == (2, 7)


def test_unknown_model_lists_the_valid_names():
    with pytest.raises(ConfigError, match="unknown model 'resnet19'.*resnet20"):
        compose_model("resnet19", 10)


def test_wrong_input_shape_for_the_model_is_a_config_error():
    with pytest.raises(ConfigError, match=r"cannot take inputs of shape \(3, 32, 32\)"):
        check_forward(MLP(784, (8,), 10), (3, 32, 32), "student MLP")


def test_latency_reports_median_and_p90():
    calls = []
    stats = latency_ms(lambda: calls.append(1), warmup=3, runs=10)
    assert len(calls) == 13
    assert stats["runs"] == 10
    assert 0 <= stats["median"] <= stats["p90"]


def test_torch_latency_restores_the_thread_count():
    before = torch.get_num_threads()
    time_torch(MLP(784, (8,), 10), (1, 28, 28), threads=1, warmup=1, runs=2)
    assert torch.get_num_threads() == before


# ---- run directories ------------------------------------------------------------------------


def _fake_run(
    tmp_path: Path, cfg, net: nn.Module | None = None, metrics: dict | None = None
) -> Path:
    """A run directory as train.py + Hydra leave it: resolved config, a checkpoint, metrics.json."""
    run = write_run(tmp_path / "run", cfg, checkpoints={}, metrics=metrics)
    if net is not None:  # a ClassifierModule's keys
        lightning_checkpoint(run / "checkpoints" / "last.ckpt", net.state_dict())
    return run


def _student(cfg) -> nn.Module:
    from hydra.utils import instantiate

    return instantiate(cfg.student)


def test_a_baseline_run_has_no_teacher(make_cfg, tmp_path):
    cfg = make_cfg("+experiment=fmnist_mlp", "student.hidden=[16]")
    run = _fake_run(tmp_path, cfg, _student(cfg))
    plan = plan_from_run(*open_run(run))
    assert plan.teacher is None
    assert plan.input_shape == (1, 28, 28)
    assert plan.out == run / "export"
    assert plan.student.name == "MLP-16"


def test_a_distillation_run_finds_its_teacher_in_metrics_json(make_cfg, tmp_path):
    cfg = make_cfg("+experiment=fmnist_mlp_kd", "student.hidden=[16]", "teacher.hidden=[24]")
    teacher = MLP(784, (24,), 10, dropout=0.8)  # as conf/model/mlp_teacher.yaml
    torch.save(teacher.state_dict(), tmp_path / "teacher.pt")
    metrics = {"teacher/source": str(tmp_path / "teacher.pt"), "teacher/test_acc": 0.5}
    run = _fake_run(tmp_path, cfg, _student(cfg), metrics)
    plan = plan_from_run(*open_run(run))
    assert plan.teacher is not None and plan.teacher.name == "MLP-24"
    assert torch.equal(plan.teacher.net.layers[1].weight, teacher.layers[1].weight)
    assert plan.accuracy == {"teacher": 0.5}


def test_a_missing_teacher_file_is_noted_not_fatal(make_cfg, tmp_path):
    cfg = make_cfg(
        "+experiment=fmnist_mlp_kd", "student.hidden=[16]", "teacher_ckpt=nowhere/teacher.pt"
    )
    run = _fake_run(tmp_path, cfg, _student(cfg))
    plan = plan_from_run(*open_run(run))
    assert plan.teacher is None
    assert "nowhere/teacher.pt" in plan.notes[0]


def test_relative_teacher_ckpt_is_relative_to_the_launch_directory(tmp_path):
    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    OmegaConf.save({"hydra": {"runtime": {"cwd": str(tmp_path)}}}, run / ".hydra" / "hydra.yaml")
    OmegaConf.save({"teacher_ckpt": "t.pt"}, run / ".hydra" / "config.yaml")
    (tmp_path / "t.pt").write_bytes(b"x")
    assert read_run(run).teacher_sources() == [("teacher_ckpt", tmp_path / "t.pt")]


def test_find_run_prefers_the_validation_best_checkpoint(tmp_path):
    ckpts = tmp_path / "run" / "checkpoints"
    ckpts.mkdir(parents=True)
    for name in ("last.ckpt", "best-epoch003.ckpt"):
        (ckpts / name).write_bytes(b"PK")
    assert find_run(tmp_path / "run")[1].name == "best-epoch003.ckpt"
    assert find_run(tmp_path / "run", "last")[1].name == "last.ckpt"
    assert find_run(ckpts / "last.ckpt") == (None, ckpts / "last.ckpt")  # no .hydra: not a run


def test_missing_checkpoint_is_a_checkpoint_error(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        find_run(tmp_path / "nope")
    (tmp_path / "empty" / "checkpoints").mkdir(parents=True)
    with pytest.raises(CheckpointError, match="holds no checkpoint"):
        find_run(tmp_path / "empty")


# ---- the command line: user errors exit 2 with one sentence -----------------------------------


def _exit_message(argv, capsys) -> str:
    with pytest.raises(SystemExit) as info:
        export_main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ")
    return err[0]


def test_cli_missing_checkpoint(tmp_path, capsys):
    assert "does not exist" in _exit_message([str(tmp_path / "missing.ckpt")], capsys)


def test_cli_missing_weights_file(tmp_path, capsys):
    msg = _exit_message(["--model", "resnet20", "--weights", str(tmp_path / "w.pth.tar")], capsys)
    assert "w.pth.tar does not exist" in msg


def test_cli_checkpoint_outside_a_run_needs_model(tmp_path, capsys):
    torch.save(MLP(784, (8,), 10).state_dict(), tmp_path / "w.pt")
    msg = _exit_message([str(tmp_path / "w.pt")], capsys)
    assert "no .hydra/config.yaml" in msg and "--model" in msg


def test_cli_unknown_model(capsys):
    msg = _exit_message(["--model", "resnet19", "--random-init"], capsys)
    assert "unknown model 'resnet19'" in msg and "mlp_student" in msg


def test_cli_bad_input_shape(capsys):
    assert "--input-shape '3x32x32'" in _exit_message(
        ["--model", "cnn5", "--random-init", "--input-shape", "3x32x32"], capsys
    )


def test_cli_model_needs_weights(capsys):
    assert "needs --weights" in _exit_message(["--model", "cnn5"], capsys)


def test_cli_weights_that_do_not_fit(tmp_path, capsys):
    torch.save(MLP(784, (8,), 10).state_dict(), tmp_path / "w.pt")
    assert "does not fit ResNet" in _exit_message(
        ["--model", "resnet20", "--weights", str(tmp_path / "w.pt")], capsys
    )


def test_missing_onnx_packages_name_the_install_command(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda m: None if m == "onnxscript" else real(m)
    )
    with pytest.raises(KdlightError, match=r"onnxscript.*kdlight\[export\]"):
        require_export_packages()


# ---- the report -----------------------------------------------------------------------------


def _entry(name: str, params: int, macs: int, size: int, ms: float) -> dict:
    lat = {"median": ms, "p90": 1.5 * ms, "runs": 3}
    return {
        "name": name,
        "source": {"weights": "w"},
        "parameters": params,
        "macs": macs,
        "onnx_bytes": size,
        "onnx_file": f"{name}.onnx",
        "onnx_max_abs_diff": 1e-7,
        "latency_ms": {"torch": lat, "onnxruntime": lat},
    }


def test_compression_is_teacher_over_student():
    c = compression(_entry("s", 100, 1000, 400, 1.0), _entry("t", 300, 5000, 1200, 4.0))
    assert c == pytest.approx(
        {
            "parameters": 3.0,
            "macs": 5.0,
            "onnx_bytes": 3.0,
            "speedup_torch": 4.0,
            "speedup_onnxruntime": 4.0,
        }
    )


def test_markdown_report_has_a_row_per_network_and_the_ratio():
    student, teacher = (
        _entry("MLP-800-800", 1_276_810, 1_275_200, 5_000_000, 0.2),
        _entry("T", 10, 20, 30, 0.4),
    )
    student["torchscript_max_abs_diff"] = 0.0
    report = {
        "input_shape": [1, 28, 28],
        "opset": 18,
        "tolerance": 1e-4,
        "checks_passed": True,
        "timing": {"threads": 1, "warmup": 1, "runs": 3},
        "macs_note": MACS_NOTE,
        "environment": {"cpu": "cpu", "cpu_count": 2, "torch": "t", "onnxruntime": "o"},
        "models": {"student": student, "teacher": teacher},
        "compression": compression(student, teacher),
    }
    md = render_markdown(report)
    rows = [line for line in md.splitlines() if line.startswith("| ")]
    assert len(rows) == 4  # header, student, teacher, ratio
    assert "| student | MLP-800-800 | 1,276,810 | 1,275,200 |" in md
    assert all(r.count("|") == rows[0].count("|") for r in rows)
    assert "MACs = FLOPs / 2" in md and "passed" in md
