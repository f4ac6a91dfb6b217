"""Sweeps end to end: the hparams_search and launcher configs compose, a tiny real multirun through
the CLI, its report, TensorBoard hparams and analysis, and a two-trial optuna study."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir

from kdlight.cli import analyze, report
from tests.helpers.overrides import CONF_DIR, ROOT, tiny


def tiny_cli(data_dir: Path, store: Path, sweep_dir: Path) -> list[str]:
    """The overrides of tests.helpers.overrides.compose_cfg, for the command line."""
    return [
        f"paths.data_dir={data_dir}",
        f"paths.store_dir={store}",
        f"hydra.sweep.dir={sweep_dir}",
        *tiny(batch_size=32, eval_batch_size=64),
    ]


def train_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "kdlight.train", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
    )


def hydra_cfg(*overrides: str):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(
            config_name="train",
            overrides=["+experiment=fmnist_mlp_kd", *overrides],
            return_hydra_config=True,
        )


# ---- configs compose ----------------------------------------------------------------------------


def test_the_study_grid_composes():
    params = hydra_cfg("hparams_search=alpha_t_grid").hydra.sweeper.params
    alphas = [float(a) for a in params["distill.alpha"].split(",")]
    temps = [float(t) for t in params["distill.temperature"].split(",")]
    assert alphas == [0.3, 0.5, 0.7, 0.9, 0.95, 0.99]
    assert temps == [1.5, 2, 5, 10, 20, 30]
    lr = hydra_cfg("hparams_search=alpha_t_lr_grid").hydra.sweeper.params
    assert (
        lr["module.optimizer.lr"] == "0.01,0.1" and lr["distill.alpha"] == params["distill.alpha"]
    )


def test_optuna_search_composes_with_the_parallel_launcher():
    cfg = hydra_cfg("hparams_search=optuna", "hydra/launcher=parallel", "hydra.launcher.n_jobs=4")
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_.endswith("OptunaSweeper")
    assert sweeper.direction == "maximize" and sweeper.n_trials == 20
    assert sweeper.sampler._target_ == "optuna.samplers.TPESampler"
    assert set(sweeper.params) == {"distill.alpha", "distill.temperature", "module.optimizer.lr"}
    assert cfg.hydra.launcher._target_.endswith("JoblibLauncher") and cfg.hydra.launcher.n_jobs == 4
    assert str(cfg.hydra.mode) == "RunMode.MULTIRUN"


def test_slurm_launcher_composes_one_gpu_per_job():
    launcher = hydra_cfg("hparams_search=alpha_t_grid", "hydra/launcher=slurm").hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert launcher.gpus_per_node == 1 and launcher.tasks_per_node == 1


# ---- a tiny real multirun --------------------------------------------------------------------


@pytest.fixture(scope="module")
def grid_sweep(tiny_data_dir, tmp_path_factory):
    """alpha {0.5, 0.9, 1.5} x T {2, 4} on tiny data: four runs finish, alpha=1.5 fails twice."""
    tmp = tmp_path_factory.mktemp("sweep")
    sweep_dir = tmp / "multirun"
    proc = train_cli(
        "-m", "+experiment=fmnist_mlp_kd", "distill.alpha=0.5,0.9,1.5", "distill.temperature=2,4",
        *tiny_cli(tiny_data_dir, tmp / "store", sweep_dir), cwd=tmp,
    )  # fmt: skip
    return proc, sweep_dir, tmp


def test_a_failed_job_does_not_stop_the_sweep(grid_sweep):
    proc, sweep_dir, _ = grid_sweep
    assert proc.returncode != 0, "Hydra reports the failed jobs at the end of the sweep"
    assert "error: distill.alpha=1.5 is invalid" in proc.stderr
    statuses = sorted(
        json.loads((sweep_dir / str(j) / "metrics.json").read_text())["status"] for j in range(6)
    )
    assert statuses == ["failed", "failed", "finished", "finished", "finished", "finished"], (
        proc.stderr[-3000:]
    )


def test_the_sweep_ends_in_its_ranking_and_one_line_per_failed_job(grid_sweep):
    proc, sweep_dir, _ = grid_sweep
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert len([ln for ln in proc.stderr.splitlines() if "distill.alpha=1.5" in ln]) == 2
    out = proc.stdout.splitlines()
    head = out.index("sweep: 6 runs, 4 finished, 2 failed")
    ranked = [ln.split() for ln in out[head + 2 : head + 6]]  # val acc, test acc, alpha, T
    vals = [
        json.loads((sweep_dir / str(j) / "metrics.json").read_text()).get("val/acc_best")
        for j in range(6)
    ]
    best = max(v for v in vals if v is not None)
    assert ranked[0][0] == f"{100 * best:.2f}%"
    assert [float(r[0].rstrip("%")) for r in ranked] == sorted(
        (float(r[0].rstrip("%")) for r in ranked), reverse=True
    )
    assert out[head + 6] == f"report: {sweep_dir / 'report.md'}"
    assert (sweep_dir / "report.md").is_file()


def test_report_of_the_sweep(grid_sweep, tmp_path):
    _, sweep_dir, _ = grid_sweep
    assert report.main([str(sweep_dir), "--out", str(tmp_path)]) == 0
    with open(tmp_path / "results.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["alpha"], float(r["temperature"])) for r in rows] == [
        ("0.5", 2),
        ("0.5", 4),
        ("0.9", 2),
        ("0.9", 4),
    ]
    for r in rows:
        assert r["n_seeds"] == "1" and 0.0 <= float(r["test/acc_best_mean"]) <= 1.0
    md = (tmp_path / "report.md").read_text()
    assert "6 runs: 4 finished, 2 failed" in md
    assert md.count("distill.alpha=1.5 is invalid") == 2
    for png in ("heatmap_alpha_T.png", "accuracy_vs_T.png"):
        assert (tmp_path / png).read_bytes()[:4] == b"\x89PNG"


def test_tensorboard_hparams_line_up_across_the_sweep(grid_sweep):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    _, sweep_dir, _ = grid_sweep
    seen, columns = set(), set()
    for job in sweep_dir.iterdir():
        metrics_file = job / "metrics.json"
        if (
            not metrics_file.is_file()
            or json.loads(metrics_file.read_text())["status"] != "finished"
        ):
            continue
        metrics = json.loads(metrics_file.read_text())
        ea = EventAccumulator(str(job / "tb"), size_guidance={"scalars": 0, "images": 0})
        ea.Reload()
        content = ea.PluginTagToContent("hparams")
        start = plugin_data_pb2.HParamsPluginData.FromString(
            content["_hparams_/session_start_info"]
        )
        hp = start.session_start_info.hparams
        seen.add((hp["alpha"].number_value, hp["temperature"].number_value))
        experiment = plugin_data_pb2.HParamsPluginData.FromString(
            content["_hparams_/experiment"]
        ).experiment
        columns.add(tuple(sorted(h.name for h in experiment.hparam_infos)))
        assert ea.Scalars("hp_metric")[-1].value == pytest.approx(metrics["test/acc_best"])
        assert "test/ece" in ea.Tags()["scalars"]
        assert (
            "test/confusion_matrix_best" in ea.Tags()["images"]
        )  # one figure: the val-best checkpoint's
        assert "test/confusion_matrix_last" not in ea.Tags()["images"]
    assert seen == {(0.5, 2.0), (0.5, 4.0), (0.9, 2.0), (0.9, 4.0)}
    assert len(columns) == 1 and {"alpha", "temperature", "lr"} <= set(next(iter(columns)))


def test_analyze_a_sweep_run(grid_sweep, tmp_path, capsys):
    _, sweep_dir, _ = grid_sweep
    job = next(j for j in sorted(sweep_dir.iterdir()) if (j / "checkpoints").is_dir())
    assert analyze.main([str(job), "--out", str(tmp_path), "--top-k", "3"]) == 0
    assert "teacher agreement" in capsys.readouterr().out
    summary = json.loads((tmp_path / "analysis.json").read_text())
    metrics = json.loads((job / "metrics.json").read_text())
    assert summary["test/acc"] == pytest.approx(metrics["test/acc_best"], abs=1e-6)
    assert summary["test/agreement"] == pytest.approx(metrics["test/agreement_best"], abs=1e-6)
    assert summary["temperature_source"] == "teacher"
    for name in ("confusion_matrix.png", "reliability.png", "temperature_distributions.png", "analysis.md",
                 "per_class_accuracy.csv", "confusion_matrix.csv", "temperature.csv"):  # fmt: skip
        assert (tmp_path / name).is_file(), name


def test_optuna_study_maximises_the_validation_accuracy(grid_sweep, tiny_data_dir):
    _, _, tmp = grid_sweep
    sweep_dir = tmp / "optuna"
    proc = train_cli(
        "+experiment=fmnist_mlp_kd", "hparams_search=optuna", "hydra.sweeper.n_trials=2",
        "hydra.sweeper.sampler.n_startup_trials=1", *tiny_cli(tiny_data_dir, tmp / "store", sweep_dir), cwd=tmp,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    best = yaml.safe_load((sweep_dir / "optimization_results.yaml").read_text())
    vals = [
        json.loads((sweep_dir / str(j) / "metrics.json").read_text())["val/acc_best"]
        for j in range(2)
    ]
    assert best["best_value"] == pytest.approx(max(vals))
    assert set(best["best_params"]) == {
        "distill.alpha",
        "distill.temperature",
        "module.optimizer.lr",
    }


def test_sweep_configs_are_documented_with_their_command():
    for path in (ROOT / "src" / "kdlight" / "conf" / "hparams_search").glob("*.yaml"):
        assert "python -m kdlight.train" in path.read_text(), path
