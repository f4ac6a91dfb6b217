"""TeacherLogitStore: computed once, served from disk, never serves a corrupt view, one writer at a time."""

from __future__ import annotations

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

from kdlight.errors import DataError, KdlightError
from kdlight.teacher.store import TeacherLogitStore

N, C = 100, 10
KEY = {"teacher": "abc123", "data": "toy", "aug": "crop_flip", "seed": 0}


def _logits(idx: torch.Tensor, view: int = 0) -> torch.Tensor:
    """Deterministic fake teacher: row i is a smooth function of (i, view)."""
    cols = torch.arange(C, dtype=torch.float32)
    return 5 * torch.sin(0.37 * idx.float()[:, None] + 1.3 * cols + 0.5 * view)


class Counter:
    """A compute function that records the indices it was called with."""

    def __init__(self, view: int = 0):
        self.view = view
        self.calls: list[torch.Tensor] = []

    def __call__(self, idx: torch.Tensor) -> torch.Tensor:
        self.calls.append(idx.clone())
        return _logits(idx, self.view)


def _store(root: Path, key=KEY, dtype="float16") -> TeacherLogitStore:
    return TeacherLogitStore(root, key, num_samples=N, num_classes=C, dtype=dtype)


def test_store_batch_size_is_the_default_of_get(tmp_path):
    store = TeacherLogitStore(tmp_path, KEY, num_samples=N, num_classes=C, batch_size=40)
    compute = Counter()
    store.get(0, compute, progress=False)
    assert [len(c) for c in compute.calls] == [40, 40, 20]


@pytest.mark.parametrize("bad", [0, -8, 2.5, "256", True])
def test_store_rejects_a_non_positive_batch_size(tmp_path, bad):
    from kdlight.errors import ConfigError

    with pytest.raises(
        ConfigError,
        match=re.escape(f"teacher_store.batch_size must be a positive integer, got {bad!r}."),
    ):
        TeacherLogitStore(tmp_path, KEY, num_samples=N, num_classes=C, batch_size=bad)
    assert not any(tmp_path.iterdir())  # nothing written


def test_compute_once_then_served_from_disk(tmp_path):
    store = _store(tmp_path)
    assert not store.has(0)
    compute = Counter()
    out = store.get(0, compute, batch_size=32, progress=False)
    # Every index exactly once, in batches of at most 32.
    assert torch.equal(torch.cat(compute.calls), torch.arange(N))
    assert [len(c) for c in compute.calls] == [32, 32, 32, 4]
    assert out.shape == (N, C) and out.dtype == torch.float16
    assert store.has(0)

    again = Counter()
    fresh = _store(tmp_path)  # a later run of the sweep
    served = fresh.get(0, again, progress=False)
    assert again.calls == []
    assert torch.equal(served, out)
    assert sorted(p.name for p in store.path.iterdir() if not p.name.endswith(".lock")) == [
        "key.json",
        "view_0-checksums.json",
        "view_0.json",
        "view_0.npy",
    ]


def test_values_float16_rounding_and_float32_exact(tmp_path):
    expected = _logits(torch.arange(N))
    f16 = _store(tmp_path / "a", dtype="float16").get(0, Counter(), progress=False)
    assert torch.equal(f16, expected.half())  # round-to-nearest, nothing else
    assert (f16.float() - expected).abs().max() <= 5 * 2**-11
    f32 = _store(tmp_path / "b", dtype="float32").get(0, Counter(), progress=False)
    assert f32.dtype == torch.float32
    assert torch.equal(f32, expected)


def test_load_is_memory_mapped_and_writes_stay_private(tmp_path):
    store = _store(tmp_path, dtype="float32")
    store.get(0, Counter(), progress=False)
    t = store.load(0)
    t[0, 0] = 1234.0  # copy-on-write: must not reach the file
    assert store.has(0)
    assert store.load(0)[0, 0] != 1234.0


def test_views_are_separate(tmp_path):
    store = _store(tmp_path, dtype="float32")
    v0 = store.get(0, Counter(view=0), progress=False)
    v1 = store.get(1, Counter(view=1), progress=False)
    assert torch.equal(v1, _logits(torch.arange(N), 1))
    assert not torch.equal(v0, v1)
    assert store.has(0) and store.has(1) and not store.has(2)


def test_gather_rows_on_idx_device(tmp_path):
    store = _store(tmp_path)
    for v in range(3):
        store.get(v, Counter(view=v), progress=False)
    idx = torch.tensor([5, 0, 99, 5, 42])
    for v in (0, 1, 2, 0):
        rows = store.gather(v, idx)
        assert rows.dtype == torch.float32 and rows.device == idx.device and rows.shape == (5, C)
        assert torch.equal(rows, _logits(idx, v).half().float())
    assert len(store._cache) == 2  # at most two views kept open


def test_gather_missing_view_raises(tmp_path):
    with pytest.raises(DataError, match="view 3"):
        _store(tmp_path).gather(3, torch.arange(4))


def test_different_keys_different_dirs(tmp_path):
    a = _store(tmp_path)
    b = _store(tmp_path, key={**KEY, "teacher": "def456"})
    same = _store(tmp_path, key=dict(reversed(list(KEY.items()))))  # order does not matter
    assert a.path != b.path and a.path.parent == b.path.parent == tmp_path
    assert same.path == a.path and len(a.key_hash) == 16
    assert json.loads((a.path / "key.json").read_text()) == KEY
    a.get(0, Counter(), progress=False)
    assert not b.has(0)


def test_key_json_of_another_key_is_damaged_not_a_collision(tmp_path):
    store = _store(tmp_path)
    (store.path / "key.json").write_text(json.dumps({"teacher": "someone else"}))
    with pytest.raises(KdlightError) as info:
        _store(tmp_path)
    assert str(info.value) == (
        f"teacher store key file {store.path / 'key.json'} is damaged (it holds another "
        f"folder's key); delete the folder {store.path} (a cache: the next run recomputes its "
        "teacher outputs)."
    )


@pytest.mark.parametrize(
    "damage",
    [
        "flip_byte",
        "truncate",
        "no_meta",
        "bad_checksum",
        "wrong_key_hash",
        "wrong_shape",
        "incomplete",
        "meta_garbage",
    ],
)
def test_damaged_view_is_not_trusted_and_recomputed(tmp_path, damage):
    store = _store(tmp_path)
    good = store.get(0, Counter(), progress=False).clone()
    data, meta_file = store.path / "view_0.npy", store.path / "view_0.json"
    meta = json.loads(meta_file.read_text())
    if damage == "flip_byte":
        raw = bytearray(data.read_bytes())
        raw[-7] ^= 0xFF
        data.write_bytes(bytes(raw))
    elif damage == "truncate":
        data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    elif damage == "no_meta":
        meta_file.unlink()
    elif damage == "meta_garbage":
        meta_file.write_text('{"key_hash": ')
    else:
        change = {
            "bad_checksum": {"checksum": "blake2b:" + "0" * 32},
            "wrong_key_hash": {"key_hash": "0" * 16},
            "wrong_shape": {"shape": [N, C + 1]},
            "incomplete": {"complete": False},
        }[damage]
        meta_file.write_text(json.dumps({**meta, **change}))

    later = _store(tmp_path)
    assert not later.has(0)
    with pytest.raises(DataError):
        later.load(0)
    compute = Counter()
    out = later.get(0, compute, progress=False)
    assert len(compute.calls) > 0
    assert torch.equal(out, good) and later.has(0)


def test_leftover_temp_file_is_ignored_and_cleaned(tmp_path):
    store = _store(tmp_path)
    # A writer killed mid-way leaves only a temp file: nothing is trusted.
    stale = store.path / ".view_0.npy.dead.tmp"
    with open(stale, "wb") as f:
        np.save(f, np.zeros((N, C), np.float16))
    assert not store.has(0)
    store.get(0, Counter(), progress=False)
    assert not stale.exists() and store.has(0)


def test_other_dtype_or_shape_does_not_trust_view(tmp_path):
    _store(tmp_path, dtype="float16").get(0, Counter(), progress=False)
    assert not _store(tmp_path, dtype="float32").has(0)
    assert not TeacherLogitStore(tmp_path, KEY, num_samples=N + 1, num_classes=C).has(0)


def test_non_finite_or_misshaped_compute_raises_and_leaves_nothing(tmp_path):
    store = _store(tmp_path)

    def nan_at_50(idx):
        out = _logits(idx)
        out[idx == 50] = float("nan")
        return out

    with pytest.raises(KdlightError, match="NaN or Inf"):
        store.get(0, nan_at_50, batch_size=16, progress=False)
    with pytest.raises(KdlightError, match="shape"):
        store.get(0, lambda idx: torch.zeros(len(idx), C + 1), progress=False)
    with pytest.raises(KdlightError, match="float16 range"):
        store.get(0, lambda idx: torch.full((len(idx), C), 1e6), progress=False)
    assert not store.has(0)
    assert sorted(p.name for p in store.path.iterdir()) == ["key.json", "view_0.lock"]
    # float32 takes what float16 cannot.
    big = _store(tmp_path / "f32", dtype="float32").get(
        0, lambda idx: torch.full((len(idx), C), 1e6), progress=False
    )
    assert float(big.max()) == 1e6


def test_store_pickles_without_open_views(tmp_path):
    import pickle

    store = _store(tmp_path)
    store.get(0, Counter(), progress=False)
    store.gather(0, torch.arange(3))
    clone = pickle.loads(pickle.dumps(store))
    assert clone._cache == {} and clone.path == store.path
    assert torch.equal(clone.gather(0, torch.arange(3)), store.gather(0, torch.arange(3)))


# --- several processes at once -------------------------------------------------------------


def _record_and_compute(idx: torch.Tensor, log: Path) -> torch.Tensor:
    with open(log, "a") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        f.write(f"{os.getpid()}\n")
        fcntl.flock(f.fileno(), fcntl.LOCK_UN)
    time.sleep(0.05)  # widen the window in which the other processes try to compute too
    return _logits(idx)


def _worker(root: str, log: str, barrier, queue) -> None:
    store = _store(Path(root))
    barrier.wait()
    out = store.get(
        0, lambda idx: _record_and_compute(idx, Path(log)), batch_size=25, progress=False
    )
    queue.put((os.getpid(), out.numpy().copy()))


def test_concurrent_get_computes_once(tmp_path):
    # forkserver, not fork: children come from a fresh process (no threads or CUDA state from
    # pytest); preloading torch there makes starting 4 of them ~2x faster than "spawn".
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["torch", "kdlight.teacher.store"])
    barrier, queue = ctx.Barrier(4), ctx.Queue()
    log = tmp_path / "calls.log"
    procs = [
        ctx.Process(target=_worker, args=(str(tmp_path), str(log), barrier, queue))
        for _ in range(4)
    ]
    for p in procs:
        p.start()
    results = [queue.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0

    pids = log.read_text().split()
    assert len(pids) == 4 and len(set(pids)) == 1  # 4 batches of 25, all from a single process
    arrays = [a for _, a in results]
    assert all(np.array_equal(a, arrays[0]) for a in arrays)
    assert np.array_equal(arrays[0], _logits(torch.arange(N)).half().numpy())
