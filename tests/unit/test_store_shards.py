"""Sharded teacher store: fixed-size shard files, each published atomically and validated alone;
concurrent writers without a working flock race benignly (identical bytes)."""

from __future__ import annotations

import contextlib
import fcntl
import json
import multiprocessing as mp
import os
import re
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from kdlight.errors import ConfigError
from kdlight.teacher.store import TeacherLogitStore

N, C, R = 100, 10, 30  # 4 shards: rows 0-29, 30-59, 60-89, 90-99
KEY = {"teacher": "abc123", "data": "toy"}
SHARDS = [f"view_0.shard{k:05d}.npy" for k in range(4)]


def _logits(idx: torch.Tensor) -> torch.Tensor:
    return 4 * torch.sin(0.29 * idx.float()[:, None] + 0.9 * torch.arange(C))


class Counter:
    def __init__(self):
        self.calls: list[torch.Tensor] = []

    def __call__(self, idx):
        self.calls.append(idx.clone())
        return _logits(idx)


def _store(root, shard_rows=R, **kw) -> TeacherLogitStore:
    return TeacherLogitStore(root, KEY, num_samples=N, num_classes=C, shard_rows=shard_rows, **kw)


def test_a_view_is_split_into_shards_of_fixed_rows(tmp_path):
    store = _store(tmp_path)
    compute = Counter()
    out = store.get(0, compute, batch_size=25, progress=False)
    # batches never cross a shard: the bytes of a shard depend on its rows only
    assert [len(c) for c in compute.calls] == [25, 5, 25, 5, 25, 5, 10]
    assert torch.equal(out, _logits(torch.arange(N)).half())
    assert sorted(p.name for p in store.path.glob("*.npy")) == SHARDS
    for k, (a, b) in enumerate([(0, 30), (30, 60), (60, 90), (90, 100)]):
        meta = json.loads((store.path / f"view_0.shard{k:05d}.json").read_text())
        assert meta["rows"] == [a, b] and meta["shape"] == [b - a, C]
        assert meta["checksum"].startswith("blake2b:")
        assert np.array_equal(np.load(store.path / SHARDS[k]), _logits(torch.arange(a, b)).half().numpy())  # fmt: skip
    idx = torch.tensor([99, 0, 31, 59, 60, 29])
    assert torch.equal(store.gather(0, idx), _logits(idx).half().float())
    # the layout is in the key; one shard (N <= shard_rows) keeps the unsharded key and names
    assert json.loads((store.path / "key.json").read_text())["store"] == {"shard_rows": R}
    one = _store(tmp_path, shard_rows=N)
    assert one.key_hash != store.key_hash and "store" not in one.key


def test_a_bad_shard_is_recomputed_alone(tmp_path):
    store = _store(tmp_path)
    store.get(0, Counter(), progress=False)
    before = {n: (store.path / n).stat() for n in SHARDS}
    bad = store.path / SHARDS[2]
    raw = bytearray(bad.read_bytes())
    raw[-5] ^= 0xFF
    bad.write_bytes(bytes(raw))
    fresh = _store(tmp_path)
    assert not fresh.has(0)
    compute = Counter()
    out = fresh.get(0, compute, progress=False)
    assert torch.equal(torch.cat(compute.calls), torch.arange(60, 90))  # only shard 2's rows
    assert torch.equal(out, _logits(torch.arange(N)).half())
    for n in (SHARDS[0], SHARDS[1], SHARDS[3]):  # the good shards were not rewritten
        st = (store.path / n).stat()
        assert (st.st_ino, st.st_mtime_ns) == (before[n].st_ino, before[n].st_mtime_ns)


def test_feature_tables_are_sharded_too(tmp_path):
    store = _store(tmp_path, dtype="float32")
    table = "fc:in/embedding"

    def compute(idx):
        return {"logits": _logits(idx), table: idx.float()[:, None].repeat(1, 3)}

    view = store.get_view(0, compute, {table: (3,)}, progress=False)
    assert len(list(store.path.glob("view_0.fc_in_embedding-*.shard*.npy"))) == 4
    pos = torch.tensor([95, 3, 45])
    assert view.rows(table, pos).tolist() == [[95.0] * 3, [3.0] * 3, [45.0] * 3]


def test_a_live_writers_temp_file_is_kept_and_a_dead_ones_removed(tmp_path):
    store = _store(tmp_path)
    live = store.path / ".view_0.shard00001.npy.live.tmp"
    dead = store.path / ".view_0.shard00000.npy.dead.tmp"
    live.write_bytes(b"x")
    dead.write_bytes(b"x")
    with open(live, "rb") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)  # a writer at work on it
        store.get(0, Counter(), progress=False)
        assert live.exists() and not dead.exists()
    assert store.has(0)


def test_a_writer_whose_temp_file_vanished_reads_what_was_published(tmp_path, monkeypatch):
    import kdlight.teacher.fill as store_module  # the store's writer publishes with os.replace

    real_replace, lost = os.replace, []

    def replace_once_lost(src, dst):
        if not lost and str(src).endswith(".tmp") and str(dst).endswith(".npy"):
            lost.append(src)
            os.unlink(src)  # another process's cleaner took it
        return real_replace(src, dst)

    monkeypatch.setattr(store_module.os, "replace", replace_once_lost)
    store = _store(tmp_path)
    out = store.get(0, Counter(), progress=False)
    assert lost and store.has(0)
    assert torch.equal(out, _logits(torch.arange(N)).half())


@pytest.mark.parametrize("bad", [0, -1, 1.5, "10", None])
def test_bad_shard_rows_is_one_sentence(tmp_path, bad):
    message = f"teacher_store.shard_rows must be a positive integer, got {bad!r}."
    with pytest.raises(ConfigError, match=re.escape(message)):
        _store(tmp_path, shard_rows=bad)


# --- two processes on a file system where flock does nothing ------------------------------------


def _racer(root: str, log: str, barrier, queue) -> None:
    store = _store(Path(root))
    store._lock = lambda view: contextlib.nullcontext()  # flock not honoured (some NFS)

    def compute(idx):
        with open(log, "a") as f:
            f.write(f"{os.getpid()}\n")
        time.sleep(0.02)  # both writers inside the same shard at once
        return _logits(idx)

    barrier.wait()
    out = store.get(0, compute, batch_size=10, progress=False)
    queue.put(out.numpy().copy())


def test_two_writers_without_flock_race_benignly(tmp_path):
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["torch", "kdlight.teacher.store"])
    barrier, queue = ctx.Barrier(2), ctx.Queue()
    log = tmp_path / "calls.log"
    procs = [
        ctx.Process(target=_racer, args=(str(tmp_path), str(log), barrier, queue)) for _ in range(2)
    ]
    for p in procs:
        p.start()
    results = [queue.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    assert len(set(log.read_text().split())) == 2  # both computed: the race did happen
    expected = _logits(torch.arange(N)).half().numpy()
    assert all(np.array_equal(r, expected) for r in results)
    fresh = _store(tmp_path)
    assert fresh.has(0) and torch.equal(fresh.load(0), torch.from_numpy(expected))
    assert not list(fresh.path.glob(".*.tmp"))  # no temp file left behind
