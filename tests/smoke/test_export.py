"""Edge export end to end: ONNX and TorchScript files give PyTorch's logits; the report is complete."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from kdlight.checkpoints import load_weights
from kdlight.cli.export import main as export_main
from kdlight.deploy.export import export
from kdlight.deploy.plan import Network, Plan
from kdlight.models import MLP, resnet20

pytestmark = pytest.mark.filterwarnings("ignore:.*torch.jit.*deprecated:FutureWarning")
FAST = ["--warmup", "1", "--runs", "3"]  # the timing loop is exercised, not measured


def onnx_logits(path: Path, x: torch.Tensor) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(["logits"], {"input": x.numpy()})[0]


def assert_exports_match(net: nn.Module, out: Path, shape: tuple[int, ...]) -> None:
    """student.onnx (at a batch size neither traced nor checked) and student.ts give ``net``'s logits."""
    x = torch.randn(3, *shape, generator=torch.Generator().manual_seed(7))
    with torch.inference_mode():
        ref = net.eval()(x)
    assert np.abs(onnx_logits(out / "student.onnx", x) - ref.numpy()).max() < 1e-4
    ts = torch.jit.load(str(out / "student.ts"))
    with torch.inference_mode():
        assert torch.allclose(ts(x), ref, atol=1e-6)


def check_report(out: Path, roles: set[str]) -> dict:
    report = json.loads((out / "deployment.json").read_text())
    assert set(report["models"]) == roles
    assert report["checks_passed"] is True
    assert report["opset"] >= 17
    for role, m in report["models"].items():
        for key in ("name", "parameters", "macs", "onnx_bytes", "onnx_max_abs_diff", "source"):
            assert key in m, (role, key)
        assert m["onnx_bytes"] == (out / f"{role}.onnx").stat().st_size
        for runtime in ("torch", "onnxruntime"):
            lat = m["latency_ms"][runtime]
            assert 0 < lat["median"] <= lat["p90"]
    assert "torchscript_max_abs_diff" in report["models"]["student"]
    if "teacher" in roles:
        assert set(report["compression"]) == {
            "parameters",
            "macs",
            "onnx_bytes",
            "speedup_torch",
            "speedup_onnxruntime",
        }
    md = (out / "deployment.md").read_text()
    assert "MACs = FLOPs / 2" in md and "| student |" in md
    return report


def test_tiny_mlp_exports_match_pytorch(tmp_path):
    net = MLP(784, (32, 16), 10)
    plan = Plan(Network("student", "MLP-32-16", net), None, (1, 28, 28), tmp_path / "out")
    report = export(plan, warmup=1, runs=3)
    assert_exports_match(net, tmp_path / "out", (1, 28, 28))
    check_report(tmp_path / "out", {"student"})
    assert report["models"]["student"]["macs"] == 784 * 32 + 32 * 16 + 16 * 10
    assert report["models"]["student"]["parameters"] == 784 * 32 + 32 + 32 * 16 + 16 + 16 * 10 + 10


def test_resnet20_from_a_bearpaw_checkpoint(tmp_path, capsys):
    net = resnet20(num_classes=10)
    torch.manual_seed(0)
    for m in net.modules():  # non-trivial BatchNorm statistics, so eval mode matters
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.1)
            m.running_var.uniform_(0.5, 2.0)
    state = {f"module.{k}": v for k, v in net.state_dict().items()}  # DataParallel names
    weights = tmp_path / "model_best.pth.tar"
    torch.save(
        {"epoch": 164, "state_dict": state, "acc": 91.0, "best_acc": 91.5, "optimizer": {}}, weights
    )
    out = tmp_path / "export"
    assert (
        export_main(["--model", "resnet20", "--weights", str(weights), "--out", str(out), *FAST])
        == 0
    )
    assert "ResNet-20" in capsys.readouterr().out  # the rich table
    assert_exports_match(net, out, (3, 32, 32))
    report = check_report(out, {"student"})
    student = report["models"]["student"]
    assert student["parameters"] == 272_474
    assert student["source"]["format"] == "bearpaw"
    assert report["input_shape"] == [3, 32, 32]


@pytest.fixture
def kd_run(make_cfg, tmp_path) -> Path:
    """A finished distillation run directory, with the config Hydra would have saved."""
    from kdlight.run.train import run

    cfg = make_cfg(
        "+experiment=fmnist_mlp_kd",
        "+trainer.fast_dev_run=false",
        "trainer.max_epochs=1",
        "student.hidden=[64]",
        "teacher.hidden=[96]",
    )
    run(cfg)
    run_dir = Path(cfg.paths.output_dir)
    (run_dir / ".hydra").mkdir(exist_ok=True)
    OmegaConf.save(cfg, run_dir / ".hydra" / "config.yaml")
    return run_dir


def test_a_distillation_run_exports_student_and_teacher(kd_run):
    assert export_main([str(kd_run), *FAST]) == 0
    out = kd_run / "export"
    report = check_report(out, {"student", "teacher"})
    metrics = json.loads((kd_run / "metrics.json").read_text())
    student_net = MLP(784, (64,), 10)
    meta = load_weights(student_net, metrics["best_checkpoint"])
    assert report["models"]["student"]["source"]["weights"] == str(
        Path(metrics["best_checkpoint"]).resolve()
    )
    assert meta["format"] == "lightning"
    assert_exports_match(student_net, out, (1, 28, 28))
    teacher = report["models"]["teacher"]
    assert teacher["name"] == "MLP-96"
    assert teacher["source"]["weights"] == str(Path(metrics["teacher/source"]).resolve())
    assert report["compression"]["parameters"] == pytest.approx(
        (784 * 96 + 96 + 96 * 10 + 10) / (784 * 64 + 64 + 64 * 10 + 10)
    )
    assert report["models"]["student"]["test_acc"] == metrics["test/acc_best"]
