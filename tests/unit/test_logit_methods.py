"""DKD, DIST and CTKD: each loss against the paper's equations written out here, gradients, settings.

Expected values are computed in float64 with explicit exp/log/sums (or by hand), never with
the methods' own helpers.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import nn

import kdlight
from kdlight.engine import DistillationModule
from kdlight.errors import ConfigError
from kdlight.methods.base import Context
from kdlight.methods.ctkd import CTKD
from kdlight.methods.dist import DIST
from kdlight.methods.dkd import DKD

DISTILL_CONF = Path(kdlight.__file__).parent / "conf" / "distill"


# ---- the papers' equations, written out -----------------------------------------------------
def softmax(z: torch.Tensor) -> torch.Tensor:
    e = torch.exp(z - z.max(dim=-1, keepdim=True).values)
    return e / e.sum(dim=-1, keepdim=True)


def kl(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """KL(p || q) of two 1-d distributions."""
    return (p * torch.log(p / q)).sum()


def zscore(z: torch.Tensor) -> torch.Tensor:
    """(z - mean) / (unbiased std + 1e-7) per row (Sun et al. 2024)."""
    c = z.shape[1]
    mean = z.sum(dim=1, keepdim=True) / c
    std = torch.sqrt(((z - mean) ** 2).sum(dim=1, keepdim=True) / (c - 1))
    return (z - mean) / (std + 1e-7)


def dkd_expected(zs, zt, y, T):
    """(TCKD, NCKD) of Zhao et al. 2022, eqs. 1-4, sample by sample."""
    zs, zt = zs.double(), zt.double()
    tckd = nckd = 0.0
    for i in range(zs.shape[0]):
        ps, pt = softmax(zs[i] / T), softmax(zt[i] / T)
        c = int(y[i])
        bs = torch.stack([ps[c], 1 - ps[c]])
        bt = torch.stack([pt[c], 1 - pt[c]])
        tckd = tckd + kl(bt, bs)
        others = [k for k in range(zs.shape[1]) if k != c]
        nckd = nckd + kl(pt[others] / pt[others].sum(), ps[others] / ps[others].sum())
    n = zs.shape[0]
    return T * T * tckd / n, T * T * nckd / n


def ce_expected(z, y):
    z = z.double()
    return -sum(torch.log(softmax(z[i])[int(y[i])]) for i in range(z.shape[0])) / z.shape[0]


def kd_expected(zs, zt, T):
    """T^2 * mean over samples of KL(softmax(zt/T) || softmax(zs/T))."""
    zs, zt = zs.double(), zt.double()
    n = zs.shape[0]
    return T * T * sum(kl(softmax(zt[i] / T), softmax(zs[i] / T)) for i in range(n)) / n


def pearson(u, v):
    return torch.corrcoef(torch.stack([u, v]))[0, 1]


def dist_expected(zs, zt, T):
    """(inter, intra) of Huang et al. 2022, eqs. 6-8."""
    ys, yt = softmax(zs.double() / T), softmax(zt.double() / T)
    b, c = ys.shape
    inter = 1 - sum(pearson(ys[i], yt[i]) for i in range(b)) / b
    intra = 1 - sum(pearson(ys[:, k], yt[:, k]) for k in range(c)) / c
    return T * T * inter, T * T * intra


# ---- helpers ---------------------------------------------------------------------------------
def _logits(seed, b=6, c=5, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    zs = scale * torch.randn(b, c, generator=g)
    zt = scale * torch.randn(b, c, generator=g)
    y = torch.randint(0, c, (b,), generator=g)
    return zs, zt, y


def _ctx(zs, zt, y, epoch=0, max_epochs=30):
    return Context(
        student_logits=zs,
        teacher_logits=zt,
        labels=y,
        idx=torch.arange(zs.shape[0]),
        epoch=epoch,
        max_epochs=max_epochs,
    )


def _close(actual, expected, tol=1e-5):
    actual = actual.detach() if isinstance(actual, torch.Tensor) else actual
    expected = expected.detach() if isinstance(expected, torch.Tensor) else expected
    assert float(actual) == pytest.approx(float(expected), rel=tol, abs=tol)


# ---- DKD -------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("T", [1.0, 4.0])
def test_dkd_terms_match_the_papers_binary_and_non_target_kls(seed, T):
    zs, zt, y = _logits(seed)
    out = DKD(alpha=1.0, beta=8.0, temperature=T, warmup=0)(_ctx(zs, zt, y))
    tckd, nckd = dkd_expected(zs, zt, y, T)
    _close(out["loss_tckd"], tckd)
    _close(out["loss_nckd"], nckd)
    _close(out["loss_ce"], ce_expected(zs, y))
    _close(out["loss"], ce_expected(zs, y) + 1.0 * tckd + 8.0 * nckd)


def test_dkd_on_a_hand_computed_example():
    # student uniform over 3 classes; teacher p = [1/2, 1/4, 1/4] (logits ln 2, 0, 0); T = 1
    zs = torch.zeros(2, 3)
    zt = torch.tensor([[math.log(2.0), 0.0, 0.0]] * 2)
    y = torch.tensor([0, 1])
    out = DKD(alpha=1.0, beta=1.0, temperature=1.0, warmup=0)(_ctx(zs, zt, y))
    # label 0: b_t = [1/2, 1/2], b_s = [1/3, 2/3]; non-target parts both uniform -> NCKD 0
    tckd0 = 0.5 * math.log(0.5 / (1 / 3)) + 0.5 * math.log(0.5 / (2 / 3))
    # label 1: b_t = [1/4, 3/4], b_s = [1/3, 2/3]; non-target teacher [2/3, 1/3] vs [1/2, 1/2]
    tckd1 = 0.25 * math.log(0.25 / (1 / 3)) + 0.75 * math.log(0.75 / (2 / 3))
    nckd1 = (2 / 3) * math.log((2 / 3) / 0.5) + (1 / 3) * math.log((1 / 3) / 0.5)
    _close(out["loss_tckd"], (tckd0 + tckd1) / 2)
    _close(out["loss_nckd"], (0.0 + nckd1) / 2)
    _close(out["loss_ce"], math.log(3.0))


@pytest.mark.parametrize(
    ("epoch", "factor"), [(0, 1 / 20), (4, 5 / 20), (18, 19 / 20), (19, 1.0), (100, 1.0)]
)
def test_dkd_warmup_weighs_epoch_e_by_e_plus_1_over_warmup(epoch, factor):
    zs, zt, y = _logits(3)
    out = DKD(alpha=1.5, beta=6.0, temperature=4.0, warmup=20, ce_weight=0.5)(
        _ctx(zs, zt, y, epoch=epoch)
    )
    tckd, nckd = dkd_expected(zs, zt, y, 4.0)
    _close(out["loss"], 0.5 * ce_expected(zs, y) + factor * (1.5 * tckd + 6.0 * nckd))
    _close(out["loss_tckd"], tckd)  # terms are logged unweighted
    _close(out["loss_nckd"], nckd)


@pytest.mark.parametrize("seed", [0, 2])
def test_dkd_logit_standardization_zscores_both_sides_but_not_the_ce(seed):
    zs, zt, y = _logits(seed, scale=5.0)
    out = DKD(temperature=2.0, warmup=0, logit_standardization=True)(_ctx(zs, zt, y))
    tckd, nckd = dkd_expected(zscore(zs.double()), zscore(zt.double()), y, 2.0)
    _close(out["loss_tckd"], tckd)
    _close(out["loss_nckd"], nckd)
    _close(out["loss_ce"], ce_expected(zs, y))
    # the switch changes the value, and makes it blind to each side's scale and shift
    plain = DKD(temperature=2.0, warmup=0)(_ctx(zs, zt, y))
    assert abs(float(plain["loss_nckd"]) - float(nckd)) > 1e-3
    moved = DKD(temperature=2.0, warmup=0, logit_standardization=True)(
        _ctx(3.0 * zs - 7.0, 0.5 * zt + 2.0, y)
    )
    _close(moved["loss_tckd"], tckd, 1e-4)
    _close(moved["loss_nckd"], nckd, 1e-4)


def test_dkd_needs_labels():
    assert DKD().needs_labels is True


# ---- DIST ------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("T", [1.0, 4.0])
def test_dist_relations_match_pearson_correlations(seed, T):
    zs, zt, y = _logits(seed, b=8, c=6)
    out = DIST(beta=2.0, gamma=3.0, temperature=T, ce_weight=0.5)(_ctx(zs, zt, y))
    inter, intra = dist_expected(zs, zt, T)
    _close(out["loss_inter"], inter)
    _close(out["loss_intra"], intra)
    _close(out["loss_ce"], ce_expected(zs, y))
    _close(out["loss"], 0.5 * ce_expected(zs, y) + 2.0 * inter + 3.0 * intra)


def test_dist_on_a_hand_computed_example():
    # Two classes: each probability row [p, 1 - p] centred is [p - 1/2, 1/2 - p], so the
    # per-sample correlation is the product of the signs of p_s - 1/2 and p_t - 1/2: +1 for
    # sample 0, -1 for sample 1, mean 0 -> inter = 1. The teacher's columns are constant
    # over the batch (both rows equal): correlation 0 -> intra = 1. Times T^2 = 4.
    zs = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    zt = torch.tensor([[2.0, 0.0], [2.0, 0.0]])
    y = torch.tensor([0, 1])
    out = DIST(beta=1.0, gamma=1.0, temperature=2.0, ce_weight=0.0)(_ctx(zs, zt, y))
    _close(out["loss_inter"], 4.0)
    _close(out["loss_intra"], 4.0)
    _close(out["loss"], 8.0)
    # identical predictions: both relations are perfect, the loss is 0
    same = DIST(temperature=1.0, ce_weight=0.0)(_ctx(zs, zs.clone(), y))
    _close(same["loss"], 0.0, 1e-4)  # float32 rounding of 1 - rho


def test_dist_without_ce_learns_from_the_teacher_alone():
    zs, zt, _ = _logits(4)
    method = DIST(ce_weight=0.0)
    assert method.needs_labels is False
    out = method(_ctx(zs, zt, None))
    inter, intra = dist_expected(zs, zt, 4.0)
    _close(out["loss"], 2.0 * inter + 2.0 * intra)
    assert DIST().needs_labels is True


# ---- CTKD ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("epoch", "lam"),
    [
        (0, (1 - math.cos(math.pi / 10)) / 2),  # the authors' epoch 1
        (4, 0.5),
        (9, 1.0),
        (50, 1.0),
    ],
)
def test_ctkd_lambda_follows_the_cosine_curriculum(epoch, lam):
    _close(CTKD().grl_lambda(epoch), lam, 1e-9)
    # general range: lambda_min + (lambda_max - lambda_min) * ramp
    _close(CTKD(lambda_min=0.2, lambda_max=0.6).grl_lambda(epoch), 0.2 + 0.4 * lam, 1e-9)


@pytest.mark.parametrize("seed", [0, 1])
def test_ctkd_loss_uses_the_learned_temperature(seed):
    zs, zt, y = _logits(seed)
    method = CTKD(alpha=0.9, t_start=1.0, t_range=20.0, theta_init=1.0)
    out = method(_ctx(zs, zt, y, epoch=4))
    T = 1.0 + 20.0 / (1.0 + math.exp(-1.0))  # 15.62...
    _close(out["temperature"], T)
    _close(out["lambda"], 0.5)
    _close(out["loss_kd"], kd_expected(zs, zt, T))
    _close(out["loss"], 0.9 * kd_expected(zs, zt, T) + 0.1 * ce_expected(zs, y))
    # another theta, another temperature
    with torch.no_grad():
        method.theta.fill_(-2.0)
    T2 = 2.0 + 3.0 / (1.0 + math.exp(2.0))
    method.t_start, method.t_range = 2.0, 3.0
    _close(method(_ctx(zs, zt, y))["loss_kd"], kd_expected(zs, zt, T2))


@pytest.mark.parametrize("epoch", [0, 4, 12])
def test_ctkd_temperature_gets_the_reversed_gradient_scaled_by_lambda(epoch):
    zs, zt, y = _logits(5)
    method = CTKD(alpha=0.7, theta_init=0.3)
    method(_ctx(zs, zt, y, epoch=epoch))["loss"].backward()
    # the plain gradient of the same loss wrt theta, from the equations written out
    theta = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
    T = 1.0 + 20.0 * torch.sigmoid(theta)
    plain = 0.7 * kd_expected(zs, zt, T) + 0.3 * ce_expected(zs, y)
    (g,) = torch.autograd.grad(plain, theta)
    lam = method.grl_lambda(epoch)
    assert lam > 0 and abs(float(g)) > 1e-6
    _close(method.theta.grad, -lam * float(g), 1e-4)
    assert float(method.theta.grad) * float(g) < 0  # reversed: the optimizer raises the KD loss


def test_ctkd_temperature_is_trained_and_checkpointed_by_the_engine():
    method = CTKD()
    module = DistillationModule(
        nn.Linear(4, 3), nn.Linear(4, 3), method, 3, functools.partial(torch.optim.SGD, lr=0.1)
    )
    module.build_method(torch.zeros(2, 4))
    assert "method.theta" in module.state_dict()
    params = module.configure_optimizers().param_groups[0]["params"]
    assert any(p is method.theta for p in params)


def test_ctkd_without_labels_is_pure_kd():
    zs, zt, _ = _logits(6)
    method = CTKD(alpha=1.0)
    assert method.needs_labels is False and CTKD().needs_labels is True
    out = method(_ctx(zs, zt, None))
    _close(out["loss"], kd_expected(zs, zt, float(out["temperature"])))


# ---- gradients: every student parameter, never the teacher ---------------------------------
METHODS = {
    "dkd": lambda: DKD(warmup=0),
    "dkd_ls": lambda: DKD(warmup=5, logit_standardization=True),
    "dist": lambda: DIST(),
    "ctkd": lambda: CTKD(),
}


@pytest.mark.parametrize("name", sorted(METHODS))
def test_gradients_reach_every_student_parameter_and_never_the_teacher(name):
    torch.manual_seed(0)
    student, teacher = nn.Linear(7, 5), nn.Linear(7, 5)
    x, y = torch.randn(8, 7), torch.randint(0, 5, (8,))
    # teacher logits built WITH autograd: the method itself must not backpropagate into them
    ctx = _ctx(student(x), teacher(x), y, epoch=2)
    out = METHODS[name]()(ctx)
    assert set(out) >= {"loss", "loss_ce"}
    assert all(torch.isfinite(v).all() for v in out.values())
    out["loss"].backward()
    for pname, p in student.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, pname
    for p in teacher.parameters():
        assert p.grad is None


# ---- settings --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("cls", "kwargs", "names"),
    [
        (DKD, {"alpha": -0.1}, ["distill.alpha=-0.1", ">= 0"]),
        (DKD, {"beta": -1}, ["distill.beta=-1"]),
        (DKD, {"temperature": 0}, ["distill.temperature=0", "> 0"]),
        (DKD, {"warmup": -1}, ["distill.warmup=-1"]),
        (DKD, {"warmup": 2.5}, ["distill.warmup=2.5", "whole number"]),
        (DKD, {"ce_weight": -1}, ["distill.ce_weight=-1"]),
        (DIST, {"beta": -1}, ["distill.beta=-1"]),
        (DIST, {"gamma": -0.5}, ["distill.gamma=-0.5"]),
        (DIST, {"temperature": -4}, ["distill.temperature=-4"]),
        (DIST, {"ce_weight": float("nan")}, ["distill.ce_weight=nan"]),
        (CTKD, {"alpha": 1.5}, ["distill.alpha=1.5", "[0, 1]"]),
        (CTKD, {"t_start": 0}, ["distill.t_start=0"]),
        (CTKD, {"t_range": -1}, ["distill.t_range=-1"]),
        (CTKD, {"lambda_min": -0.1}, ["distill.lambda_min=-0.1"]),
        (CTKD, {"lambda_min": 0.5, "lambda_max": 0.2}, ["distill.lambda_max=0.2", ">= 0.5"]),
        (CTKD, {"decay_epochs": 0}, ["distill.decay_epochs=0"]),
        (CTKD, {"decay_epochs": 1.5}, ["distill.decay_epochs=1.5", "whole number"]),
    ],
)
def test_invalid_settings_raise_one_sentence_config_errors(cls, kwargs, names):
    with pytest.raises(ConfigError) as err:
        cls(**kwargs)
    for name in names:
        assert name in str(err.value)


@pytest.mark.parametrize(
    ("name", "cls", "defaults"),
    [
        # mdistiller CFG.DKD
        (
            "dkd",
            DKD,
            {"alpha": 1.0, "beta": 8.0, "temperature": 4.0, "warmup": 20, "ce_weight": 1.0},
        ),
        # hunto dist_cifar.yaml: DIST(1, 1, tau=4) x kd_loss_weight 2, ori_loss_weight 1
        ("dist", DIST, {"beta": 2.0, "gamma": 2.0, "temperature": 4.0, "ce_weight": 1.0}),
        # zhengli97/CTKD run_cifar_distill.sh
        ("ctkd", CTKD, {"alpha": 0.9, "t_start": 1.0, "t_range": 20.0, "decay_epochs": 10}),
    ],
)
def test_configs_build_the_method_with_the_authors_cifar100_defaults(name, cls, defaults):
    method = instantiate(OmegaConf.load(DISTILL_CONF / f"{name}.yaml"))
    assert type(method) is cls
    for key, value in defaults.items():
        assert getattr(method, key) == value, key
