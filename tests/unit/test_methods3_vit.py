"""DeiT, ViTKD and OFA-KD: losses and gradients pinned to their authors' code, and the 32x32 ViTs.

The expected numbers in ``tests/unit/data/reference_values_vit3.json`` were computed once,
offline, by ``benchmarks/reference/make_reference_values_vit3.py``: it runs the authors' loss
code (read from clones at the commits below) in float64 on the inputs :data:`CASES` builds here
(it imports this module), with the same parameter values for the learnable parts (ViTKD's
projections, mask token and generation block; OFA's branches; loaded by state-dict name) and
the same random mask (ViTKD draws one ``torch.rand`` after ``torch.manual_seed(case seed)`` on
both sides). Nothing here needs the repositories.

- facebookresearch/deit @ 7e160fe43f0252d17191b71cbb5826254114ea5b: ``losses.py``
  (``DistillationLoss``; its base criterion timm's ``LabelSmoothingCrossEntropy(0.1)``)
- yzd-v/cls_KD @ 1e5d48f36957ee460d39d7ebc592c6cc7f8f3d66: ``mmcls/models/dis_losses/vitkd.py``
- Hao840/OFAKD @ f7bb896cac9879040800bde08a8cc2057a904c52: ``distillers/{ofa,_base,utils}.py``

Tolerances as in ``tests/unit/test_reference_losses.py`` (float32 here, float64 there).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from kdlight.errors import ConfigError
from kdlight.methods.base import Context
from kdlight.methods.deit import DeiT
from kdlight.methods.ofa import OFA
from kdlight.methods.vitkd import ViTKD
from tests.helpers.overrides import CONF_DIR
from tests.unit.test_reference_losses import fill_, gen, labels, logits

RTOL = 2e-5
ATOL = 1e-6
DATA = Path(__file__).parent / "data" / "reference_values_vit3.json"


# ---- the inputs (the script imports these) -------------------------------------------------
def deit_case(seed: int) -> dict:
    return {
        "cls": logits(seed, n=8, c=10),
        "dist": logits(seed + 1, n=8, c=10),
        "teacher_logits": logits(seed + 2, n=8, c=10),
        "labels": labels(seed + 3, n=8, c=10),
    }


def vitkd_case(seed: int, d_s: int, d_t: int, n: int = 3, grid: int = 4) -> dict:
    """Raw student taps (1 class token + grid^2 patches); teacher taps as their form (patches)."""
    tokens = grid * grid
    return {
        "student": [gen(seed + i, n, 1 + tokens, d_s) for i in range(3)],
        "teacher": [gen(seed + 10 + i, n, tokens, d_t) for i in range(3)],
        "student_logits": logits(seed + 20, n=n),
        "teacher_logits": logits(seed + 21, n=n),
        "labels": labels(seed + 22, n=n),
        "seed": seed,
    }


def ofa_case(seed: int, kind: str) -> dict:
    """Four student stages: CNN maps (channels doubling) or ViT tokens (class token + grid^2)."""
    n = 4
    if kind == "cnn":
        feats = [gen(seed + i, n, 4 << i, 16 >> i, 16 >> i) for i in range(4)]
        widths = (32, 24)  # student's and teacher's penultimate widths
    else:
        feats = [gen(seed + i, n, 1 + 14 * 14, 8) for i in range(4)]  # 14 x 14: one merge step
        widths = (8, 24)
    return {
        "student_feats": feats,
        "widths": widths,
        "student_logits": logits(seed + 20, n=n),
        "teacher_logits": logits(seed + 21, n=n),
        "labels": labels(seed + 22, n=n),
        "seed": seed,
    }


CASES = {
    "deit_hard": (
        "deit",
        {"distillation_type": "hard", "alpha": 0.5, "tau": 1.0},
        lambda: deit_case(1),
    ),  # fmt: skip
    "deit_soft_t3": (
        "deit",
        {"distillation_type": "soft", "alpha": 0.7, "tau": 3.0},
        lambda: deit_case(5),
    ),  # fmt: skip
    "vitkd_align": (
        "vitkd",
        {"mimic_weight": 3e-5, "generation_weight": 3e-6},
        lambda: vitkd_case(10, 6, 8),
    ),  # fmt: skip
    "vitkd_same_dims_mask75": (
        "vitkd",
        {"mimic_weight": 0.1, "generation_weight": 0.2, "mask_ratio": 0.75},
        lambda: vitkd_case(40, 8, 8),
    ),  # fmt: skip
    "ofa_cnn_student": ("ofa", {"eps": [1.0, 1.2, 1.5, 2.0, 1.5]}, lambda: ofa_case(70, "cnn")),
    "ofa_vit_student": ("ofa", {"eps": 1.5, "temperature": 2.0}, lambda: ofa_case(90, "vit")),
}


# ---- kdlight's side (the script reuses the built modules' parameter values) ------------------
def build(method: str, kw: dict, case: dict):
    """The kdlight method for ``case``, built and with its parameters set to fixed values."""
    if method == "deit":
        return DeiT(**kw)
    if method == "vitkd":
        m = ViTKD(**kw)
        m.student_layers = m.teacher_layers = ("a", "b", "c")
        s = dict(zip(m.student_layers, case["student"], strict=True))
        t = {k: torch.cat([v[:, :1], v], 1) for k, v in zip(m.teacher_layers, case["teacher"], strict=True)}  # fmt: skip
        m.build({k: v.float() for k, v in s.items()}, {k: v.float() for k, v in t.items()}, 10)
    else:
        m = OFA(**kw)
        m.student_layers = tuple(f"s{i}" for i in range(4))
        m.eps = m.eps * 5 if len(m.eps) == 1 else m.eps
        m.widths = case["widths"]
        m.prefix = 1 if case["student_feats"][0].dim() == 3 else 0
        feats = dict(zip(m.student_layers, case["student_feats"], strict=True))
        m.build({k: v.float() for k, v in feats.items()}, {}, 10)
    fill_(list(m.parameters()), seed=case.get("seed", 0) + 7)
    return m


def run_kdlight(method: str, kw: dict, case: dict, dtype=torch.float32):
    """(terms, {input name: gradient}) of kdlight's loss on ``case``."""
    m = build(method, kw, case).to(dtype)
    leaf = {}

    def mk(name, x):
        leaf[name] = x.detach().to(dtype).requires_grad_(True)
        return leaf[name]

    if method == "deit":
        ctx = Context(None, case["teacher_logits"].to(dtype), case["labels"], torch.arange(8),
                      student_feats={"head": mk("cls", case["cls"]), "head_dist": mk("dist", case["dist"])})  # fmt: skip
    else:
        feats = case["student"] if method == "vitkd" else case["student_feats"]
        s = {n: mk(n, f) for n, f in zip(m.student_layers, feats, strict=True)}
        t = {}
        if method == "vitkd":
            t = {n: f.to(dtype) for n, f in zip(m.teacher_layers, case["teacher"], strict=True)}
        ctx = Context(mk("student_logits", case["student_logits"]), case["teacher_logits"].to(dtype),
                      case["labels"], torch.arange(4), student_feats=s, teacher_feats=t)  # fmt: skip
    torch.manual_seed(case.get("seed", 0))
    out = m(ctx)
    out["loss"].backward()
    return {k: float(v.detach()) for k, v in out.items()}, {k: v.grad for k, v in leaf.items()}


# ---- the pinned values -------------------------------------------------------------------
def _reference() -> dict:
    return json.loads(DATA.read_text())["cases"]


@pytest.mark.parametrize("name", list(CASES))
def test_loss_and_gradients_match_the_authors_code(name):
    ref = _reference()[name]
    method, kw, make = CASES[name]
    terms, grads = run_kdlight(method, kw, make())
    for key, value in ref["terms"].items():
        assert terms[key] == pytest.approx(value, rel=RTOL, abs=ATOL), key
    for key, rec in ref["grads"].items():
        g = grads[key].double().flatten()
        assert float(g.norm()) == pytest.approx(rec["norm"], rel=RTOL, abs=ATOL), key
        for i, v in rec["entries"]:
            assert float(g[i]) == pytest.approx(v, rel=1e-4, abs=RTOL * rec["norm"] + 1e-9), (
                key,
                i,
            )


def test_cases_are_the_ones_the_script_saw():
    for name, (*_, make) in CASES.items():
        case = make()
        flat = [v for v in case.values() if isinstance(v, torch.Tensor)]
        flat += [t for v in case.values() if isinstance(v, list) for t in v if isinstance(t, torch.Tensor)]  # fmt: skip
        fingerprint = sum(float(t.double().abs().sum()) for t in flat)
        assert fingerprint == pytest.approx(_reference()[name]["fingerprint"], rel=1e-12), name


# ---- behaviour -----------------------------------------------------------------------------
def test_deit_refuses_a_student_without_a_distillation_token():
    student = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 10))
    with pytest.raises(ConfigError, match=r"distill=deit .* student Sequential .*deit_cifar_tiny"):
        DeiT().resolve_layers(student, student)


@pytest.mark.parametrize(
    ("cls", "kw", "key"),
    [
        (DeiT, {"distillation_type": "medium"}, "distill.distillation_type"),
        (DeiT, {"alpha": 1.5}, "distill.alpha"),
        (ViTKD, {"mask_ratio": 1.0}, "distill.mask_ratio"),
        (ViTKD, {"student_layers": ["blocks.0"]}, "distill.student_layers"),
        (OFA, {"eps": 0.0}, "distill.eps"),
    ],
)
def test_bad_settings_name_the_key(cls, kw, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        cls(**kw)


def test_labels_needed():
    assert DeiT(alpha=0.5).needs_labels and not DeiT(alpha=1.0).needs_labels
    assert ViTKD().needs_labels and not ViTKD(gamma=0.0).needs_labels
    assert OFA().needs_labels


def test_vitkd_teacher_form_is_the_patch_tokens():
    m = ViTKD()
    m.teacher_layers = ("blocks.0", "blocks.1", "norm")
    forms = m.teacher_forms()
    x = torch.randn(2, 1 + 16, 8)
    assert {f.name for f in forms.values()} == {"patch_tokens_skip1"}
    torch.testing.assert_close(forms["norm"].fn(x), x[:, 1:])


# ---- the 32x32 ViT / DeiT models -------------------------------------------------------------
#: model config -> (class, parameters at the classes given, classes, depth)
MODELS = {
    "vit_cifar_tiny": ("VisionTransformer", 208_074, 10, 4),
    "vit_cifar_small": ("VisionTransformer", 683_242, 10, 6),
    "deit_cifar_tiny": ("VisionTransformerDistilled", 208_852, 10, 4),
    "vit_small_p4_cifar": ("VisionTransformer", 21_376_996, 100, 12),
    "deit_tiny_distilled_p4_cifar": ("VisionTransformerDistilled", 5_399_816, 100, 12),
}


def make_model(name: str, classes: int):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(config_name="train", overrides=[f"model@student={name}"])
    cfg.student.num_classes = classes
    return instantiate(cfg.student)


@pytest.mark.parametrize("name", list(MODELS))
def test_vit_models_at_32x32(name):
    kind, params, classes, depth = MODELS[name]
    torch.manual_seed(0)
    net = make_model(name, classes)
    assert type(net).__name__ == kind
    assert sum(p.numel() for p in net.parameters()) == params
    assert [d["module"] for d in net.feature_info] == [f"blocks.{i}" for i in range(depth)]
    prefix = 2 if kind.endswith("Distilled") else 1
    assert net.num_prefix_tokens == prefix
    if params > 1_000_000:
        return  # the shapes below are the same code; keep the CPU test fast
    from kdlight.methods.taps import tapped_forward

    net.eval()
    out, feats = tapped_forward(net, torch.randn(2, 3, 32, 32), ["blocks.0", "norm"])
    assert out.shape == (2, classes)
    assert feats["blocks.0"].shape == (2, prefix + 64, net.embed_dim)  # 8 x 8 patches of 4 x 4
    assert feats["norm"].shape == (2, prefix + 64, net.embed_dim)


def test_deit_taps_each_head_and_the_model_returns_their_mean():
    from kdlight.methods.taps import tapped_forward

    torch.manual_seed(0)
    net = make_model("deit_cifar_tiny", 10).train()
    out, feats = tapped_forward(net, torch.randn(3, 3, 32, 32), ["head", "head_dist"])
    torch.testing.assert_close(out, (feats["head"] + feats["head_dist"]) / 2)
    assert not math.isclose(float((feats["head"] - feats["head_dist"]).abs().max()), 0.0)
