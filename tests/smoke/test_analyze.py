"""kdlight-analyze on a real (tiny) run: the CLI rebuilds it from its folder, and the test-end
callback logged the same ECE to TensorBoard."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf, open_dict

from kdlight.analysis.write import analyze
from kdlight.cli.analyze import main as analyze_main
from kdlight.run.train import run
from tests.helpers.overrides import compose_cfg


@pytest.fixture(scope="module")
def baseline_run(tiny_data_dir, tmp_path_factory) -> Path:
    """A student-alone run whose saved config names its data folder relative to where it started."""
    tmp = tmp_path_factory.mktemp("analyze")
    cfg = compose_cfg(["+experiment=fmnist_mlp", "trainer.max_epochs=2"], tmp, tiny_data_dir)
    run(cfg)
    out = Path(cfg.paths.output_dir)
    with open_dict(cfg):
        cfg.paths.data_dir = tiny_data_dir.name
    (out / ".hydra").mkdir()
    OmegaConf.save(cfg, out / ".hydra" / "config.yaml")
    OmegaConf.save(
        {"hydra": {"runtime": {"cwd": str(tiny_data_dir.parent)}}}, out / ".hydra" / "hydra.yaml"
    )
    return out


def test_analysis_rebuilds_the_run_and_matches_its_metrics(baseline_run, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the data folder resolves against the run's own start directory
    summary = analyze(baseline_run, temperatures=(1, 4))
    metrics = json.loads((baseline_run / "metrics.json").read_text())
    assert Path(summary["checkpoint"]) == Path(metrics["best_checkpoint"])
    assert summary["test/acc"] == pytest.approx(metrics["test/acc_best"], abs=1e-6)
    assert summary["temperature_source"] == "model" and "test/agreement" not in summary
    assert [r["temperature"] for r in summary["temperature_study"]] == [1.0, 4.0]
    out = baseline_run / "analysis"
    assert summary["out"] == str(out)
    per_class = (out / "per_class_accuracy.csv").read_text().splitlines()
    assert per_class[0] == "class,index,n,accuracy" and per_class[1].startswith("T-shirt/top,0,")
    md = (out / "analysis.md").read_text()
    assert "## Most confused pairs" in md and "Expected calibration error over 15" in md


def test_the_callback_logged_the_same_ece(baseline_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    summary = json.loads((baseline_run / "analysis" / "analysis.json").read_text())
    ea = EventAccumulator(str(baseline_run / "tb"), size_guidance={"scalars": 0, "images": 0})
    ea.Reload()
    logged = ea.Scalars("test/ece")
    assert len(logged) == 2  # the last weights, then the val-best checkpoint
    assert logged[-1].value == pytest.approx(summary["test/ece"], abs=1e-5)
    assert ea.Tags()["images"] == ["test/confusion_matrix_best"]


def test_a_checkpoint_outside_a_run_is_one_sentence(tmp_path, capsys):
    stray = tmp_path / "checkpoints" / "x.ckpt"
    stray.parent.mkdir()
    stray.write_bytes(b"PK")
    with pytest.raises(SystemExit) as exc:
        analyze_main([str(stray)])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: no run config at") and len(err.splitlines()) == 1
