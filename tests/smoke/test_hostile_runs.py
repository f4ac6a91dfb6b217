"""Issue 34 through the real command line: a planted lock link, a resume that would rewrite a
run's record, a broken last.ckpt beside an intact best one, an alias-bomb config given to
analyze, and values that used to loop or blame the wrong thing. Each exits 2 with one sentence
(no traceback) and every file already on disk keeps its bytes."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

import pytest

from tests.helpers.data import write_mnist_like
from tests.smoke.cli import cli_args, cli_env, metrics, run_cli

KD = ["+experiment=mnist_mlp_kd", "seed=3"]


def _snapshot(folder):
    return {
        p: (p.read_bytes(), p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not p.is_symlink() and p.name != ".kdlight.lock"  # the lock holds a pid
    }


def _refused(res, *needles):
    assert res.returncode == 2, res.stderr[-3000:]
    assert "Traceback" not in res.stderr, res.stderr[-3000:]
    line = res.stderr.strip().splitlines()[-1]
    assert line.startswith("error: "), res.stderr[-3000:]
    for n in needles:
        assert n in line, line
    return line


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished tiny KD run (its checkpoints written by kdlight's atomic writer)."""
    tmp = tmp_path_factory.mktemp("hostile")
    data = write_mnist_like(tmp / "data", "mnist", n_train=120, n_test=40)
    env = cli_env(data)
    run = tmp / "run"
    res = run_cli(cli_args(run, tmp / "store", *KD), tmp, env)
    assert res.returncode == 0, res.stderr[-3000:]
    assert metrics(run)["status"] == "finished"
    leftovers = [p.name for p in (run / "checkpoints").iterdir() if p.name.startswith(".")]
    assert leftovers == [] and (run / "checkpoints" / "last.ckpt").is_file()
    return tmp, env, run


def test_a_planted_lock_link_is_refused_and_its_target_kept(finished, tmp_path):
    tmp, env, _ = finished
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    run = tmp_path / "run"
    run.mkdir()
    os.symlink(victim, run / ".kdlight.lock")
    res = run_cli(cli_args(run, tmp / "store", *KD), tmp_path, env)
    _refused(res, ".kdlight.lock is a symbolic link")
    assert victim.read_text() == "precious\n"  # before: truncated to "pid ... on ..."


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("distill.temperature=inf", "distill.temperature=inf is invalid; it must be a finite"),
        ("teacher_ckpt=[]", "teacher_ckpt=[] names no checkpoint"),
    ],
)
def test_values_that_used_to_mislead_are_refused_up_front(finished, tmp_path, override, needle):
    tmp, env, _ = finished
    res = run_cli(cli_args(tmp_path / "run", tmp / "store", *KD, override), tmp_path, env)
    _refused(res, needle)


def test_a_resume_with_other_hparams_keeps_the_record(finished):
    tmp, env, run = finished
    before = _snapshot(run)
    res = run_cli(
        cli_args(run, tmp / "store", *KD, "distill.alpha=0.5", "ckpt_path=last"), tmp, env
    )
    _refused(res, "alpha=", "(now 0.5)", "resume it with its own settings")
    assert _snapshot(run) == before


def test_a_broken_last_checkpoint_points_to_the_intact_best(finished, tmp_path):
    tmp, env, run = finished
    copy = tmp_path / "run"
    shutil.copytree(run, copy, symlinks=True)
    last = copy / "checkpoints" / "last.ckpt"
    last.write_bytes(last.read_bytes()[:300])  # what a copy cut short by SIGKILL leaves
    best = next((copy / "checkpoints").glob("best*.ckpt"))
    before = _snapshot(copy)
    res = run_cli(cli_args(copy, tmp / "store", *KD, "ckpt_path=last"), tmp_path, env)
    _refused(res, "last.ckpt", f"intact checkpoints ({best.name})", f"ckpt_path={best}")
    # refused before Hydra writes the job's .hydra/ files: nothing of the run changes
    assert _snapshot(copy) == before


def test_analyze_refuses_an_alias_bomb_and_a_planted_output_link(finished, tmp_path):
    tmp, env, run = finished
    bomb = tmp_path / "bomb"
    shutil.copytree(run, bomb, symlinks=True)
    (bomb / ".hydra" / "config.yaml").write_text(
        "a: &a [x,x,x,x,x,x,x,x,x]\n"
        + "".join(
            f"{c}: &{c} [*{p},*{p},*{p},*{p},*{p},*{p},*{p},*{p},*{p}]\n"
            for p, c in zip("abcdefgh", "bcdefghi", strict=True)
        )
    )
    cmd = [sys.executable, "-m", "kdlight.analyze"]
    start = time.perf_counter()
    res = subprocess.run(
        [*cmd, str(bomb)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    _refused(res, "alias bomb")
    assert time.perf_counter() - start < 60  # before: hung with growing memory

    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    planted = tmp_path / "planted"
    shutil.copytree(run, planted, symlinks=True)
    os.symlink(tmp_path, planted / "analysis")  # the default output folder, sent elsewhere
    res = subprocess.run(
        [*cmd, str(planted)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    _refused(res, "analysis folder", "is a symbolic link")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bomb", "planted", "victim.txt"]
