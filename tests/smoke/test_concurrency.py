"""The teacher store under concurrency: runs that need the same teacher at once train it once,
and an interrupted or corrupt store entry is retrained, never trusted."""

from __future__ import annotations

import signal

import pytest
import torch

from tests.helpers.data import write_mnist_like
from tests.smoke.cli import (
    cli_args,
    cli_env,
    metrics,
    progress_of,
    run_parallel,
    start_cli,
    wait_for,
)

KD = ["+experiment=mnist_mlp_kd"]
N = 4


@pytest.fixture(scope="module")
def store_runs(tmp_path_factory):
    """A run killed while training the teacher, a truncated teacher.pt, then N runs started
    together on that store."""
    tmp = tmp_path_factory.mktemp("concurrency")
    env = cli_env(write_mnist_like(tmp / "data", "mnist", n_train=130, n_test=40))
    store = tmp / "store"

    # 1. killed in the middle of training the teacher (its callbacks slowed it down)
    progress = tmp / "teacher-progress"
    slow = [
        "+callbacks.slow_progress._target_=tests.smoke.cli.SlowDown",
        "+callbacks.slow_progress.seconds=0.6",
        f"+callbacks.slow_progress.progress={progress}",
    ]
    proc = start_cli(cli_args(tmp / "killed", store, *KD, *slow), tmp, env, tmp / "killed.log")
    try:
        wait_for(lambda: progress_of(progress) >= (0, 1), timeout=600, proc=proc)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    killed_log = (tmp / "killed.log").read_text()
    assert "training teacher" in killed_log and "teacher trained" not in killed_log
    (folder,) = (store / "teachers").iterdir()
    left = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())

    # 2. a teacher.pt cut short (a failed copy, a full disk) where the store looks first
    from kdlight.models.mlp import MLP

    blob = folder / "blob.pt"
    torch.save(
        {"state_dict": MLP(hidden=(1200, 1200)).state_dict(), "kdlight": {"key_hash": folder.name}},
        blob,
    )
    (folder / "teacher.pt").write_bytes(blob.read_bytes()[: blob.stat().st_size // 2])
    blob.unlink()

    # 3. N runs at once; whichever trains the teacher waits until all N have started
    barrier = [
        "+callbacks.barrier_progress._target_=tests.smoke.cli.WaitForFiles",
        f"+callbacks.barrier_progress.pattern={tmp}/run*/metrics.json",
        f"+callbacks.barrier_progress.count={N}",
    ]
    jobs = {i: (cli_args(tmp / f"run{i}", store, *KD, *barrier), tmp, env) for i in range(N)}
    results = run_parallel(jobs, workers=N)
    for i, res in results.items():
        assert res.returncode == 0, f"run{i}: {res.stderr[-3000:]}"
    return {"tmp": tmp, "store": store, "folder": folder, "results": results, "left": left}


def test_a_killed_teacher_training_leaves_nothing_trusted(store_runs):
    assert "teacher.pt" not in store_runs["left"], store_runs["left"]


def test_concurrent_runs_train_the_teacher_once(store_runs):
    logs = [r.stdout + r.stderr for r in store_runs["results"].values()]
    assert sum(log.count("training teacher") for log in logs) == 1
    assert sum(log.count("reusing stored teacher") for log in logs) == N - 1
    assert len(list((store_runs["store"] / "teachers").iterdir())) == 1
    sources = {metrics(store_runs["tmp"] / f"run{i}")["teacher/source"] for i in range(N)}
    assert sources == {str(store_runs["folder"] / "teacher.pt")}
    assert all(metrics(store_runs["tmp"] / f"run{i}")["status"] == "finished" for i in range(N))


def test_a_truncated_stored_teacher_is_retrained_not_loaded(store_runs):
    logs = [r.stdout + r.stderr for r in store_runs["results"].values()]
    (trainer,) = [log for log in logs if "training teacher" in log]
    assert "ignoring unreadable stored teacher" in trainer  # seen, distrusted, replaced
    assert sum(log.count("ignoring unreadable stored teacher") for log in logs) == 1
    blob = torch.load(store_runs["folder"] / "teacher.pt", map_location="cpu", weights_only=True)
    assert blob["kdlight"]["key_hash"] == store_runs["folder"].name
