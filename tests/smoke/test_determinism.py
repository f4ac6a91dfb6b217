"""Two CPU runs with the same seed give the same numbers: a classifier and a KD run (whose
teacher is trained in each run's own store, so teacher training is covered too)."""

from __future__ import annotations

import pytest
import torch

from kdlight.checkpoints import load_state_dict_file
from tests.smoke.cli import cli_args, cli_env, metrics, run_parallel, write_noisy_mnist

EXPERIMENTS = {
    "classifier": ["+experiment=mnist_mlp", "module.optimizer.lr=0.05"],
    "kd": ["+experiment=mnist_mlp_kd", "distill.alpha=0.7", "distill.temperature=4"],
}
KEYS = (
    "test/acc_last",
    "test/acc_best",
    "val/acc_best",
    "best_epoch",
    "teacher/val_acc",
    "teacher/test_acc",
)


@pytest.fixture(scope="module")
def twin_runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("determinism")
    env = cli_env(write_noisy_mnist(tmp / "data", n_train=210, n_test=100))
    jobs = {}
    for name, overrides in EXPERIMENTS.items():
        for twin in ("a", "b"):
            d = tmp / f"{name}-{twin}"
            jobs[(name, twin)] = (
                cli_args(
                    d / "run",
                    d / "store",
                    *overrides,
                    "seed=11",
                    "trainer.max_epochs=2",
                    "student.dropout=0.2",
                ),
                tmp,
                env,
            )
    results = run_parallel(jobs, workers=4)
    for (name, twin), res in results.items():
        assert res.returncode == 0, f"{name}-{twin}: {res.stderr[-3000:]}"
    return tmp


@pytest.mark.parametrize("name", list(EXPERIMENTS))
def test_same_seed_same_metrics_and_weights(twin_runs, name):
    a, b = twin_runs / f"{name}-a", twin_runs / f"{name}-b"
    ma, mb = metrics(a / "run"), metrics(b / "run")
    assert ma["status"] == mb["status"] == "finished"
    assert {k: ma.get(k) for k in KEYS} == {k: mb.get(k) for k in KEYS}
    assert 0.0 < ma["test/acc_last"] < 1.0  # noisy labels: equality is not saturation
    wa = load_state_dict_file(a / "run" / "checkpoints" / "last.ckpt")
    wb = load_state_dict_file(b / "run" / "checkpoints" / "last.ckpt")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    if name == "kd":  # each run trained its own teacher, to the same weights
        ta = load_state_dict_file(ma["teacher/source"])
        tb = load_state_dict_file(mb["teacher/source"])
        assert ma["teacher/source"] != mb["teacher/source"]
        assert all(torch.equal(ta[k], tb[k]) for k in ta)
