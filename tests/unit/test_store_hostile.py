"""The teacher store against forged, planted and damaged files: never served, never a traceback.

Each case here is a row of docs/errors.md. A forger who rewrites a data file and its meta is
caught by the view's manifest; one who also rewrites the manifest is caught by the range checks
(finite values; top-k indices in range and distinct per row) where the values are impossible.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import stat
import threading

import numpy as np
import pytest
import torch

from kdlight.errors import DataError, KdlightError
from kdlight.teacher.store import TeacherLogitStore

N, C = 40, 10
KEY = {"teacher": "abc123", "data": "toy"}


def _logits(idx: torch.Tensor) -> torch.Tensor:
    return 5 * torch.sin(0.37 * idx.float()[:, None] + 1.3 * torch.arange(C, dtype=torch.float32))


class Counter:
    def __init__(self):
        self.calls = 0

    def __call__(self, idx):
        self.calls += 1
        return _logits(idx)


def _store(root, **kw) -> TeacherLogitStore:
    return TeacherLogitStore(root, KEY, num_samples=N, num_classes=C, dtype="float32", **kw)


def _checksum(path) -> str:
    return "blake2b:" + hashlib.blake2b(path.read_bytes(), digest_size=16).hexdigest()


def _forge(store, name: str, array: np.ndarray, manifest: bool = True) -> None:
    """Replace data file ``name`` by ``array`` and make its meta (and the manifest) agree."""
    data = store.path / name
    np.save(data, array)
    meta_file = data.with_suffix(".json")
    meta = json.loads(meta_file.read_text())
    meta_file.write_text(json.dumps({**meta, "checksum": _checksum(data)}))
    if manifest:
        mf = store.path / "view_0-checksums.json"
        doc = json.loads(mf.read_text())
        doc["files"][name] = _checksum(data)
        mf.write_text(json.dumps(doc))


def _recomputed(root, caplog, expect: str, **kw) -> None:
    """A later run is not served the forged view: it warns ``expect`` and recomputes it."""
    later = _store(root, **kw)
    assert not later.has(0)
    with pytest.raises(DataError, match=re.escape(expect)):
        later.load(0)
    compute = Counter()
    with caplog.at_level(logging.WARNING, logger="kdlight.teacher.store"):
        out = later.get(0, compute, progress=False)
    assert compute.calls > 0 and later.has(0)
    assert any(expect in r.getMessage() and "recomputed" in r.getMessage() for r in caplog.records)
    if later.top_k is None:
        assert torch.equal(out, _logits(torch.arange(N)))


def test_forged_data_and_meta_are_caught_by_the_manifest(tmp_path, caplog):
    store = _store(tmp_path)
    store.get(0, Counter(), progress=False)
    poisoned = _logits(torch.arange(N)).numpy()[:, ::-1].copy()  # finite, plausible, wrong
    _forge(store, "view_0.npy", poisoned, manifest=False)
    _recomputed(tmp_path, caplog, "does not match the checksum in view_0-checksums.json")


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_logits_with_every_checksum_forged_are_refused(tmp_path, caplog, value):
    store = _store(tmp_path)
    store.get(0, Counter(), progress=False)
    poisoned = _logits(torch.arange(N)).numpy()
    poisoned[17, 3] = value
    _forge(store, "view_0.npy", poisoned)
    _recomputed(tmp_path, caplog, f"{store.path / 'view_0.npy'} holds NaN or Inf")


@pytest.mark.parametrize(
    "index, why",
    [
        (C, "holds class indices outside [0, 10)"),
        (-1, "holds class indices outside [0, 10)"),
        ("repeat", "repeats a class index within a row"),
    ],
)
def test_forged_topk_indices_are_refused_not_a_traceback(tmp_path, caplog, index, why):
    store = _store(tmp_path, top_k=3)
    store.get(0, Counter(), progress=False)
    name = "view_0.topk_indices.npy"
    indices = np.load(store.path / name)
    indices[5, 1] = indices[5, 0] if index == "repeat" else index
    _forge(store, name, indices)
    with pytest.raises(DataError) as info:
        _store(tmp_path, top_k=3).gather(0, torch.arange(8))
    assert str(info.value) == (
        f"teacher logits for view 0 are not trusted: {store.path / name} {why}; compute them "
        "again with TeacherLogitStore.get()."
    )
    _recomputed(tmp_path, caplog, f"{store.path / name} {why}", top_k=3)


def test_a_data_file_longer_than_its_header_is_refused(tmp_path, caplog):
    store = _store(tmp_path)
    store.get(0, Counter(), progress=False)
    data = store.path / "view_0.npy"
    with open(data, "ab") as f:
        f.write(b"\0" * 64)
    _forge(store, "view_0.npy", np.load(data))  # meta and manifest agree with the file ...
    with open(data, "ab") as f:
        f.write(b"\0" * 64)  # ... then it grows: the size is checked before any checksum
    _recomputed(tmp_path, caplog, "bytes, not the")


def test_tables_are_published_with_the_umask_mode(tmp_path):
    old = os.umask(0o022)
    try:
        store = _store(tmp_path, top_k=3)
        store.get(0, Counter(), progress=False)
    finally:
        os.umask(old)
    files = [p for p in store.path.iterdir() if not p.name.endswith(".lock")]
    assert len(files) == 8  # key, manifest, 3 tables and their metas
    assert {stat.S_IMODE(p.stat().st_mode) for p in files} == {0o644}


def test_unreadable_key_json_is_named_damaged_with_what_to_do(tmp_path):
    store = _store(tmp_path)
    (store.path / "key.json").write_text('{"teacher": ')
    with pytest.raises(KdlightError) as info:
        _store(tmp_path)
    assert str(info.value) == (
        f"teacher store key file {store.path / 'key.json'} is unreadable; delete the folder "
        f"{store.path} (a cache: the next run recomputes its teacher outputs)."
    )


def test_only_a_key_of_the_same_hash_is_a_hash_collision(tmp_path, monkeypatch):
    store = _store(tmp_path)
    monkeypatch.setattr("kdlight.teacher.store.key_hash", lambda key: store.key_hash)
    (store.path / "key.json").write_text(json.dumps({"teacher": "someone else"}))
    with pytest.raises(KdlightError, match=r"of the same hash \(a hash collision\)"):
        _store(tmp_path)


def _with_timeout(fn, seconds=20):
    """Run ``fn`` in a thread; fail (instead of hanging the suite) if it blocks."""
    out: dict = {}
    thread = threading.Thread(target=lambda: out.update(value=fn()), daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), "blocked on a planted file"
    return out.get("value")


@pytest.mark.parametrize(
    "planted", ["view_0.npy", "view_0.json", "view_0-checksums.json", ".view_0.npy.x.tmp"]
)
def test_a_planted_fifo_never_blocks_and_is_replaced(tmp_path, planted):
    store = _store(tmp_path)
    store.get(0, Counter(), progress=False)
    path = store.path / planted
    path.unlink(missing_ok=True)
    os.mkfifo(path)
    later = _store(tmp_path)
    out = _with_timeout(lambda: later.get(0, Counter(), progress=False))
    assert torch.equal(out, _logits(torch.arange(N))) and later.has(0)


def test_a_planted_symlink_is_not_followed_and_its_target_is_untouched(tmp_path, caplog):
    elsewhere = _store(tmp_path / "other")
    elsewhere.get(0, Counter(), progress=False)
    target = elsewhere.path / "view_0.npy"
    before = target.read_bytes()
    store = _store(tmp_path / "mine")
    store.get(0, Counter(), progress=False)
    (store.path / "view_0.npy").unlink()
    (store.path / "view_0.npy").symlink_to(target)
    _recomputed(tmp_path / "mine", caplog, "cannot be opened")
    assert not (store.path / "view_0.npy").is_symlink() and target.read_bytes() == before


def test_a_store_folder_one_cannot_write_is_one_sentence(tmp_path, monkeypatch):
    store = _store(tmp_path)
    monkeypatch.setattr("kdlight.teacher.store.os.access", lambda path, mode: False)
    with pytest.raises(DataError) as info:
        store.get(0, Counter(), progress=False)
    assert str(info.value) == (
        f"teacher store folder {store.path} is not writable and lacks view 0's 'logits'; set "
        "paths.store_dir (or KDLIGHT_STORE) to a folder you can write, or ask the store's "
        "owner to fill it."
    )


def test_a_complete_view_is_served_from_a_folder_one_cannot_write(tmp_path, monkeypatch):
    store = _store(tmp_path)
    store.get(0, Counter(), progress=False)
    monkeypatch.setattr("kdlight.teacher.store.os.access", lambda path, mode: False)
    compute = Counter()
    assert torch.equal(_store(tmp_path).get(0, compute, progress=False), _logits(torch.arange(N)))
    assert compute.calls == 0


def test_an_oversized_meta_is_not_read(tmp_path, caplog):
    store = _store(tmp_path)
    store.get(0, Counter(), progress=False)
    meta_file = store.path / "view_0.json"
    meta = json.loads(meta_file.read_text())
    meta_file.write_text(json.dumps({**meta, "pad": "x" * (17 << 20)}))
    _recomputed(tmp_path, caplog, "view_0.json is missing or unreadable")
