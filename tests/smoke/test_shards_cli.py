"""kdlight-shards convert, then a KD run on the shards through the CLI: the folder's numbers, exactly."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from kdlight.models.resnet import ResNet
from tests.conftest import write_image_tree
from tests.smoke.cli import cli_args, cli_env, metrics, run_parallel

pytest.importorskip("litdata")

KEYS = ("test/acc_last", "test/acc_best", "val/acc_best", "best_epoch")


def test_kd_on_shards_gives_the_folders_run(tmp_path):
    tree = write_image_tree(tmp_path / "tree", per_class=16, n_test=4)
    out = tmp_path / "shards"
    env = cli_env(tmp_path / "data")
    conv = subprocess.run(
        [sys.executable, "-m", "kdlight.data.shards", "convert", str(tree), str(out), "--quiet"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert conv.returncode == 0, conv.stderr[-3000:]
    assert "wrote 80 train/ and 20 val/ images of 5 classes" in conv.stdout
    teacher = tmp_path / "teacher.pt"
    torch.manual_seed(0)
    torch.save(ResNet(depth=8, num_classes=5).state_dict(), teacher)  # random weights
    common = [
        "data=image_folder",
        "data.num_classes=5",
        "data.image_size=32",
        "data.eval_resize=36",
        "data.num_workers=1",
        "data.val_size=10",
        "data.eval_batch_size=20",
        "model@teacher=resnet8",
        "model@student=resnet8",
        "distill=kd",
        f"teacher_ckpt={teacher}",
        "seed=3",
        "trainer.max_epochs=2",
    ]
    jobs = {
        "folder": ["data.root=" + str(tree)],
        "shards": ["data.root=/nonexistent", f"data.shards={out}"],
    }
    results = run_parallel(
        {
            k: (cli_args(tmp_path / k / "run", tmp_path / k / "store", *common, *v), tmp_path, env)
            for k, v in jobs.items()
        },
        workers=2,
    )
    for name, res in results.items():
        assert res.returncode == 0, f"{name}: {res.stderr[-3000:]}"
    m_folder, m_shards = (metrics(tmp_path / k / "run") for k in jobs)
    assert m_shards["status"] == "finished"
    assert {k: m_shards.get(k) for k in KEYS} == {k: m_folder.get(k) for k in KEYS}
    assert f"shards: {out}" in (tmp_path / "shards" / "run" / ".hydra" / "config.yaml").read_text()
