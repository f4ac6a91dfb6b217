"""What ``python -m kdlight.train`` prints, and what its TensorBoard logdir holds, on a tiny KD run.

One quiet run (its teacher trained in the run) is read by every test: its console, its
``train.log`` and its event files (TensorBoard's EventAccumulator).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tests.helpers.overrides import tiny
from tests.smoke.cli import cli_env, run_cli

#: Lines Lightning prints on its own; none belongs on a quiet console.
NOISE = (
    "GPU available",
    "TPU available",
    "Tip:",
    "FLOPs",
    "┏",
    "LeafSpec",
    "eval mode",
    "Seed set",
)


def kd_args(run_dir: Path, store: Path, *extra: str) -> list[str]:
    # tiny(), less its model-summary switch: hiding the summary is the CLI's job here
    overrides = [o for o in tiny(eval_batch_size=50) if "enable_model_summary" not in o]
    return [
        sys.executable, "-m", "kdlight.train", "+experiment=fmnist_mlp_kd", *overrides,
        "~callbacks.test_analysis", f"hydra.run.dir={run_dir}", f"paths.store_dir={store}", *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def quiet_run(tiny_data_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("console")
    env = cli_env(tiny_data_dir)
    env.pop("PYTHONWARNINGS")  # the warnings are there to be kept off the console
    run_dir = tmp / "run"
    proc = run_cli(kd_args(run_dir, tmp / "store"), cwd=tmp, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc, run_dir, tmp


def test_a_quiet_run_prints_its_result_and_folder(quiet_run):
    proc, run_dir, _ = quiet_run
    out = proc.stdout + proc.stderr
    lines = [ln for ln in out.splitlines() if ln.strip()]
    assert not [ln for ln in lines if any(n in ln for n in NOISE)], out
    record = json.loads((run_dir / "metrics.json").read_text())
    assert lines[-1].startswith(f"run: {run_dir}")
    assert f"test acc {100 * record['test/acc_best']:.2f}%" in lines[-3]
    assert f"last {100 * record['test/acc_last']:.2f}%" in lines[-3]
    assert lines[-2] == f"teacher test acc {100 * record['teacher/test_acc']:.2f}%"
    assert len(lines) <= 8, out


def test_train_log_keeps_what_the_console_leaves_out(quiet_run):
    _, run_dir, _ = quiet_run
    log = (run_dir / "train.log").read_text()
    assert "GPU available" in log and "[py.warnings][WARNING]" in log


def test_verbose_brings_lightning_back(tiny_data_dir, tmp_path):
    env = cli_env(tiny_data_dir, KDLIGHT_VERBOSE="1")
    args = kd_args(tmp_path / "run", tmp_path / "store")
    proc = run_cli(args, cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout + proc.stderr
    assert "GPU available" in out and "┏" in out  # Lightning's INFO lines and model summary


def _events(logdir: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(str(logdir), size_guidance={"scalars": 0})
    ea.Reload()
    return ea


def test_tensorboard_has_what_a_kd_researcher_reads(quiet_run):
    from tensorboard.plugins.hparams import plugin_data_pb2

    _, run_dir, _ = quiet_run
    record = json.loads((run_dir / "metrics.json").read_text())
    ea = _events(run_dir / "tb")
    scalars = set(ea.Tags()["scalars"])
    # loss parts per epoch: a run shorter than log_every_n_steps has curves too
    assert {"train/loss_epoch", "train/loss_ce_epoch", "train/loss_kd_epoch"} <= scalars
    for tag in ("test/acc_best", "test/acc_last", "val/acc_best", "teacher/test_acc"):
        assert ea.Scalars(tag)[-1].value == pytest.approx(record[tag], abs=1e-6), tag
    # hparams: the method's settings beside the final metrics
    content = ea.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    hp = start.session_start_info.hparams
    assert hp["alpha"].number_value == pytest.approx(record["hparams"]["alpha"])
    assert hp["temperature"].number_value == pytest.approx(record["hparams"]["temperature"])
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"])
    metric_tags = {m.name.tag for m in experiment.experiment.metric_infos}
    assert {"hp_metric", "test/acc_best", "test/acc_last", "teacher/test_acc"} <= metric_tags


def test_the_teacher_trained_in_the_run_has_its_curve_in_the_logdir(quiet_run):
    _, run_dir, _ = quiet_run
    record = json.loads((run_dir / "metrics.json").read_text())
    teacher = _events(run_dir / "tb" / "teacher")
    assert teacher.Scalars("val/acc")[-1].value == pytest.approx(
        record["teacher/val_acc"], abs=1e-6
    )
    assert "train/loss_epoch" in teacher.Tags()["scalars"]


def test_the_cpu_profile_makes_the_design_card_command_small():
    from hydra import compose, initialize_config_dir

    from tests.helpers.overrides import CONF_DIR

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(
            config_name="train", overrides=["+experiment=cifar_resnet18_kd", "+debug=cpu"]
        )
    assert cfg.trainer.accelerator == "cpu" and cfg.trainer.max_epochs <= 2
    assert cfg.trainer.limit_train_batches <= 10 and cfg.module.compile is False
    # the teacher (ResNeXt-29, 200 epochs in the experiment) is as small, and runs online
    assert cfg.teacher_train.max_epochs == 1
    assert cfg.teacher_train.trainer.limit_train_batches <= 10
    assert cfg.teacher_store.enabled is False
