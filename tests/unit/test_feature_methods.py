"""Feature and relation methods (AT, PKT, RKD, SP, CC, NST, VID, CRD, ReviewKD).

Every expected loss is derived here from the paper's equations, written out with loops and
plain float64 tensor ops (or by hand), never with the methods' own helpers. Heads (CC's
embeddings, VID's regressors, CRD's heads) enter only through their weights.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

import kdlight
from kdlight.engine import DistillationModule
from kdlight.errors import ConfigError
from kdlight.methods.at import AT
from kdlight.methods.base import Context
from kdlight.methods.cc import CC
from kdlight.methods.crd import CRD
from kdlight.methods.features import auto_layers
from kdlight.methods.nst import NST
from kdlight.methods.pkt import PKT
from kdlight.methods.reviewkd import ReviewKD
from kdlight.methods.rkd import RKD
from kdlight.methods.sp import SP
from kdlight.methods.taps import tapped_forward
from kdlight.methods.vid import VID
from kdlight.models import (
    CNN5,
    MLP,
    ResNet,
    ResNet18,
    ResNet50Cifar,
    mobile_half,
    resnet8x4,
    resnet32x4,
    shufflev1,
    shufflev2,
    vgg8,
    vgg13,
    wrn_16_2,
    wrn_40_2,
)

pytestmark = pytest.mark.filterwarnings("ignore:.*self.trainer. reference is not registered")
DISTILL_CONF = Path(kdlight.__file__).parent / "conf" / "distill"
ADAM = functools.partial(torch.optim.Adam, lr=1e-2)
ONLY_TERM = {"gamma": 0.0, "student_layers": ["s"], "teacher_layers": ["t"]}


def ctx_of(s, t, labels=None, idx=None, epoch=0, names=("s", "t")):
    """A Context carrying lists of features under the names s0.., t0.. (or one s / t)."""
    if isinstance(s, torch.Tensor):
        sf, tf = {names[0]: s}, {names[1]: t}
    else:
        sf = {f"s{i}": x for i, x in enumerate(s)}
        tf = {f"t{i}": x for i, x in enumerate(t)}
    n = (s if isinstance(s, torch.Tensor) else s[0]).shape[0]
    return Context(
        student_logits=None,
        teacher_logits=None,
        labels=labels,
        idx=torch.arange(n) if idx is None else idx,
        epoch=epoch,
        student_feats=sf,
        teacher_feats=tf,
    )


def term(method, ctx):
    out = method(ctx)
    assert out["loss"].item() == pytest.approx(method.beta * out[method.term].item(), rel=1e-6)
    return out[method.term].item()


def pool2(x):
    """2x2 average pooling written out: mean of each 2x2 block."""
    n, c, h, w = x.shape
    return x.reshape(n, c, h // 2, 2, w // 2, 2).mean(dim=(3, 5))


def huber(a, b):
    d = abs(a - b)
    return 0.5 * d * d if d < 1 else d - 0.5


# ---- AT -------------------------------------------------------------------------------------
def test_at_by_hand():
    # one sample, one channel, 1 x 2 maps: q_s = [1, 0], q_t = [0, 1] -> mean((1, -1)^2) = 1
    s = torch.tensor([[[[3.0, 0.0]]]])
    t = torch.tensor([[[[0.0, -2.0]]]])
    assert term(AT(**ONLY_TERM), ctx_of(s, t)) == pytest.approx(1.0)


def test_at_against_the_paper_with_pooling_and_two_layers():
    torch.manual_seed(0)
    s = [torch.randn(3, 4, 4, 4), torch.randn(3, 5, 2, 2)]
    t = [torch.randn(3, 6, 8, 8), torch.randn(3, 2, 2, 2)]  # the first teacher map is larger
    method = AT(gamma=0.0, student_layers=["s0", "s1"], teacher_layers=["t0", "t1"])
    expected = 0.0
    for fs, ft in zip(s, t, strict=True):
        fs, ft = fs.double(), ft.double()
        if ft.shape[-1] > fs.shape[-1]:
            ft = pool2(ft)
        per_layer = 0.0
        for n in range(fs.shape[0]):
            qs = sum(fs[n, c] ** 2 for c in range(fs.shape[1])).flatten()
            qt = sum(ft[n, c] ** 2 for c in range(ft.shape[1])).flatten()
            per_layer += ((qs / qs.norm() - qt / qt.norm()) ** 2).sum().item()
        expected += per_layer / (fs.shape[0] * fs.shape[2] * fs.shape[3])
    assert term(method, ctx_of(s, t)) == pytest.approx(expected, rel=1e-5)


# ---- PKT ------------------------------------------------------------------------------------
def test_pkt_against_the_paper():
    torch.manual_seed(1)
    s, t = torch.randn(5, 7), torch.randn(5, 3)
    n, eps = 5, 1e-7

    def probs(x):
        x = x.double()
        k = [
            [(1 + torch.dot(x[i], x[j]) / (x[i].norm() * x[j].norm())) / 2 for j in range(n)]
            for i in range(n)
        ]
        return [[k[i][j] / sum(k[i]) for j in range(n)] for i in range(n)]

    p, q = probs(t), probs(s)
    expected = sum(
        p[i][j] * math.log((p[i][j] + eps) / (q[i][j] + eps)) for i in range(n) for j in range(n)
    ) / (n * n)
    assert term(PKT(**ONLY_TERM), ctx_of(s, t)) == pytest.approx(float(expected), rel=1e-4)


def test_pkt_is_zero_for_identical_relations():
    torch.manual_seed(2)
    t = torch.randn(6, 4)
    assert term(PKT(**ONLY_TERM), ctx_of(3.0 * t, t)) == pytest.approx(0.0, abs=1e-6)


# ---- RKD ------------------------------------------------------------------------------------
def test_rkd_against_the_paper():
    torch.manual_seed(3)
    n = 5
    s, t = torch.randn(n, 6), torch.randn(n, 4)

    def dist(x):
        x = x.double()
        d = [[(x[i] - x[j]).norm().item() for j in range(n)] for i in range(n)]
        mu = sum(d[i][j] for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
        return [[d[i][j] / mu for j in range(n)] for i in range(n)]

    def angle(x):
        x = x.double()
        out = {}
        for j in range(n):
            for i in range(n):
                for k in range(n):
                    if i == j or k == j:
                        out[j, i, k] = 0.0  # a zero vector has no direction
                        continue
                    a, b = x[i] - x[j], x[k] - x[j]
                    out[j, i, k] = (torch.dot(a, b) / (a.norm() * b.norm())).item()
        return out

    ds, dt = dist(s), dist(t)
    loss_d = sum(huber(ds[i][j], dt[i][j]) for i in range(n) for j in range(n)) / n**2
    as_, at_ = angle(s), angle(t)
    loss_a = sum(huber(as_[key], at_[key]) for key in as_) / n**3
    method = RKD(**ONLY_TERM)
    out = method(ctx_of(s, t))
    assert out["loss_rkd_distance"].item() == pytest.approx(loss_d, rel=1e-4)
    assert out["loss_rkd_angle"].item() == pytest.approx(loss_a, rel=1e-4)
    assert out["loss_rkd"].item() == pytest.approx(25 * loss_d + 50 * loss_a, rel=1e-4)


def test_rkd_is_invariant_to_scale_and_translation_of_the_student():
    torch.manual_seed(4)
    t = torch.randn(6, 5)
    assert term(RKD(**ONLY_TERM), ctx_of(4.0 * t + 1.5, t)) == pytest.approx(0.0, abs=1e-5)


# ---- SP -------------------------------------------------------------------------------------
def test_sp_against_the_paper():
    torch.manual_seed(5)
    n = 4
    s, t = torch.randn(n, 3, 2, 2), torch.randn(n, 8, 4, 4)

    def g(x):
        a = x.double().reshape(n, -1)
        rows = [[torch.dot(a[i], a[j]).item() for j in range(n)] for i in range(n)]
        return [[v / math.sqrt(sum(u * u for u in row)) for v in row] for row in rows]

    gs, gt = g(s), g(t)
    expected = sum((gt[i][j] - gs[i][j]) ** 2 for i in range(n) for j in range(n)) / n**2
    assert term(SP(**ONLY_TERM), ctx_of(s, t)) == pytest.approx(expected, rel=1e-5)


# ---- CC -------------------------------------------------------------------------------------
def test_cc_against_the_authors_formula_with_its_embeddings():
    torch.manual_seed(6)
    n = 5
    s, t = torch.randn(n, 6), torch.randn(n, 9)
    method = CC(embed_dim=4, **ONLY_TERM)
    method.build({"s": s}, {"t": t}, 10)
    ws, bs = method.embed_s[0].weight.double(), method.embed_s[0].bias.double()
    wt, bt = method.embed_t[0].weight.double(), method.embed_t[0].bias.double()
    delta = [
        [
            abs((ws[d] @ s[i].double() + bs[d]) - (wt[d] @ t[i].double() + bt[d])).item()
            for d in range(4)
        ]
        for i in range(n)
    ]
    expected = sum(sum(delta[i][d] * delta[i + 1][d] for d in range(4)) for i in range(n - 1)) / (
        n - 1
    )
    assert term(method, ctx_of(s, t)) == pytest.approx(expected, rel=1e-5)


# ---- NST ------------------------------------------------------------------------------------
def test_nst_against_the_paper():
    torch.manual_seed(7)
    n = 2
    s, t = torch.randn(n, 3, 2, 2), torch.randn(n, 2, 4, 4)  # teacher pooled to 2 x 2

    def channels(x):
        x = x.double()
        return [[x[i, c].flatten() / x[i, c].norm() for c in range(x.shape[1])] for i in range(n)]

    cs, ct = channels(s), channels(pool2(t))
    k = lambda a, b: torch.dot(a, b).item() ** 2  # noqa: E731
    mmd = 0.0
    for i in range(n):
        tt = sum(k(a, b) for a in ct[i] for b in ct[i]) / len(ct[i]) ** 2
        ss = sum(k(a, b) for a in cs[i] for b in cs[i]) / len(cs[i]) ** 2
        st = sum(k(a, b) for a in cs[i] for b in ct[i]) / (len(cs[i]) * len(ct[i]))
        mmd += tt + ss - 2 * st
    assert term(NST(**ONLY_TERM), ctx_of(s, t)) == pytest.approx(mmd / n, rel=1e-5)


def test_nst_is_zero_for_the_same_channels():
    torch.manual_seed(8)
    t = torch.randn(2, 3, 4, 4).abs()
    assert term(NST(**ONLY_TERM), ctx_of(2.0 * t, t)) == pytest.approx(0.0, abs=1e-6)


# ---- VID ------------------------------------------------------------------------------------
def test_vid_against_the_paper_with_its_regressor():
    torch.manual_seed(9)
    s, t = torch.randn(2, 3, 2, 2), torch.randn(2, 4, 2, 2)
    method = VID(**ONLY_TERM)
    method.build({"s": s}, {"t": t}, 10)
    head = method.heads[0]
    w1, w2, w3 = (head.mean[i].weight.double()[:, :, 0, 0] for i in (0, 2, 4))
    var = torch.log1p(torch.exp(head.log_scale.double())) + 1e-5
    assert var.tolist() == pytest.approx([5.0] * 4)  # sigma^2 starts at init_var
    total, count = 0.0, 0
    for n in range(2):
        for h in range(2):
            for w in range(2):
                x = s[n, :, h, w].double()
                mu = w3 @ torch.relu(w2 @ torch.relu(w1 @ x))
                for c in range(4):
                    total += 0.5 * ((t[n, c, h, w] - mu[c]) ** 2 / var[c] + torch.log(var[c]))
                    count += 1
    assert term(method, ctx_of(s, t)) == pytest.approx((total / count).item(), rel=1e-5)


# ---- ReviewKD -------------------------------------------------------------------------------
def test_reviewkd_hierarchical_context_loss_by_hand():
    from kdlight.methods.reviewkd import hcl_loss

    torch.manual_seed(10)
    ys, ts = torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8)
    mse = lambda a, b: ((a.double() - b.double()) ** 2).mean().item()  # noqa: E731
    p4, p2 = pool2(ys), pool2(ts)
    expected = (
        mse(ys, ts)
        + mse(p4, p2) / 2
        + mse(pool2(pool2(ys)), pool2(pool2(ts))) / 4
        + mse(ys.mean(dim=(2, 3)), ts.mean(dim=(2, 3))) / 8
    ) / (1 + 1 / 2 + 1 / 4 + 1 / 8)
    assert hcl_loss([ys], [ts]).item() == pytest.approx(expected, rel=1e-5)
    one = (torch.randn(2, 5, 1, 1), torch.randn(2, 5, 1, 1))  # a 1 x 1 level: no pooled scales
    assert hcl_loss([one[0]], [one[1]]).item() == pytest.approx(mse(*one), rel=1e-5)


def test_reviewkd_passes_on_the_resized_fusion_when_a_student_level_is_larger():
    """mdistiller's ABF resizes the fused map to the teacher's size, then returns it as the
    residual (issue 31.1); the composition is written out here from its ABF.forward."""
    import torch.nn.functional as F

    torch.manual_seed(3)
    method = ReviewKD(
        **ONLY_TERM | {"student_layers": ["s0", "s1"], "teacher_layers": ["t0", "t1"]}
    )
    s = [torch.randn(2, 4, 8, 8), torch.randn(2, 6, 4, 4)]  # each student level 2x the teacher's
    t = [torch.randn(2, 5, 4, 4), torch.randn(2, 7, 2, 2)]
    method.build_heads(s, t)
    method.eval()  # BatchNorm on running statistics: the same layers give the same numbers twice
    deep, shallow = method.abfs[1], method.abfs[0]
    x1 = F.interpolate(deep.conv1(s[1]), (2, 2), mode="nearest")  # resized before both uses
    y1 = deep.conv2(x1)
    x0 = shallow.conv1(s[0])
    up = F.interpolate(x1, (8, 8), mode="nearest")  # the RESIZED residual, 2x2 -> 8x8
    z = shallow.att_conv(torch.cat([x0, up], 1))
    x0 = x0 * z[:, 0:1] + up * z[:, 1:2]
    y0 = shallow.conv2(F.interpolate(x0, (4, 4), mode="nearest"))
    with torch.no_grad():
        outs = method.review(s)
        assert torch.allclose(outs[1], y1, atol=1e-6)
        assert torch.allclose(outs[0], y0, atol=1e-6)
        # the unresized residual (the old behaviour) gives another map: the case is sensitive
        wrong = F.interpolate(deep.conv1(s[1]), (8, 8), mode="nearest")
        z = shallow.att_conv(torch.cat([shallow.conv1(s[0]), wrong], 1))
        wrong = shallow.conv1(s[0]) * z[:, 0:1] + wrong * z[:, 1:2]
        wrong = shallow.conv2(F.interpolate(wrong, (4, 4), mode="nearest"))
        assert not torch.allclose(outs[0], wrong, atol=1e-3)


def _engine(method, student=None, teacher=None, example=(2, 3, 32, 32)):
    torch.manual_seed(0)
    student = student or CNN5(dropout=0.0)
    teacher = teacher or ResNet(8)
    module = DistillationModule(student, teacher, method, 10, ADAM)
    module.build_method(torch.zeros(*example))
    module.train()
    return module


def _batch(n=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {
        "x": torch.randn(n, 3, 32, 32, generator=g),
        "y": torch.randint(0, 10, (n,), generator=g),
        "idx": torch.arange(n),
        "split": "train",
    }


def _at_epoch(monkeypatch, epoch):
    monkeypatch.setattr(DistillationModule, "current_epoch", property(lambda self: epoch))


def test_reviewkd_levels_warmup_and_total(monkeypatch):
    module = _engine(ReviewKD())
    method = module.method
    # issue 31: CNN5's stages are its post-ReLU maps and its penultimate feature is taken
    # before dropout (they were bn1..3 and fc2:in)
    assert method.student_layers == ("relu1", "relu2", "relu3", "relu4")
    assert method.teacher_layers == ("layer1", "layer2", "layer3", "fc:in")
    b = _batch()
    outs = method.review([module.context(b).student_feats[n] for n in method.student_layers])
    assert [tuple(o.shape[1:]) for o in outs] == [
        (16, 32, 32),
        (32, 16, 16),
        (64, 8, 8),
        (64, 1, 1),
    ]
    assert method.abfs[-1].att_conv is None and all(
        a.att_conv is not None for a in method.abfs[:-1]
    )
    for epoch, factor in ((0, 1 / 20), (9, 10 / 20), (19, 1.0), (50, 1.0)):
        _at_epoch(monkeypatch, epoch)
        out = method(module.context(b))
        logits = module.student(b["x"])
        ce = -torch.log_softmax(logits.double(), 1)[torch.arange(8), b["y"]].mean().item()
        expected = ce + 5.0 * factor * out["loss_review"].item()
        assert out["loss"].item() == pytest.approx(expected, rel=1e-5)


# ---- CRD ------------------------------------------------------------------------------------
def _crd(nce_k=6, train_idx=None, labels=None, negatives="other_class", **kw):
    torch.manual_seed(0)
    train_idx = torch.arange(3, 15) if train_idx is None else train_idx
    labels = torch.arange(train_idx.numel()) % 3 if labels is None else labels
    method = CRD(feat_dim=4, nce_k=nce_k, negatives=negatives, **ONLY_TERM, **kw)
    method.bind_data(20, train_idx, labels if negatives == "other_class" else None)
    method.build({"s": torch.zeros(2, 5)}, {"t": torch.zeros(2, 7)}, 10)
    return method, train_idx, labels


def test_crd_nce_loss_against_the_paper():
    from kdlight.methods.crd import nce_loss

    x = torch.tensor([[0.5, 0.1, 0.2], [0.05, 0.3, 0.01]])
    n_data, k = 10, 2
    pn = k / n_data
    expected = 0.0
    for row in x.tolist():
        expected += math.log(row[0] / (row[0] + pn + 1e-7))
        expected += sum(math.log(pn / (v + pn + 1e-7)) for v in row[1:])
    assert nce_loss(x, n_data).item() == pytest.approx(-expected / 2, rel=1e-6)


@pytest.mark.parametrize("product_rows", [8, 0])  # the scores from a product, from gathered rows
@pytest.mark.parametrize("nce_k", [6, 20])  # 20: more rows drawn than the bank holds (12)
def test_crd_loss_and_memory_update_against_the_paper(monkeypatch, nce_k, product_rows):
    monkeypatch.setattr("kdlight.methods.crd.PRODUCT_ROWS", product_rows)
    method, train_idx, labels = _crd(nce_k=nce_k)
    n_data, tau, m = 12, 0.07, 0.5
    drawn = {}
    original = method.sample

    def spy(pos):
        drawn["rows"] = original(pos)
        return drawn["rows"]

    monkeypatch.setattr(method, "sample", spy)
    torch.manual_seed(1)
    s, t = torch.randn(4, 5), torch.randn(4, 7)
    idx = train_idx[[5, 0, 7, 2]]
    bank_s, bank_t = method.memory_s.clone().double(), method.memory_t.clone().double()
    pos = method.position[idx]
    loss = term(method, ctx_of(s, t, labels=labels[[5, 0, 7, 2]], idx=idx))
    rows = drawn["rows"]
    assert rows[:, 0].tolist() == pos.tolist()  # column 0: the sample itself
    row_label = {int(method.position[i]): int(labels[j]) for j, i in enumerate(train_idx)}
    for r, y in zip(rows, labels[[5, 0, 7, 2]], strict=True):
        assert all(row_label[int(j)] != int(y) for j in r[1:])  # negatives of other classes

    def embed(lin, x):
        v = x.double() @ lin.weight.double().t() + lin.bias.double()
        return v / v.norm(dim=1, keepdim=True)

    v_s, v_t = embed(method.embed_s, s), embed(method.embed_t, t)
    h_s = torch.exp(torch.stack([bank_t[r] @ v for r, v in zip(rows, v_s, strict=True)]) / tau)
    h_t = torch.exp(torch.stack([bank_s[r] @ v for r, v in zip(rows, v_t, strict=True)]) / tau)
    z_s, z_t = h_s.mean() * n_data, h_t.mean() * n_data
    assert method.z_s.item() == pytest.approx(z_s.item(), rel=1e-5)

    def nce(h):
        pn = nce_k / n_data
        total = 0.0
        for row in h.tolist():
            total += math.log(row[0] / (row[0] + pn + 1e-7))
            total += sum(math.log(pn / (v + pn + 1e-7)) for v in row[1:])
        return -total / h.shape[0]

    assert loss == pytest.approx(nce(h_s / z_s) + nce(h_t / z_t), rel=1e-4)
    for bank_before, bank_after, v in ((bank_s, method.memory_s, v_s), (bank_t, method.memory_t, v_t)):  # fmt: skip
        moved = m * bank_before[pos] + (1 - m) * v
        assert torch.allclose(
            bank_after[pos].double(), moved / moved.norm(dim=1, keepdim=True), atol=1e-6
        )
        others = torch.ones(n_data, dtype=torch.bool)
        others[pos] = False
        assert torch.equal(bank_after[others].double(), bank_before[others])


@pytest.mark.parametrize("draws", [2, 40])  # 8 x 2 < 25 rows in the bank: gathered; 40: product
def test_crd_bank_scores_are_the_dot_products_of_the_drawn_rows(draws):
    from kdlight.methods.crd import bank_scores

    gen = torch.Generator().manual_seed(0)
    bank, v = torch.randn(25, 6, generator=gen), torch.randn(4, 6, generator=gen)
    rows = torch.randint(25, (4, draws), generator=gen)
    expected = [[sum(bank[j, d].item() * v[b, d].item() for d in range(6)) for j in r] for b, r in enumerate(rows.tolist())]  # fmt: skip
    assert torch.allclose(bank_scores(bank, v, rows), torch.tensor(expected), atol=1e-5)


def test_crd_memory_rows_follow_the_sample_index_under_shuffling():
    train_idx = torch.tensor([17, 2, 9, 4, 11, 6, 13, 0])  # rows of the training arrays, any order
    labels = torch.tensor([0, 1, 0, 1, 0, 1, 0, 1])
    a, _, _ = _crd(train_idx=train_idx, labels=labels)
    b, _, _ = _crd(train_idx=train_idx, labels=labels)
    assert torch.equal(a.memory_s, b.memory_s)
    torch.manual_seed(3)
    feats_s, feats_t = torch.randn(20, 5), torch.randn(20, 7)  # per sample index
    batches_a = [torch.tensor([17, 2, 9, 4]), torch.tensor([11, 6, 13, 0])]
    batches_b = [torch.tensor([13, 9, 0, 2]), torch.tensor([6, 17, 4, 11])]  # shuffled otherwise
    for method, batches in ((a, batches_a), (b, batches_b)):
        method.z_s.fill_(1.0), method.z_t.fill_(1.0)
        for idx in batches:
            method(
                ctx_of(feats_s[idx], feats_t[idx], labels=torch.zeros(4, dtype=torch.long), idx=idx)
            )
    for i in train_idx:  # each sample's row moved once, towards its own embedding
        pa, pb = a.position[i], b.position[i]
        assert torch.equal(pa, pb)
        assert torch.allclose(a.memory_s[pa], b.memory_s[pb], atol=1e-6)
        assert torch.allclose(a.memory_t[pa], b.memory_t[pb], atol=1e-6)
    assert (a.position >= 0).sum() == 8 and a.position[1] == -1


def test_crd_any_negatives_exclude_only_the_sample_itself():
    method, train_idx, _ = _crd(negatives="any", nce_k=500)
    pos = method.position[train_idx]
    rows = method.sample(pos)
    for p, r in zip(pos.tolist(), rows.tolist(), strict=True):
        assert p not in r[1:] and set(r[1:]) == set(range(12)) - {p}  # 500 draws cover all 11


def test_crd_bank_and_heads_are_buffers_and_parameters():
    method, _, _ = _crd()
    buffers = dict(method.named_buffers())
    assert {"memory_s", "memory_t", "position", "z_s", "z_t"} <= buffers.keys()
    assert buffers["memory_s"].shape == (12, 4)
    params = {n for n, _ in method.named_parameters()}
    assert params == {"embed_s.weight", "embed_s.bias", "embed_t.weight", "embed_t.bias"}
    state = method.state_dict()
    assert "memory_s" in state and "position" in state


def test_crd_other_class_on_unlabeled_data_is_one_sentence():
    method = CRD(**ONLY_TERM)
    with pytest.raises(ConfigError, match=r"distill.negatives=any"):
        method.bind_data(10, torch.arange(10), None)


# ---- all methods through the engine: gradients, KD combination ------------------------------
HEADS = {"cc": ("embed_s", "embed_t"), "vid": ("heads",), "crd": ("embed_s", "embed_t"), "reviewkd": ("abfs",)}  # fmt: skip


def _method(name, **kw):
    cls = {"at": AT, "pkt": PKT, "rkd": RKD, "sp": SP, "cc": CC, "nst": NST, "vid": VID, "crd": CRD, "reviewkd": ReviewKD}[name]  # fmt: skip
    if name == "crd":
        kw.setdefault("nce_k", 16)
    return cls(**kw)


@pytest.mark.parametrize("name", ["at", "pkt", "rkd", "sp", "cc", "nst", "vid", "crd", "reviewkd"])
def test_gradients_reach_the_student_and_the_heads_never_the_teacher(name):
    method = _method(name)
    if name == "crd":
        method.bind_data(8, torch.arange(8), torch.arange(8) % 3)
    module = _engine(method)
    module.zero_grad(set_to_none=True)
    b = _batch()
    module.training_step(b, 0).backward()
    assert all(p.grad is None for p in module.teacher.parameters())
    assert module.student.conv1.weight.grad is not None
    assert module.student.conv1.weight.grad.abs().sum() > 0
    for head in HEADS.get(name, ()):
        params = list(getattr(module.method, head).parameters())
        assert params and all(p.grad is not None for p in params), head
    opt = module.configure_optimizers()
    in_opt = {id(p) for g in opt.param_groups for p in g["params"]}
    assert in_opt == {id(p) for p in module.student.parameters()} | {id(p) for p in module.method.parameters()}  # fmt: skip


def test_feature_term_only_moves_the_student_below_its_taps():
    module = _engine(SP(gamma=0.0))  # taps bn3 only, no CE: fc1, fcbn1, fc2 get no gradient
    module.zero_grad(set_to_none=True)
    module.training_step(_batch(), 0).backward()
    assert module.student.conv3.weight.grad is not None
    assert module.student.fc2.weight.grad is None and module.student.fc1.weight.grad is None


def test_kd_term_joins_as_repdistiller_does():
    module = _engine(AT(alpha=1.0, gamma=1.0))
    b = _batch()
    out = module.method(module.context(b))
    with torch.no_grad():
        zs, zt = module.student(b["x"]).double(), module.teacher(b["x"]).double()
    p_t, log_p_s = torch.softmax(zt / 4, 1), torch.log_softmax(zs / 4, 1)
    kd = 16 * (p_t * (p_t.log() - log_p_s)).sum(1).mean().item()
    ce = -torch.log_softmax(zs, 1)[torch.arange(8), b["y"]].mean().item()
    assert out["loss_kd"].item() == pytest.approx(kd, rel=1e-4)
    expected = ce + kd + 1000.0 * out["loss_at"].item()
    assert out["loss"].item() == pytest.approx(expected, rel=1e-5)


# ---- layers ---------------------------------------------------------------------------------
ZOO = [
    (ResNet(20), ("layer1", "layer2", "layer3"), "fc:in"),
    (resnet8x4(100), ("layer1", "layer2", "layer3"), "fc:in"),
    (ResNet18(), ("layer1", "layer2", "layer3", "layer4"), "linear:in"),
    (ResNet50Cifar(100), ("layer1", "layer2", "layer3", "layer4"), "linear:in"),
    (wrn_16_2(100), ("block1", "block2", "block3"), "fc:in"),
    # issue 31: VGG's and CNN5's stages are their post-ReLU maps (were block1..4 and bn1..3,
    # before the ReLU), and CNN5's penultimate feature is taken before dropout (was fc2:in)
    (vgg8(100), ("relu1", "relu2", "relu3", "relu4"), "classifier:in"),
    (mobile_half(100), ("blocks.1", "blocks.2", "blocks.4", "blocks.6"), "classifier.0:in"),
    (shufflev1(100), ("layer1", "layer2", "layer3"), "linear:in"),
    (shufflev2(100), ("layer1", "layer2", "layer3"), "linear:in"),
    (CNN5(), ("relu1", "relu2", "relu3"), "relu4"),
]
CLASSIFIER_OF = {"relu4": "fc2"}  # a declared penultimate tap -> the Linear that reads it


@pytest.mark.parametrize(("net", "stages", "penultimate"), ZOO, ids=lambda v: type(v).__name__ if not isinstance(v, (tuple, str)) else "")  # fmt: skip
def test_auto_layers_are_stage_maps_and_the_classifier_input(net, stages, penultimate):
    assert auto_layers(net, "stages") == stages
    assert auto_layers(net, "last_stage") == stages[-1:]
    assert auto_layers(net, "penultimate") == (penultimate,)
    net.eval()
    with torch.no_grad():
        logits, feats = tapped_forward(net, torch.randn(2, 3, 32, 32), [*stages, penultimate])
    assert all(feats[n].dim() == 4 for n in stages)
    linear = dict(net.named_modules())[CLASSIFIER_OF.get(penultimate, penultimate[:-3])]
    assert feats[penultimate].shape == (2, linear.in_features)
    assert torch.allclose(
        linear(feats[penultimate]), logits, atol=1e-5
    )  # what the classifier reads


def test_auto_layers_of_an_mlp_are_its_hidden_relus():
    assert auto_layers(MLP(784, (800, 800)), "stages") == ("layers.2", "layers.4")
    assert auto_layers(MLP(784, (1200, 1200), dropout=0.5), "stages") == ("layers.2", "layers.5")


@pytest.mark.parametrize(
    ("teacher", "student", "t_layers", "s_layers"),
    [
        (resnet32x4(100), resnet8x4(100), ("layer1", "layer2", "layer3"), ("layer1", "layer2", "layer3")),
        (wrn_40_2(100), wrn_16_2(100), ("block1", "block2", "block3"), ("block1", "block2", "block3")),
        # issue 31: post-ReLU maps (were VGG's block1..4 and CNN5's bn1..3)
        (vgg13(100), vgg8(100), ("relu1", "relu2", "relu3", "relu4"), ("relu1", "relu2", "relu3", "relu4")),
        (ResNet18(), CNN5(), ("layer1", "layer2", "layer3"), ("relu1", "relu2", "relu3")),
    ],
)  # fmt: skip
def test_auto_pairs_the_stages_both_networks_have(teacher, student, t_layers, s_layers):
    method = AT()
    method.resolve_layers(student, teacher)
    assert method.teacher_layers == t_layers and method.student_layers == s_layers


def test_input_tap_stops_before_the_module_runs():
    net = ResNet(8).eval()
    calls = []
    net.fc.register_forward_hook(lambda *a: calls.append(1))
    x = torch.randn(2, 3, 32, 32)
    logits, feats = tapped_forward(net, x, ["fc:in", "layer3"], stop=True)
    assert logits is None and not calls
    assert torch.allclose(feats["fc:in"], feats["layer3"].mean(dim=(2, 3)), atol=1e-6)


# ---- settings -------------------------------------------------------------------------------
def test_a_wrong_layer_name_lists_the_valid_ones():
    with pytest.raises(
        ConfigError, match=r"'layer9' is not a module of ResNet; valid names .*layer3"
    ):
        _engine(AT(student_layers=["bn1"], teacher_layers=["layer9"]))


def test_spatial_methods_refuse_flat_features_in_one_sentence():
    for cls in (AT, NST):
        with pytest.raises(ConfigError, match=r"needs \(N, C, H, W\) feature maps but the student layer 'layers.2'"):  # fmt: skip
            _engine(cls(), student=MLP(3072, (32, 32)), teacher=MLP(3072, (64, 64)))


def test_unknown_networks_and_uneven_lists_are_one_sentence():
    from torch import nn

    with pytest.raises(ConfigError, match="does not know the stages of the student Sequential"):
        AT().resolve_layers(nn.Sequential(nn.Conv2d(3, 4, 3)), ResNet(8))
    with pytest.raises(ConfigError, match="has 2 names but distill.teacher_layers has 1"):
        AT(student_layers=["a", "b"], teacher_layers=["c"])
    with pytest.raises(ConfigError, match=r"distill.beta=-1"):
        SP(beta=-1)


def test_unlabeled_runs_need_gamma_zero():
    assert AT().needs_labels and not AT(gamma=0.0).needs_labels
    assert CRD(gamma=0.0).needs_labels and not CRD(gamma=0.0, negatives="any").needs_labels


#: RepDistiller's scripts/run_cifar_distill.sh (-a alpha, -b beta; gamma 1) and mdistiller's configs
PAPER_DEFAULTS = {
    "at": {"beta": 1000.0, "p": 2.0},
    "pkt": {"beta": 30000.0},
    "rkd": {"beta": 1.0, "distance_weight": 25.0, "angle_weight": 50.0},
    "sp": {"beta": 3000.0},
    "cc": {"beta": 0.02, "embed_dim": 128},
    "nst": {"beta": 50.0},
    "vid": {"beta": 1.0, "init_var": 5.0},
    "crd": {"beta": 0.8, "nce_k": 16384, "nce_t": 0.07, "nce_m": 0.5, "feat_dim": 128},
    "reviewkd": {"beta": 5.0, "warmup": 20},
}


@pytest.mark.parametrize("name", sorted(PAPER_DEFAULTS))
def test_configs_carry_the_papers_default_weights(name):
    method = instantiate(OmegaConf.load(DISTILL_CONF / f"{name}.yaml"), _convert_="all")
    assert (method.gamma, method.alpha, method.temperature) == (1.0, 0.0, 4.0)
    for key, value in PAPER_DEFAULTS[name].items():
        assert getattr(method, key) == value, key
    assert method.student_spec == method.teacher_spec == "auto"
