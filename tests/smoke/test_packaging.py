"""The built wheel carries its configs: installed without ``-e``, ``kdlight-train`` runs from any directory."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _pip(*args: str, cwd: Path) -> None:
    subprocess.run([sys.executable, "-m", "pip", *args], cwd=cwd, check=True, capture_output=True)


def test_wheel_installed_elsewhere_runs_an_experiment_from_an_empty_directory(
    tmp_path, tiny_data_dir
):
    wheels, site, empty = tmp_path / "wheels", tmp_path / "site", tmp_path / "empty"
    empty.mkdir()
    # a copy of the sources: setuptools writes build/ and *.egg-info beside them
    source = tmp_path / "source"
    top = {"build", "logs", "store", "data", "docs", "notebooks", "outputs", "multirun"}

    def skip(folder: str, names: list[str]) -> set[str]:  # generated and local files, top level
        here = Path(folder) == ROOT
        return {
            n for n in names if n.startswith(".") or n.endswith(".egg-info") or (here and n in top)
        }

    shutil.copytree(ROOT, source, symlinks=True, ignore=skip)
    # no build isolation: CI has no network; the dev extra installs setuptools and wheel
    _pip(
        "wheel",
        "--no-deps",
        "--no-build-isolation",
        "-q",
        "-w",
        str(wheels),
        str(source),
        cwd=tmp_path,
    )
    (wheel,) = wheels.glob("kdlight-*.whl")
    _pip("install", "--no-deps", "-q", "--target", str(site), str(wheel), cwd=tmp_path)
    assert (site / "kdlight" / "conf" / "experiment" / "fmnist_mlp_kd.yaml").is_file()
    env = {**os.environ, "PYTHONPATH": str(site), "OMP_NUM_THREADS": "1"}
    where = subprocess.run(
        [sys.executable, "-c", "import kdlight; print(kdlight.__file__)"],
        cwd=empty, env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert where.stdout.strip().startswith(str(site)), where.stdout
    overrides = [
        "+experiment=fmnist_mlp_kd", "+debug=fdr", f"paths.data_dir={tiny_data_dir}",
        f"paths.root_dir={tmp_path / 'work'}", "data.download=false", "data.val_size=50",
        "data.batch_size=16", "data.eval_batch_size=16", "teacher_train.max_epochs=1",
    ]  # fmt: skip
    proc = subprocess.run(
        [str(site / "bin" / "kdlight-train"), *overrides],
        cwd=empty, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert list((tmp_path / "work" / "logs" / "fmnist_mlp_kd" / "runs").glob("*/metrics.json"))
    assert list(empty.iterdir()) == []  # nothing written where the command ran


USER_METHOD = '''
import torch.nn.functional as F
from kdlight.methods.base import Method


class MeanSquaredLogits(Method):
    """A user's own method: L = mean (z_s - z_t)^2 (no labels needed)."""

    needs_labels = False

    def __init__(self, weight: float = 1.0):
        super().__init__()
        self.weight = float(weight)

    def forward(self, ctx):
        mse = F.mse_loss(ctx.student_logits.float(), ctx.teacher_logits)
        return {"loss": self.weight * mse, "loss_mse": mse}
'''


def test_users_add_experiments_and_methods_from_their_own_folder(tmp_path, tiny_data_dir):
    user = tmp_path / "my_kd"
    (user / "conf" / "distill").mkdir(parents=True)
    (user / "conf" / "experiment").mkdir()
    (user / "my_methods.py").write_text(USER_METHOD)
    (user / "conf" / "distill" / "mse.yaml").write_text(
        "_target_: my_methods.MeanSquaredLogits\nweight: 2.0\n"
    )
    (user / "conf" / "experiment" / "my_fmnist.yaml").write_text(
        "# @package _global_\ndefaults:\n  - fmnist_mlp_kd\n  - override /distill: mse\nname: my_fmnist\n"
    )
    env = {**os.environ, "PYTHONPATH": str(user), "OMP_NUM_THREADS": "1"}
    overrides = [
        f"hydra.searchpath=[file://{user / 'conf'}]", "+experiment=my_fmnist", "+debug=fdr",
        f"paths.data_dir={tiny_data_dir}", f"paths.root_dir={tmp_path / 'work'}",
        "data.download=false", "data.val_size=50", "data.batch_size=16", "teacher_train.max_epochs=1",
    ]  # fmt: skip
    proc = subprocess.run(
        [sys.executable, "-m", "kdlight.train", *overrides],
        cwd=user, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    (metrics,) = (tmp_path / "work" / "logs" / "my_fmnist" / "runs").glob("*/metrics.json")
    hp = json.loads(metrics.read_text())["hparams"]
    assert hp["method"] == "MeanSquaredLogits" and hp["weight"] == 2.0
