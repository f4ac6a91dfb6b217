"""AB, FT, FSP, KDSVD and OFD: loss and gradients against their authors' code, and config errors.

The expected numbers in ``tests/unit/data/reference_values_features3.json`` were computed once,
offline, by ``benchmarks/reference/make_reference_values_features3.py``, which runs the
references' own code (read with ``git show <commit>:<path>`` from local clones) in float64 on
the inputs this module builds (:data:`CASES`, imported by the script), with the same parameter
values for every learnable part (connectors, paraphraser, translator). Nothing here needs the
repositories.

- HobbitLong/RepDistiller @ b84f547c5db6a35318d4671d7d5c4de74c822403: ``distiller_zoo/AB.py``
  (``ABLoss``) with ``models/util.py`` ``Connector`` / ``ConvReg``; ``distiller_zoo/FT.py``
  (``FactorTransfer``) with ``models/util.py`` ``Paraphraser`` / ``Translator`` and the init
  stage's MSE of ``helper/pretrain.py``; ``distiller_zoo/FSP.py``; ``distiller_zoo/KDSVD.py``.
- megvii-research/mdistiller @ a08d46f10d6102bd6e3f258ca5ac880b020ea259:
  ``mdistiller/distillers/OFD.py`` (margins from BatchNorm parameters, ``ConnectorConvBN``,
  ``ofd_loss``).

Tolerance: as ``tests/unit/test_reference_losses.py`` (kdlight computes in float32 against
float64 expectations): ``RTOL = 2e-5`` relative (a few float32 ulps times the square root of
the few thousand summed terms), ``ATOL = 1e-6`` absolute for terms near 0, gradients entrywise
within ``RTOL`` times their norm; the script also ran the references in float32 and where their
own rounding (``terms_f32_rel_err`` / ``f32_err``) is larger, the bound is ten times it (SVD
gradients). A formula difference is orders of magnitude larger.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from kdlight.errors import ConfigError
from tests.unit.test_reference_losses import (
    feature_case,
    fill_,  # noqa: F401  (the reference script fills its modules with it)
    fingerprint,
    gen,
    param_values,
    run_feature_method,
)

RTOL = 2e-5
ATOL = 1e-6
DATA = Path(__file__).parent / "data" / "reference_values_features3.json"
pytestmark = pytest.mark.filterwarnings("ignore:.*self.trainer. reference is not registered")

AB_S = [(4, 4), (5, 4), (6, 2)]  # pair 0: same shape (identity connector); 1, 2: conv + BN
AB_T = [(4, 4), (7, 4), (8, 2)]
FSP_S = [(3, 8), (4, 8), (5, 4), (6, 2)]  # equal channels, sizes pooled between layers
FSP_T = FSP_S
SVD_S = [(5, 4), (6, 4), (8, 2)]  # H*W >= C where the student needs k + 3 vectors
SVD_T = SVD_S
OFD_S = [(3, 8), (5, 4), (6, 2)]  # pair 0: student 8x8 vs teacher 4x4 (pooled up), 2: 2x2 vs 4x4
OFD_T = [(4, 4), (6, 4), (8, 4)]


def ofd_case(seed: int) -> dict:
    case = feature_case(seed, OFD_S, OFD_T)
    # the teacher's BatchNorm before each ReLU: weight, bias; one channel with bias / |weight| > 3.1
    # takes the -3 |weight| branch of the margin
    case["bn"] = [(1.0 + 0.5 * gen(seed + 50 + i, c), 0.8 * gen(seed + 60 + i, c)) for i, (c, _) in enumerate(OFD_T)]  # fmt: skip
    case["bn"][1][1][0] = 5.0 * case["bn"][1][0][0].abs()
    return case


#: case name -> (method, kdlight kwargs, epoch, input builder); parameters filled with seed
CASES = {
    "ab_init": ("ab", {"init_epochs": 1, "margin": 1.0}, 0, lambda: feature_case(100, AB_S, AB_T)),
    "ab_second_stage": (
        "ab",
        {"init_epochs": 1, "beta": 2.0},
        1,
        lambda: feature_case(103, AB_S, AB_T),
    ),  # fmt: skip
    "ft_init": ("ft", {"init_epochs": 1}, 0, lambda: feature_case(106, [(6, 4)], [(8, 4)])),
    "ft": (
        "ft",
        {"init_epochs": 1, "beta": 200.0},
        1,
        lambda: feature_case(109, [(6, 4)], [(8, 4)]),
    ),  # fmt: skip
    "ft_student_larger": (
        "ft",
        {"init_epochs": 0, "beta": 200.0},
        0,
        lambda: feature_case(112, [(6, 8)], [(8, 4)]),
    ),  # fmt: skip
    "fsp_init": ("fsp", {"init_epochs": 1}, 0, lambda: feature_case(115, FSP_S, FSP_T)),
    "kdsvd": ("kdsvd", {"k": 1, "beta": 1.0}, 0, lambda: feature_case(118, SVD_S, SVD_T)),
    "kdsvd_k2": ("kdsvd", {"k": 2, "beta": 1.0}, 0, lambda: feature_case(121, SVD_S, SVD_T)),
    "ofd": ("ofd", {"beta": 1e-3}, 0, lambda: ofd_case(124)),
}
PARAM_SEED = {name: 300 + i for i, name in enumerate(CASES)}


def make(name: str):
    method, kwargs, epoch, builder = CASES[name]
    case = builder()
    n_s, n_t = len(case["student_feats"]), len(case["teacher_feats"])
    kwargs = {
        **kwargs,
        "student_layers": [f"s{i}" for i in range(n_s)],
        "teacher_layers": [f"t{i}" for i in range(n_t)],
    }
    if method == "ab":
        from kdlight.methods.ab import AB as cls
    elif method == "ft":
        from kdlight.methods.ft import FT as cls
    elif method == "fsp":
        from kdlight.methods.fsp import FSP as cls
    elif method == "kdsvd":
        from kdlight.methods.kdsvd import KDSVD as cls
    else:
        from kdlight.methods.ofd import OFD as cls
    m = cls(**kwargs)
    if method == "ofd":
        from kdlight.methods.ofd import bn_margin

        for i, (w, b) in enumerate(case["bn"]):
            bn = nn.BatchNorm2d(w.numel())
            with torch.no_grad():
                bn.weight.copy_(w.float())
                bn.bias.copy_(b.float())
            m.register_buffer(f"margin{i}", bn_margin(bn))
    return m, epoch, case


@pytest.fixture(scope="module")
def expected() -> dict:
    return json.loads(DATA.read_text())


def check(name: str, expected: dict, out: dict, grads: dict) -> float:
    """Assert kdlight's terms and gradients equal the reference's; returns the largest relative gap."""
    exp = expected["cases"][name]
    assert fingerprint(CASES[name][3]()) == pytest.approx(exp["fingerprint"], rel=1e-12), (
        "the inputs differ from those the reference values were computed on; rerun "
        "benchmarks/reference/make_reference_values_features3.py"
    )
    worst = 0.0
    for term, value in exp["terms"].items():
        got = float(torch.as_tensor(out[term]).detach())
        rtol = max(RTOL, 10 * exp["terms_f32_rel_err"][term])
        assert got == pytest.approx(value, rel=rtol, abs=ATOL), f"{name}: {term} {got} != {value}"
        worst = max(worst, abs(got - value) / max(abs(value), 1e-12))
    for key, g in exp["grads"].items():
        got = grads.get(key)
        assert got is not None, f"{name}: no gradient for {key}"
        got = got.detach().double().flatten()
        rtol = max(RTOL, 10 * g["f32_err"])
        assert float(got.norm()) == pytest.approx(g["norm"], rel=rtol, abs=ATOL), f"{name}: |{key}|"
        for i, v in g["entries"]:
            assert float(got[i]) == pytest.approx(v, abs=rtol * g["norm"] + 1e-12), (
                f"{name}: {key}[{i}] {float(got[i])} != {v}"
            )
        worst = max(worst, abs(float(got.norm()) - g["norm"]) / max(g["norm"], 1e-12))
    return worst


def test_reference_file_names_every_case_and_its_source(expected):
    assert set(expected["cases"]) == set(CASES)
    for exp in expected["cases"].values():
        repo, commit = exp["source"]["repository"], exp["source"]["commit"]
        assert expected["repositories"][repo] == commit and len(commit) == 40


@pytest.mark.parametrize("name", list(CASES))
def test_loss_and_gradients_match_the_authors_code(name, expected):
    method, epoch, case = make(name)
    out, grads = run_feature_method(method, case, epoch, PARAM_SEED[name])
    check(name, expected, out, grads)


def test_kdsvd_served_teacher_form_gives_the_same_loss():
    """The store's form (v_t per layer) in place of the raw teacher maps: the same loss."""
    method, epoch, case = make("kdsvd")
    raw, _ = run_feature_method(method, case, epoch)
    forms = method.teacher_forms()
    s = [x.float() for x in case["student_feats"]]
    t = [forms[f"t{i}"].fn(x.float()) for i, x in enumerate(case["teacher_feats"])]
    assert t[0].shape == (4, 5, 1)  # (N, C, k): the store keeps C * k numbers per sample
    served = method.feature_loss(s, t, None)
    assert float(served) == pytest.approx(float(raw["loss_svd"]), rel=1e-5)


def test_ofd_margin_is_the_truncated_gaussian_mean():
    from kdlight.methods.ofd import bn_margin

    bn = nn.BatchNorm2d(3)
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([1.0, -2.0, 0.5]))
        bn.bias.copy_(torch.tensor([0.0, 1.0, 2.0]))  # the last: Phi(-4) < 0.001
    m = bn_margin(bn).flatten()
    assert float(m[0]) == pytest.approx(-math.sqrt(2 / math.pi), rel=1e-6)
    assert float(m[2]) == pytest.approx(-1.5)
    assert float(m[1]) < 0


def test_staged_methods_plan_their_init_stage():
    from kdlight.methods.ab import AB
    from kdlight.methods.fsp import FSP
    from kdlight.methods.ft import FT

    layers = {"student_layers": ["a", "b"], "teacher_layers": ["c", "d"]}
    for cls in (AB, FSP):
        m = cls(init_epochs=3, **layers)
        assert m.plan(2).student_layers == ("a", "b") and not m.plan(2).teacher_logits
        assert m.plan(3).student_layers == () and m.plan(3).teacher_layers == ()
    ft = FT(init_epochs=3, student_layers=["a"], teacher_layers=["c"])
    assert ft.plan(0).student_layers == () and ft.plan(0).teacher_layers == ("c",)
    assert ft.plan(3).student_layers == ("a",)


@pytest.mark.parametrize(
    ("target", "kwargs", "message"),
    [
        ("ab.AB", {"margin": 0.0}, "distill.margin=0.0 is invalid; it must be > 0."),
        ("ab.AB", {"init_epochs": -1}, "distill.init_epochs=-1 is invalid"),
        ("ab.AB", {"gamma": 0.0}, "distill.beta=0, distill.gamma=0 and distill.alpha=0"),
        ("ft.FT", {"rate": 1.5}, "distill.rate=1.5 is invalid; it must be in (0, 1]."),
        ("ft.FT", {"p2": 0}, "distill.p2=0 is invalid; it must be > 0."),
        ("fsp.FSP", {"init_epochs": 1.5}, "distill.init_epochs=1.5 is invalid"),
        ("kdsvd.KDSVD", {"k": 0}, "distill.k=0 is invalid; it must be an integer >= 1."),
        ("ofd.OFD", {"connector_kernel": 2}, "distill.connector_kernel=2 is invalid"),
        ("ofd.OFD", {"beta": -1.0}, "distill.beta=-1.0 is invalid; it must be >= 0."),
    ],
)
def test_invalid_settings_name_the_key_and_what_is_valid(target, kwargs, message):
    import importlib

    module, cls = target.split(".")
    with pytest.raises(ConfigError) as err:
        getattr(importlib.import_module(f"kdlight.methods.{module}"), cls)(**kwargs)
    assert message in str(err.value)


@pytest.mark.parametrize("name", ["fsp", "kdsvd"])
def test_unequal_channels_are_refused_at_build(name):
    from kdlight.methods.fsp import FSP
    from kdlight.methods.kdsvd import KDSVD

    m = (FSP if name == "fsp" else KDSVD)(student_layers=["a", "b"], teacher_layers=["c", "d"])
    s = {"a": torch.zeros(2, 4, 4, 4), "b": torch.zeros(2, 8, 2, 2)}
    t = {"c": torch.zeros(2, 4, 4, 4), "d": torch.zeros(2, 6, 2, 2)}
    with pytest.raises(ConfigError, match="needs equal channel counts"):
        m.build(s, t, 10)


def test_auto_layers_of_the_cifar_networks():
    from kdlight.methods.ab import AB
    from kdlight.methods.fsp import FSP
    from kdlight.methods.ofd import OFD
    from kdlight.models.cnn import CNN5
    from kdlight.models.resnet import resnet8, resnet20

    ofd = OFD()
    ofd.resolve_layers(CNN5(), resnet20())
    assert ofd.student_layers == ("relu1:in", "relu2:in", "relu3:in")
    assert ofd.teacher_layers == ("layer1.2.relu:in", "layer2.2.relu:in", "layer3.2.relu:in")
    # a fresh BatchNorm (weight 1, bias 0): margin E[x | x < 0] of N(0, 1) = -sqrt(2 / pi)
    assert float(ofd.margin0[0, 0]) == pytest.approx(-math.sqrt(2 / math.pi), rel=1e-6)
    ab = AB()
    ab.resolve_layers(resnet8(), resnet20())
    assert ab.student_layers == ("layer1.0.relu:in", "layer2.0.relu:in", "layer3.0.relu:in")
    fsp = FSP()
    fsp.resolve_layers(resnet8(), resnet20())
    assert fsp.teacher_layers == ("layer1:in", "layer1", "layer2", "layer3")


def test_param_values_are_deterministic():
    assert torch.equal(param_values([(2, 3)], 1)[0], param_values([(2, 3)], 1)[0])
