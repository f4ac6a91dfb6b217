"""Teacher forms in the store: what each method declares, files keyed by layer and form, exact values."""

from __future__ import annotations

import json

import pytest
import torch

from kdlight.methods.at import AT, pooled_attention_map
from kdlight.methods.base import EMBEDDING, RAW, Context
from kdlight.teacher.store import TeacherLogitStore

N, C = 60, 10
KEY = {"teacher": "abc123", "data": "toy"}
LAYER, FORM, SHAPE = "fc:in", "embedding", (6,)
TABLE = f"{LAYER}/{FORM}"


def _logits(idx: torch.Tensor) -> torch.Tensor:
    return 3 * torch.cos(0.21 * idx.float()[:, None] + 0.7 * torch.arange(C))


def _embedding(idx: torch.Tensor) -> torch.Tensor:
    return torch.sin(0.13 * idx.float()[:, None] - 0.4 * torch.arange(SHAPE[0]))


class Teacher:
    """compute(): logits and one feature table; records the indices it saw."""

    def __init__(self):
        self.calls: list[torch.Tensor] = []

    def __call__(self, idx):
        self.calls.append(idx.clone())
        return {"logits": _logits(idx), TABLE: _embedding(idx)}


def _store(root, dtype="float32", **kw) -> TeacherLogitStore:
    return TeacherLogitStore(root, KEY, num_samples=N, num_classes=C, dtype=dtype, **kw)


def test_forms_are_stored_beside_the_logits_in_one_pass(tmp_path):
    store = _store(tmp_path)
    teacher = Teacher()
    view = store.get_view(2, teacher, {TABLE: SHAPE}, batch_size=25, progress=False)
    assert [len(c) for c in teacher.calls] == [25, 25, 10]  # one pass fills both tables
    pos = torch.tensor([0, 59, 7, 7])
    assert torch.equal(view.logits(pos), _logits(pos))
    assert torch.equal(view.rows(TABLE, pos), _embedding(pos))
    metas = {p.name: json.loads(p.read_text()) for p in store.path.glob("view_2.*json")}
    assert len(metas) == 2 and "view_2.json" in metas  # the logits keep their file name
    # the view's manifest holds the checksum of both tables' files
    manifest = json.loads((store.path / "view_2-checksums.json").read_text())["files"]
    assert manifest == {n.replace(".json", ".npy"): m["checksum"] for n, m in metas.items()}
    (form_file,) = (n for n in metas if n != "view_2.json")
    # the layer and form are in the file's name (':' made safe) and its meta
    assert form_file.startswith("view_2.fc_in_embedding-") and ":" not in form_file
    assert metas[form_file]["table"] == TABLE and metas[form_file]["shape"] == [N, *SHAPE]
    again = Teacher()
    _store(tmp_path).get_view(2, again, {TABLE: SHAPE}, progress=False)
    assert again.calls == []  # served from disk


def test_float16_forms_are_rounded_to_nearest_and_nothing_else(tmp_path):
    view = _store(tmp_path, dtype="float16").get_view(0, Teacher(), {TABLE: SHAPE}, progress=False)
    pos = torch.arange(N)
    assert torch.equal(view.rows(TABLE, pos), _embedding(pos).half())


def test_a_missing_form_is_added_without_rewriting_the_logits(tmp_path):
    store = _store(tmp_path)
    store.get(0, _logits, progress=False)  # a logit method filled the view first
    logits_file = store.path / "view_0.npy"
    before = logits_file.stat()
    teacher = Teacher()
    view = store.get_view(0, teacher, {TABLE: SHAPE}, progress=False)
    assert teacher.calls  # the form was computed ...
    after = logits_file.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)  # ... alone
    assert torch.equal(view.rows(TABLE, torch.arange(N)), _embedding(torch.arange(N)))


def test_a_corrupt_form_is_recomputed_and_never_served(tmp_path):
    store = _store(tmp_path)
    store.get_view(0, Teacher(), {TABLE: SHAPE}, progress=False)
    (form_file,) = (p for p in store.path.glob("view_0.*.npy"))
    raw = bytearray(form_file.read_bytes())
    raw[-3] ^= 0xFF
    form_file.write_bytes(bytes(raw))
    assert store.has(0)  # the logits are intact
    teacher = Teacher()
    view = store.get_view(0, teacher, {TABLE: SHAPE}, progress=False)
    assert teacher.calls
    assert torch.equal(view.rows(TABLE, torch.arange(N)), _embedding(torch.arange(N)))


def test_another_form_or_layer_is_another_file(tmp_path):
    store = _store(tmp_path)
    store.get_view(0, Teacher(), {TABLE: SHAPE}, progress=False)
    other = "fc:in/embedding_v2"
    teacher = lambda idx: {"logits": _logits(idx), other: 2 * _embedding(idx)}  # noqa: E731
    view = store.get_view(0, teacher, {other: SHAPE}, progress=False)
    assert len(list(store.path.glob("view_0.*.npy"))) == 2
    assert torch.equal(view.rows(other, torch.arange(3)), 2 * _embedding(torch.arange(3)))


def test_a_form_of_the_wrong_shape_is_one_clear_error(tmp_path):
    from kdlight.errors import KdlightError

    store = _store(tmp_path)
    with pytest.raises(KdlightError, match=r"returned \(25, 6\) for fc:in/embedding, expected"):
        store.get_view(0, Teacher(), {TABLE: (7,)}, batch_size=25, progress=False)
    assert not store.has(0) and not list(store.path.glob("*.npy"))


# ---- what the methods declare ---------------------------------------------------------------
def test_penultimate_methods_store_the_embedding_and_map_methods_the_raw_map():
    from kdlight.methods.cc import CC
    from kdlight.methods.crd import CRD
    from kdlight.methods.fitnets import FitNets
    from kdlight.methods.nst import NST
    from kdlight.methods.pkt import PKT
    from kdlight.methods.reviewkd import ReviewKD
    from kdlight.methods.rkd import RKD
    from kdlight.methods.sp import SP
    from kdlight.methods.vid import VID

    layers = {"student_layers": ["s"], "teacher_layers": ["t"]}
    for cls in (PKT, RKD, CC, CRD):
        assert cls(**layers).teacher_forms() == {"t": EMBEDDING}
    for cls in (NST, SP, VID, ReviewKD):
        assert cls(**layers).teacher_forms() == {"t": RAW}
    assert FitNets(hint_layer="layer2").teacher_forms() == {"layer2": RAW}
    x = torch.randn(3, 4, 2, 2)
    assert torch.equal(EMBEDDING.fn(x), x.reshape(3, 16)) and RAW.fn(x) is x


def test_at_form_is_the_normalised_attention_map_at_the_compared_size():
    torch.manual_seed(0)
    method = AT(gamma=0.0, student_layers=["s0", "s1"], teacher_layers=["t0", "t1"])
    s = [torch.randn(2, 3, 2, 2), torch.randn(2, 3, 4, 4)]
    t = [torch.randn(2, 5, 4, 4), torch.randn(2, 5, 4, 4)]  # t0 is larger than s0
    method.build({"s0": s[0], "s1": s[1]}, {"t0": t[0], "t1": t[1]}, 10)
    forms = method.teacher_forms()
    assert {k: f.name for k, f in forms.items()} == {"t0": "attention_p2_2x2", "t1": "attention_p2_4x4"}  # fmt: skip
    # t0 by hand: 2x2 average pooling, then mean over channels of squares, then L2-normalised
    a = t[0].double()
    pooled = (a[:, :, 0::2, 0::2] + a[:, :, 0::2, 1::2] + a[:, :, 1::2, 0::2] + a[:, :, 1::2, 1::2]) / 4  # fmt: skip
    q = (pooled**2).sum(dim=1).reshape(2, 4) / 5
    q = q / q.norm(dim=1, keepdim=True)
    assert torch.allclose(forms["t0"].fn(t[0]).double(), q, atol=1e-6)
    # the loss from the forms (what the store serves) equals the loss from the raw maps
    raw_ctx = Context(None, None, None, torch.arange(2), student_feats={"s0": s[0], "s1": s[1]}, teacher_feats={"t0": t[0], "t1": t[1]})  # fmt: skip
    form_ctx = Context(None, None, None, torch.arange(2), student_feats={"s0": s[0], "s1": s[1]}, teacher_feats={k: forms[k].fn(v) for k, v in (("t0", t[0]), ("t1", t[1]))})  # fmt: skip
    assert method(form_ctx)["loss_at"].item() == pytest.approx(
        method(raw_ctx)["loss_at"].item(), rel=1e-6
    )


def test_at_pairs_one_teacher_layer_at_two_sizes_runs_it_online():
    method = AT(gamma=0.0, student_layers=["s0", "s1"], teacher_layers=["t", "t"])
    method.build(
        {"s0": torch.randn(2, 3, 2, 2), "s1": torch.randn(2, 3, 4, 4)},
        {"t": torch.randn(2, 5, 4, 4)},
        10,
    )
    assert method.teacher_forms() == {}
    assert pooled_attention_map(torch.ones(1, 2, 2, 2), 2.0, (2, 2)).tolist() == [[0.5] * 4]
