"""kdlight.losses, the library API for your own loop: each value against its formula written out here."""

from __future__ import annotations

import doctest

import numpy as np
import pytest
import torch

import kdlight.losses
from kdlight.errors import ConfigError
from kdlight.losses import FEATURE_METHODS, FeatureLoss, dist_loss, dkd_loss, kd_loss

RNG = np.random.default_rng(0)
ZS = RNG.normal(0, 3, size=(5, 7))
ZT = RNG.normal(0, 3, size=(5, 7))
Y = np.array([0, 3, 6, 2, 3])


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def kl(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """KL(p || q) per row."""
    return (p * (np.log(p) - np.log(q))).sum(axis=1)


def t32(a: np.ndarray) -> torch.Tensor:
    return torch.tensor(a, dtype=torch.float32)


def test_the_docstring_examples_run():
    result = doctest.testmod(kdlight.losses)
    assert result.attempted >= 5 and result.failed == 0


@pytest.mark.parametrize("temperature", [1.0, 4.0, 20.0])
def test_kd_loss_is_t_squared_kl_teacher_student_batch_mean(temperature):
    expected = temperature**2 * kl(softmax(ZT / temperature), softmax(ZS / temperature)).mean()
    assert kd_loss(t32(ZS), t32(ZT), temperature=temperature).item() == pytest.approx(
        expected, rel=1e-5
    )


def test_kd_loss_legacy_reduction_is_one_over_c_of_the_true_kl():
    true = kd_loss(t32(ZS), t32(ZT), temperature=4.0).item()
    assert kd_loss(t32(ZS), t32(ZT), 4.0, reduction="legacy").item() == pytest.approx(
        true / 7, rel=1e-5
    )


def test_kd_loss_standardized_zscores_each_row_with_the_sample_std():
    def z(a):
        return (a - a.mean(axis=1, keepdims=True)) / a.std(axis=1, ddof=1, keepdims=True)

    expected = 4.0 * kl(softmax(z(ZT) / 2.0), softmax(z(ZS) / 2.0)).mean()
    got = kd_loss(t32(ZS), t32(ZT), temperature=2.0, standardized=True).item()
    assert got == pytest.approx(expected, rel=1e-4)


def test_kd_loss_takes_a_learned_temperature_and_passes_it_a_gradient():
    temperature = torch.tensor(3.0, requires_grad=True)
    kd_loss(t32(ZS), t32(ZT), temperature=temperature).backward()
    assert temperature.grad is not None and temperature.grad.item() != 0.0


def test_dkd_loss_is_alpha_tckd_plus_beta_nckd():
    t = 4.0
    ps, pt = softmax(ZS / t), softmax(ZT / t)
    rows = np.arange(len(Y))
    b_s = np.stack([ps[rows, Y], 1 - ps[rows, Y]], axis=1)
    b_t = np.stack([pt[rows, Y], 1 - pt[rows, Y]], axis=1)
    tckd = t * t * kl(b_t, b_s).mean()
    keep = np.ones_like(ZS, dtype=bool)
    keep[rows, Y] = False
    nckd = (
        t * t * kl(softmax(ZT[keep].reshape(5, 6) / t), softmax(ZS[keep].reshape(5, 6) / t)).mean()
    )
    got = dkd_loss(t32(ZS), t32(ZT), torch.tensor(Y), alpha=1.5, beta=8.0, temperature=t).item()
    assert got == pytest.approx(1.5 * tckd + 8.0 * nckd, rel=1e-4)


def test_dist_loss_is_one_minus_pearson_between_and_within_classes():
    t = 4.0
    ys, yt = softmax(ZS / t), softmax(ZT / t)
    inter = 1 - np.mean([np.corrcoef(ys[i], yt[i])[0, 1] for i in range(5)])
    intra = 1 - np.mean([np.corrcoef(ys[:, j], yt[:, j])[0, 1] for j in range(7)])
    got = dist_loss(t32(ZS), t32(ZT), beta=2.0, gamma=0.5, temperature=t).item()
    assert got == pytest.approx(t * t * (2.0 * inter + 0.5 * intra), rel=1e-4)


def test_feature_loss_at_is_the_attention_maps_mean_squared_difference():
    fs = RNG.normal(size=(3, 4, 6, 6))
    ft = RNG.normal(size=(3, 9, 6, 6))

    def q(f):
        a = (np.abs(f) ** 2).mean(axis=1).reshape(len(f), -1)
        return a / np.linalg.norm(a, axis=1, keepdims=True)

    expected = ((q(fs) - q(ft)) ** 2).mean()
    got = FeatureLoss("at")([t32(fs)], [t32(ft)]).item()
    assert got == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("name", FEATURE_METHODS)
def test_every_feature_loss_gives_the_student_a_gradient(name):
    student = [
        torch.randn(4, 8, 4, 4, requires_grad=True),
        torch.randn(4, 16, 2, 2, requires_grad=True),
    ]
    teacher = [torch.randn(4, 12, 4, 4), torch.randn(4, 24, 2, 2)]
    loss_fn = FeatureLoss(name)
    loss = loss_fn(student, teacher)
    loss.backward()
    assert loss.dim() == 0 and torch.isfinite(loss)
    assert all(s.grad is not None and s.grad.abs().sum() > 0 for s in student)
    if name in ("vid", "cc"):  # layers of its own, made on the first call, kept after it
        params = list(loss_fn.parameters())
        assert params
        loss_fn(student, teacher)
        assert list(loss_fn.parameters()) == params


def test_an_unknown_feature_method_names_the_valid_ones():
    with pytest.raises(ConfigError, match=r"FeatureLoss\('kd'\) .* valid names are at, cc, nst"):
        FeatureLoss("kd")


def test_unpaired_feature_lists_are_refused():
    with pytest.raises(ConfigError, match="equal-length, non-empty lists .* got 2 and 1"):
        FeatureLoss("sp")([torch.randn(2, 3)] * 2, [torch.randn(2, 3)])
