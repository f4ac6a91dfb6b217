"""kdlight-shards convert, then a KD run on the shards through the CLI: the folder's numbers, exactly."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.helpers.data import write_image_tree
from tests.smoke.cli import cli_args, cli_env, metrics, run_parallel, tiny_folder_kd

pytest.importorskip("litdata")

KEYS = ("test/acc_last", "test/acc_best", "val/acc_best", "best_epoch")


def test_kd_on_shards_gives_the_folders_run(tmp_path):
    tree = write_image_tree(tmp_path / "tree", per_class=16, n_test=4)
    out = tmp_path / "shards"
    env = cli_env(tmp_path / "data")
    conv = subprocess.run(
        [sys.executable, "-m", "kdlight.cli.shards", "convert", str(tree), str(out), "--quiet"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert conv.returncode == 0, conv.stderr[-3000:]
    assert "wrote 80 train/ and 20 val/ images of 5 classes" in conv.stdout
    common = [
        "data=image_folder",
        *tiny_folder_kd(tmp_path / "teacher.pt"),
        "data.val_size=10",
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
