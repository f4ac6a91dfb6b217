"""Top-k teacher store: K largest logits + log-sum-exp of the rest, rebuilt at serve time."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
import torch

from kdlight.errors import ConfigError
from kdlight.teacher.store import TeacherLogitStore

KEY = {"teacher": "abc123", "data": "toy"}
ROW = [2.0, 0.0, 1.0, -1.0, 0.5]


def _store(root, k, rows=ROW, dtype="float32", **kw):
    table = torch.tensor([rows] * 4 if isinstance(rows[0], float) else rows)
    store = TeacherLogitStore(
        root, KEY, num_samples=len(table), num_classes=table.shape[1], dtype=dtype, top_k=k, **kw
    )
    return store, table


def test_rebuilt_row_by_hand(tmp_path):
    store, table = _store(tmp_path, 2)
    served = store.get(0, lambda idx: table[idx], progress=False)
    # kept: classes 0 (2.0) and 2 (1.0); the other three share exp(0) + exp(-1) + exp(0.5)
    rest = math.log(math.exp(0.0) + math.exp(-1.0) + math.exp(0.5))
    fill = rest - math.log(3)
    expected = torch.tensor([[2.0, fill, 1.0, fill, fill]] * 4)
    assert served.dtype == torch.float32
    assert torch.allclose(served, expected, atol=1e-6)
    # at T = 1 the kept classes keep their probabilities, and the rest its total
    z = sum(math.exp(v) for v in ROW)
    p = torch.softmax(served[0], 0)
    assert p[0].item() == pytest.approx(math.exp(2.0) / z, rel=1e-6)
    assert p[2].item() == pytest.approx(math.exp(1.0) / z, rel=1e-6)
    assert (p[1] + p[3] + p[4]).item() == pytest.approx((1 + math.exp(-1) + math.exp(0.5)) / z)
    assert torch.equal(store.gather(0, torch.tensor([3, 1])), served[[3, 1]])


def test_files_hold_values_indices_and_the_rest(tmp_path):
    store, table = _store(tmp_path, 2, dtype="float16")
    store.get(0, lambda idx: table[idx], progress=False)
    files = sorted(p.name for p in store.path.glob("*.npy"))
    assert files == [
        "view_0.topk_indices.npy",
        "view_0.topk_lse_rest.npy",
        "view_0.topk_values.npy",
    ]
    values = np.load(store.path / "view_0.topk_values.npy")
    indices = np.load(store.path / "view_0.topk_indices.npy")
    assert values.dtype == np.float16 and values.shape == (4, 2)
    assert indices.dtype == np.int16 and indices.tolist() == [[0, 2]] * 4
    assert values.tolist() == [[2.0, 1.0]] * 4
    lse = np.load(store.path / "view_0.topk_lse_rest.npy")
    assert lse.dtype == np.float32
    assert lse[0] == pytest.approx(math.log(1 + math.exp(-1) + math.exp(0.5)), rel=1e-6)


def test_top_k_is_in_the_key_and_k_at_least_c_is_the_exact_store(tmp_path):
    exact, table = _store(tmp_path, None)
    top3, _ = _store(tmp_path, 3)
    assert top3.key_hash != exact.key_hash
    assert json.loads((top3.path / "key.json").read_text())["store"] == {"top_k": 3}
    for k in (5, 6, 100):  # K >= C: exact logits, the exact store's files
        same, _ = _store(tmp_path, k)
        assert same.key_hash == exact.key_hash and same.top_k is None
    exact.get(0, lambda idx: table[idx], progress=False)
    assert torch.equal(_store(tmp_path, 5)[0].load(0), table)


def test_ties_and_many_classes(tmp_path):
    torch.manual_seed(0)
    rows = torch.randn(6, 40).tolist()
    store, table = _store(tmp_path, 7, rows=rows)
    served = store.get(0, lambda idx: table[idx], progress=False)
    for r in range(6):
        order = sorted(range(40), key=lambda c: -rows[r][c])
        kept, rest = order[:7], order[7:]
        fill = math.log(sum(math.exp(rows[r][c]) for c in rest)) - math.log(33)
        for c in range(40):
            want = rows[r][c] if c in kept else fill
            assert served[r, c].item() == pytest.approx(want, abs=1e-5)


@pytest.mark.parametrize("bad", [0, -3, 2.5, "4", True])
def test_bad_k_is_one_sentence(tmp_path, bad):
    message = f"teacher_store.top_k must be null (exact logits) or a positive integer, got {bad!r}."
    with pytest.raises(ConfigError, match=re.escape(message)):
        _store(tmp_path, bad)
    assert not any(tmp_path.iterdir())
