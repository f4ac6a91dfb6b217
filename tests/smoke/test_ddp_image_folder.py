"""DDP (``trainer=ddp_cpu``, two gloo processes) on an ImageNet-style image folder decoded by
DataLoader workers: each rank trains on its own half of the subset, is served its own samples'
teacher logits from one shared store, and one process writes the metrics."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from kdlight.data.datasets.imagenet import ImageNetDataModule
from tests.helpers.data import write_image_tree
from tests.smoke.cli import cli_args, cli_env, metrics, run_cli, tiny_folder_kd

VAL, FRACTION = 10, 0.5


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp_folder")
    tree = write_image_tree(tmp / "tree", per_class=12, n_test=2)  # 60 train/, 10 val/ images
    run_dir, record = tmp / "run", tmp / "batches"
    args = cli_args(
        run_dir,
        tmp / "store",
        "data=imagenet",
        f"data.root={tree}",
        *tiny_folder_kd(tmp / "teacher.pt"),
        f"data.val_size={VAL}",
        f"data.labeled_fraction={FRACTION}",
        "data.batch_size=8",
        "trainer=ddp_cpu",
        "trainer.max_epochs=2",
        "+callbacks.record._target_=tests.smoke.cli.IndexRecorder",
        f"+callbacks.record.folder={record}",
    )
    res = run_cli(args, tmp, cli_env(tmp / "data"))
    assert res.returncode == 0, res.stderr[-4000:]
    ranks = {
        r: [json.loads(line) for line in (record / f"rank{r}.jsonl").read_text().splitlines()]
        for r in (0, 1)
    }
    dm = ImageNetDataModule(
        root=str(tree),
        num_classes=5,
        image_size=32,
        eval_resize=36,
        val_size=VAL,
        labeled_fraction=FRACTION,
    )
    dm.setup()
    return {"tmp": tmp, "run_dir": run_dir, "ranks": ranks, "subset": dm.train_idx.tolist()}


@pytest.mark.parametrize("epoch", [0, 1])
def test_each_rank_decodes_and_trains_on_its_half_of_the_subset(ddp_run, epoch):
    subset, ranks = ddp_run["subset"], ddp_run["ranks"]
    assert len(subset) == 25  # 50 training images after the 10 held out, half of them
    seen = {
        r: [i for b in batches if b["epoch"] == epoch for i in b["idx"]]
        for r, batches in ranks.items()
    }
    assert all(b["world"] == 2 for batches in ranks.values() for b in batches)
    assert len(seen[0]) == len(seen[1]) == 13  # DistributedSampler: ceil(25 / 2), 1 padded
    assert all(len(set(s)) == len(s) for s in seen.values()), "a rank saw a sample twice"
    both = Counter(seen[0] + seen[1])
    assert set(both) == set(subset), "samples outside the subset, or some never seen"
    assert sum(n - 1 for n in both.values()) == 1  # only the sampler's padding repeats


def test_store_serves_each_ranks_samples_once_filled(ddp_run):
    batches = [b for rank in ddp_run["ranks"].values() for b in rank]
    for b in batches:  # float16 store: within half-precision rounding of the teacher's own logits
        assert b["store_err"] <= 2e-3 * max(1.0, b["logit_max"])
    store = ddp_run["tmp"] / "store" / "logits"
    assert len(list(store.iterdir())) == 1  # one key, shared by both ranks


def test_metrics_are_written_once(ddp_run):
    assert [p.parent for p in ddp_run["tmp"].rglob("metrics.json")] == [ddp_run["run_dir"]]
    m = metrics(ddp_run["run_dir"])
    assert m["status"] == "finished" and m["epochs"] == 2
    assert 0.0 <= m["test/acc_last"] <= 1.0
