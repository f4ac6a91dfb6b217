"""A run killed with SIGKILL mid-epoch resumes (``ckpt_path=last``) to exactly the result of an
uninterrupted run with the same seed."""

from __future__ import annotations

import signal

import torch

from tests.smoke.cli import (
    cli_args,
    cli_env,
    metrics,
    progress_of,
    run_cli,
    start_cli,
    wait_for,
    write_noisy_mnist,
)

# student dropout: the resumed run must also draw the same dropout masks (kdlight.callbacks.RNGState)
KD = ["+experiment=mnist_mlp_kd", "seed=7", "trainer.max_epochs=4", "student.dropout=0.3"]
ACCURACIES = ("test/acc_last", "test/acc_best", "val/acc_best", "best_epoch", "epochs")


def _student(run_dir):
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    return ckpt["epoch"], {k: v for k, v in ckpt["state_dict"].items() if k.startswith("net.")}


def test_killed_run_resumes_to_the_uninterrupted_result(tmp_path):
    data = write_noisy_mnist(tmp_path / "data", n_train=210, n_test=100)
    env = cli_env(data)
    store = tmp_path / "store"
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    progress = tmp_path / "progress"
    slow = [
        "+callbacks.slow._target_=tests.smoke.cli.SlowDown",
        "+callbacks.slow.seconds=0.4",
        f"+callbacks.slow.progress={progress}",
    ]
    # the uninterrupted run and the one to kill run together and share the store: one trains
    # the teacher, the other reuses it
    ref = start_cli(cli_args(whole, store, *KD), tmp_path, env, tmp_path / "whole.log")
    proc = start_cli(cli_args(killed, store, *KD, *slow), tmp_path, env, tmp_path / "killed.log")
    try:
        # kill while epoch 1 (the second) runs, its epoch-0 last.ckpt on disk
        wait_for(lambda: progress_of(progress) >= (1, 1), timeout=600, proc=proc)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        assert ref.wait(timeout=600) == 0, (tmp_path / "whole.log").read_text()[-3000:]
    finally:
        for p in (proc, ref):
            if p.poll() is None:
                p.kill()
    assert proc.returncode == -signal.SIGKILL
    assert metrics(killed)["status"] == "running"  # it never got to write its results
    epoch, _ = _student(killed)
    assert epoch == 0, "the kill was meant to land in epoch 1, after the epoch-0 checkpoint"
    assert progress_of(progress)[0] == 1

    res = run_cli(cli_args(killed, store, *KD, "ckpt_path=last"), tmp_path, env)
    assert res.returncode == 0, res.stderr[-3000:]

    got, want = metrics(killed), metrics(whole)
    assert got["status"] == want["status"] == "finished"
    assert {k: got[k] for k in ACCURACIES} == {k: want[k] for k in ACCURACIES}
    assert 0.0 < want["test/acc_last"] < 1.0  # noisy labels: equal accuracies are no coincidence
    assert got["teacher/source"] == want["teacher/source"]
    # stronger than equal accuracies: the final weights are bit-identical
    (e1, w1), (e2, w2) = _student(killed), _student(whole)
    assert e1 == e2 == 3
    assert w1.keys() == w2.keys()
    for k in w1:
        assert torch.equal(w1[k], w2[k]), k
