"""CRD's memory banks under DDP: two gloo processes (the backend ``trainer=ddp_cpu`` uses) run
CRD on their own shards; afterwards both ranks hold the same banks, equal to the banks one
process gets from the union of the ranks' batches, and equal to the momentum updates written
out here by hand. The expected banks follow the sample index (shuffled, padded shards)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from kdlight.methods.base import Context
from kdlight.methods.crd import CRD

N_ROWS, WORLD, BATCH, MOMENTUM = 20, 2, 3, 0.5
TRAIN_IDX = torch.tensor([17, 2, 9, 4, 11, 6, 13, 0, 15, 8, 19, 5, 1])  # 13 training rows
LABELS = torch.arange(TRAIN_IDX.numel()) % 3


def schedule() -> list[tuple[int, list[torch.Tensor]]]:
    """(epoch, one index batch per rank) per step, as DistributedSampler deals them.

    Epochs 0 and 1: a seeded permutation of the 13 rows padded to 14 with its first row, rank r
    taking every second one from r, in batches of 3 (3, 3, 1). Epoch 2: one step with unequal
    batches that share a row (row 9 on both ranks).
    """
    steps = []
    for epoch in (0, 1):
        perm = TRAIN_IDX[torch.randperm(13, generator=torch.Generator().manual_seed(epoch))]
        padded = torch.cat([perm, perm[:1]])
        shards = [padded[r::WORLD] for r in range(WORLD)]
        for i in range(0, shards[0].numel(), BATCH):
            steps.append((epoch, [s[i : i + BATCH] for s in shards]))
    steps.append((2, [torch.tensor([9, 4]), torch.tensor([9, 0, 15])]))
    return steps


def features(epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Student (5-d) and teacher (7-d) features of every row in ``epoch`` (one view per epoch)."""
    g = torch.Generator().manual_seed(100 + epoch)
    return torch.randn(N_ROWS, 5, generator=g), torch.randn(N_ROWS, 7, generator=g)


def build() -> CRD:
    torch.manual_seed(0)
    method = CRD(
        feat_dim=4, nce_k=6, nce_m=MOMENTUM, gamma=0.0, student_layers=["s"], teacher_layers=["t"]
    )
    method.bind_data(N_ROWS, TRAIN_IDX, LABELS)
    method.build({"s": torch.zeros(2, 5)}, {"t": torch.zeros(2, 7)}, 3)
    return method


def step(method: CRD, epoch: int, idx: torch.Tensor) -> float:
    fs, ft = features(epoch)
    label = dict(zip(TRAIN_IDX.tolist(), LABELS.tolist(), strict=True))
    ctx = Context(
        student_logits=None,
        teacher_logits=None,
        labels=torch.tensor([label[int(i)] for i in idx]),
        idx=idx,
        epoch=epoch,
        student_feats={"s": fs[idx]},
        teacher_feats={"t": ft[idx]},
    )
    return float(method(ctx)["loss_crd"].detach())


def state(method: CRD, losses: list[float]) -> dict[str, object]:
    return {
        "memory_s": method.memory_s.clone(),
        "memory_t": method.memory_t.clone(),
        "z": (float(method.z_s), float(method.z_t)),
        "losses": losses,
    }


def rank_main(rank: int, init_file: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        method = build()
        losses = [step(method, epoch, shards[rank]) for epoch, shards in schedule()]
        torch.save(state(method, losses), f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("crd_ddp")
    mp.start_processes(
        rank_main, args=(str(tmp / "init"), str(tmp)), nprocs=WORLD, start_method="spawn"
    )
    return [torch.load(tmp / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


@pytest.fixture(scope="module")
def single():
    """One process (no process group) trained on the union of the ranks' batches, in rank order."""
    method = build()
    losses = [step(method, epoch, torch.cat(shards)) for epoch, shards in schedule()]
    return state(method, losses)


def by_hand(ranks_seen: range) -> tuple[torch.Tensor, torch.Tensor]:
    """The banks after every step, in float64: each row seen moves once per step towards its embedding."""
    method = build()
    position = {int(i): int(method.position[i]) for i in TRAIN_IDX}
    banks = [method.memory_s.double(), method.memory_t.double()]
    heads = [
        (h.weight.detach().double(), h.bias.detach().double())
        for h in (method.embed_s, method.embed_t)
    ]
    for epoch, shards in schedule():
        feats = features(epoch)
        moved = [bank.clone() for bank in banks]
        for i in [int(i) for r in ranks_seen for i in shards[r]]:
            p = position[i]
            for side in (0, 1):
                w, b = heads[side]
                v = w @ feats[side][i].double() + b
                v = v / math.sqrt(float(v @ v))
                new = MOMENTUM * banks[side][p] + (1 - MOMENTUM) * v
                moved[side][p] = new / math.sqrt(float(new @ new))
        banks = moved
    return banks[0], banks[1]


def test_both_ranks_hold_the_same_banks_and_normalisation(ranks):
    a, b = ranks
    assert torch.equal(a["memory_s"], b["memory_s"])
    assert torch.equal(a["memory_t"], b["memory_t"])
    assert a["z"] == b["z"]


def test_banks_equal_the_momentum_updates_of_the_union_of_samples(ranks):
    expected_s, expected_t = by_hand(range(WORLD))
    initial = build()
    for r in ranks:
        assert torch.allclose(r["memory_s"].double(), expected_s, atol=1e-6)
        assert torch.allclose(r["memory_t"].double(), expected_t, atol=1e-6)
        # every training row moved, whichever rank saw it
        for bank, before in ((r["memory_s"], initial.memory_s), (r["memory_t"], initial.memory_t)):
            moved = (bank - before).abs().amax(dim=1) > 1e-4
            assert moved.sum() == TRAIN_IDX.numel()
    # one rank's own samples give other banks: the check above can fail
    own_s, _ = by_hand(range(1))
    assert not torch.allclose(own_s, expected_s, atol=1e-3)


def test_ddp_equals_one_process_on_the_union_batches(ranks, single):
    for r in ranks:
        assert torch.allclose(r["memory_s"], single["memory_s"], atol=1e-6)
        assert torch.allclose(r["memory_t"], single["memory_t"], atol=1e-6)
        assert r["z"] == pytest.approx(single["z"], rel=1e-5)
    # same seed on every rank: the negatives of the union batch are one process's draw, so the
    # batch-weighted mean of the ranks' losses is the one process's loss, step by step
    sizes = [[s.numel() for s in shards] for _, shards in schedule()]
    for i, (n, expected) in enumerate(zip(sizes, single["losses"], strict=True)):
        mean = sum(k * r["losses"][i] for k, r in zip(n, ranks, strict=True)) / sum(n)
        assert mean == pytest.approx(expected, rel=1e-4)
