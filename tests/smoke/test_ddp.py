"""DDP (``trainer=ddp_cpu``: two gloo processes, the launcher ``trainer=ddp`` uses on GPUs)
distills correctly: each rank trains on its shard of the labeled-fraction subset, without
labels in unlabeled mode, served its own samples' teacher logits from the store."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from kdlight.data.datasets.mnist import MNISTDataModule
from tests.smoke.cli import cli_args, cli_env, metrics, run_cli, write_noisy_mnist

N_TRAIN, VAL, FRACTION, BATCH = 305, 50, 0.2, 16  # subset: round(0.2 * 255) = 51, odd: padded to 52


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp")
    data = write_noisy_mnist(tmp / "data", n_train=N_TRAIN, n_test=100)
    run_dir, record = tmp / "run", tmp / "batches"
    args = cli_args(
        run_dir,
        tmp / "store",
        "+experiment=mnist_mlp_kd_unlabeled",
        "trainer=ddp_cpu",
        "trainer.max_epochs=2",
        f"data.labeled_fraction={FRACTION}",
        # enough learning in 4 steps to tell a working KD from a broken one: agreement 0.30-0.49
        # over teacher_train.seed 0-3 (lr 0.1 gave 0.20-0.30, too close to the bound below)
        "module.optimizer.lr=0.3",
        "distill.temperature=4",
        "+callbacks.record._target_=tests.smoke.cli.IndexRecorder",
        f"+callbacks.record.folder={record}",
    )
    res = run_cli(args, tmp, cli_env(data))
    assert res.returncode == 0, res.stderr[-4000:]
    ranks = {
        r: [json.loads(line) for line in (record / f"rank{r}.jsonl").read_text().splitlines()]
        for r in (0, 1)
    }
    dm = MNISTDataModule(
        name="mnist", data_dir=str(data), download=False, val_size=VAL, labeled_fraction=FRACTION
    )
    dm.setup()
    return {
        "tmp": tmp,
        "run_dir": run_dir,
        "ranks": ranks,
        "subset": dm.train_idx.tolist(),
        "res": res,
    }


@pytest.mark.parametrize("epoch", [0, 1])
def test_each_rank_trains_on_its_shard_of_the_subset(ddp_run, epoch):
    subset, ranks = ddp_run["subset"], ddp_run["ranks"]
    assert len(subset) == 51
    seen = {
        r: [i for b in batches if b["epoch"] == epoch for i in b["idx"]]
        for r, batches in ranks.items()
    }
    assert all(b["world"] == 2 for batches in ranks.values() for b in batches)
    # DistributedSampler: ceil(51 / 2) = 26 samples per rank, padding 1 repeated sample
    assert len(seen[0]) == len(seen[1]) == 26
    assert all(len(set(s)) == len(s) for s in seen.values()), "a rank saw a sample twice"
    both = Counter(seen[0] + seen[1])
    assert set(both) == set(subset), "samples outside the subset, or some never seen"
    assert sum(n - 1 for n in both.values()) == 52 - 51  # only the documented padding repeats


def test_shards_are_reshuffled_each_epoch(ddp_run):
    order = {
        e: [i for b in ddp_run["ranks"][0] if b["epoch"] == e for i in b["idx"]] for e in (0, 1)
    }
    assert order[0] != order[1]


def test_unlabeled_batches_carry_no_labels_and_store_serves_each_ranks_samples(ddp_run):
    batches = [b for rank in ddp_run["ranks"].values() for b in rank]
    assert not any(b["has_y"] for b in batches)
    for b in batches:  # float16 store: within half-precision rounding of the teacher's own logits
        assert b["store_err"] <= 2e-3 * max(1.0, b["logit_max"])
    store = ddp_run["tmp"] / "store"
    assert len(list((store / "teachers").iterdir())) == 1
    assert len(list((store / "logits").glob("*/view_0.npy"))) == 1  # computed once for both ranks
    log = ddp_run["res"].stdout + ddp_run["res"].stderr
    assert log.count("training teacher") == 1


def test_metrics_are_written_once_with_sane_values(ddp_run):
    assert [p.parent for p in ddp_run["tmp"].rglob("metrics.json")] == [ddp_run["run_dir"]]
    m = metrics(ddp_run["run_dir"])
    assert m["status"] == "finished"
    assert m["hparams"]["unlabeled"] is True and m["hparams"]["labeled_fraction"] == FRACTION
    for key in ("test/acc_last", "test/acc_best", "test/agreement_last"):
        assert 0.0 <= m[key] <= 1.0
    assert m["epochs"] == 2
    assert (
        m["test/agreement_last"] > 0.25
    )  # the student learnt from its own samples' teacher logits
