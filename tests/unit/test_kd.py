import math

import pytest
import torch
import torch.nn.functional as F

from kdlight.errors import ConfigError
from kdlight.methods.base import Context
from kdlight.methods.kd import KD, soft_kl


def hinton_kd_loss(s, t, y, alpha, temperature, **kwargs):
    ctx = Context(student_logits=s, teacher_logits=t, labels=y, idx=torch.arange(s.shape[0]))
    return KD(alpha, temperature, **kwargs)(ctx)


def test_kd_term_is_zero_when_student_equals_teacher():
    logits = torch.randn(8, 10)
    out = hinton_kd_loss(logits, logits.clone(), None, alpha=1.0, temperature=4.0)
    assert out["loss_kd"].item() == pytest.approx(0.0, abs=1e-6)
    assert out["loss"].item() == pytest.approx(0.0, abs=1e-6)


def test_hand_computed_value_two_classes():
    # teacher p = softmax([ln 3, 0]) = [3/4, 1/4], student p = [1/2, 1/2], T = 1:
    # KL = 3/4 ln(3/2) + 1/4 ln(1/2) = 0.1308120...
    s = torch.tensor([[0.0, 0.0]])
    t = torch.tensor([[math.log(3.0), 0.0]])
    assert soft_kl(s, t, 1.0).item() == pytest.approx(
        0.75 * math.log(1.5) + 0.25 * math.log(0.5), rel=1e-6
    )
    # T = 2: teacher p = [sqrt3, 1] / (sqrt3 + 1); times T^2 = 4 -> 0.1453631...
    assert soft_kl(s, t, 2.0).item() == pytest.approx(0.1453631, rel=1e-5)


def test_t_squared_scaling_and_batchmean():
    torch.manual_seed(0)
    s, t = torch.randn(5, 7), torch.randn(5, 7)
    for temp in (1.0, 2.0, 10.0):
        q_t = F.softmax(t / temp, dim=1)
        q_s = F.softmax(s / temp, dim=1)
        kl_per_sample = (q_t * (q_t.log() - q_s.log())).sum(dim=1)
        expected = temp**2 * kl_per_sample.mean()
        assert soft_kl(s, t, temp).item() == pytest.approx(expected.item(), rel=1e-5)


def test_legacy_reduction_is_one_over_num_classes():
    torch.manual_seed(1)
    s, t = torch.randn(4, 10), torch.randn(4, 10)
    assert soft_kl(s, t, 3.0, "legacy").item() == pytest.approx(
        soft_kl(s, t, 3.0).item() / 10, rel=1e-5
    )


def test_alpha_weights_the_soft_term():
    torch.manual_seed(2)
    s, t = torch.randn(6, 10), torch.randn(6, 10)
    y = torch.randint(0, 10, (6,))
    out = hinton_kd_loss(s, t, y, alpha=0.7, temperature=5.0)
    assert out["loss_ce"].item() == pytest.approx(F.cross_entropy(s, y).item(), rel=1e-6)
    assert out["loss"].item() == pytest.approx(
        0.7 * out["loss_kd"].item() + 0.3 * out["loss_ce"].item(), rel=1e-6
    )


def test_gradient_flows_to_student_only():
    s = torch.randn(3, 10, requires_grad=True)
    t = torch.randn(3, 10, requires_grad=True)
    hinton_kd_loss(s, t.detach(), torch.tensor([0, 1, 2]), 0.5, 4.0)["loss"].backward()
    assert s.grad is not None and s.grad.abs().sum() > 0
    assert t.grad is None


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"alpha": 1.5, "temperature": 4.0}, "alpha=1.5"),
        ({"alpha": -0.1, "temperature": 4.0}, "alpha=-0.1"),
        ({"alpha": 0.5, "temperature": 0.0}, "temperature=0.0"),
        ({"alpha": 0.5, "temperature": -2.0}, "temperature=-2.0"),
        ({"alpha": 0.5, "temperature": 2.0, "reduction": "mean"}, "reduction='mean'"),
    ],
)
def test_invalid_parameters_are_refused(kwargs, needle):
    with pytest.raises(ConfigError, match=needle.replace("(", r"\(")):
        KD(**kwargs)


def test_only_alpha_one_trains_without_labels():
    assert KD(alpha=1.0).needs_labels is False
    assert KD(alpha=0.5).needs_labels is True
    out = hinton_kd_loss(torch.randn(2, 3), torch.randn(2, 3), None, alpha=1.0, temperature=2.0)
    assert out["loss"].item() == out["loss_kd"].item()


def test_logit_standardization_is_kd_on_z_scored_logits():
    # Sun et al. (2024), eq. 6: z' = (z - mean(z)) / std(z) (unbiased std, as their code), then KD
    torch.manual_seed(3)
    s, t = torch.randn(4, 6) * 3 + 1, torch.randn(4, 6) * 0.5 - 2
    y = torch.randint(0, 6, (4,))

    def zscore(z):
        n = z.shape[1]
        mean = z.sum(dim=1, keepdim=True) / n
        std = (((z - mean) ** 2).sum(dim=1, keepdim=True) / (n - 1)).sqrt()
        return (z - mean) / std

    temp = 2.0
    q_t = F.softmax(zscore(t) / temp, dim=1)
    q_s = F.softmax(zscore(s) / temp, dim=1)
    kd = temp**2 * (q_t * (q_t.log() - q_s.log())).sum(dim=1).mean()
    out = hinton_kd_loss(s, t, y, 0.9, temp, logit_standardization=True)
    assert out["loss_kd"].item() == pytest.approx(kd.item(), rel=1e-5)
    assert out["loss_ce"].item() == pytest.approx(F.cross_entropy(s, y).item(), rel=1e-6)
    # invariant to each logit vector's shift and scale, unlike plain KD
    moved = hinton_kd_loss(s * 4 + 7, t * 0.1 - 3, y, 0.9, temp, logit_standardization=True)
    assert moved["loss_kd"].item() == pytest.approx(kd.item(), rel=1e-4)


# ---- issue 31: separate CE and KD weights, one default temperature ---------------------------
def _kl_t2(s, t, temp):
    q_t, q_s = F.softmax(t.double() / temp, dim=1), F.softmax(s.double() / temp, dim=1)
    return temp**2 * (q_t * (q_t.log() - q_s.log())).sum(dim=1).mean().item()


def test_separate_weights_express_logit_standardizations_recipe():
    # Sun et al. (2024): CE 0.1 + KD 9, beyond what alpha in [0, 1] can say
    torch.manual_seed(5)
    s, t, y = torch.randn(6, 10), torch.randn(6, 10), torch.randint(0, 10, (6,))
    ctx = Context(student_logits=s, teacher_logits=t, labels=y, idx=torch.arange(6))
    out = KD(alpha=None, temperature=2.0, ce_weight=0.1, kd_weight=9.0)(ctx)
    ce = F.cross_entropy(s.double(), y).item()
    assert out["loss"].item() == pytest.approx(0.1 * ce + 9.0 * _kl_t2(s, t, 2.0), rel=1e-5)
    # alpha is the convenience form: kd_weight = alpha, ce_weight = 1 - alpha
    method = KD(alpha=0.7, temperature=2.0)
    assert (method.kd_weight, method.ce_weight) == pytest.approx((0.7, 0.3))
    assert method(ctx)["loss"].item() == pytest.approx(0.3 * ce + 0.7 * _kl_t2(s, t, 2.0), rel=1e-5)


def test_alpha_and_weights_given_together_must_agree():
    assert KD(alpha=0.9, ce_weight=0.1, kd_weight=0.9).ce_weight == pytest.approx(0.1)
    with pytest.raises(
        ConfigError, match=r"ce_weight=0.5 disagrees with distill.alpha=0.9.*alpha=null"
    ):
        KD(alpha=0.9, ce_weight=0.5)
    with pytest.raises(ConfigError, match=r"kd_weight=9.0 disagrees with distill.alpha=0.9"):
        KD(alpha=0.9, kd_weight=9.0)
    with pytest.raises(ConfigError, match="ce_weight=-1"):
        KD(alpha=None, ce_weight=-1.0)


def test_ce_weight_zero_trains_without_labels():
    method = KD(alpha=None, ce_weight=0.0, kd_weight=2.0, temperature=3.0)
    assert method.needs_labels is False
    s, t = torch.randn(4, 5), torch.randn(4, 5)
    out = method(Context(student_logits=s, teacher_logits=t, labels=None, idx=torch.arange(4)))
    assert out["loss"].item() == pytest.approx(2.0 * _kl_t2(s, t, 3.0), rel=1e-5)


def test_kd_and_fitnets_default_temperature_is_the_configs():
    from omegaconf import OmegaConf

    import kdlight
    from kdlight.methods.fitnets import FitNets

    conf = OmegaConf.load(f"{kdlight.__path__[0]}/conf/distill/kd.yaml")
    assert conf.temperature == 20.0  # the study's T (its MNIST and CNN runs)
    assert KD().temperature == FitNets().temperature == conf.temperature
    assert KD().alpha == conf.alpha == 0.9
