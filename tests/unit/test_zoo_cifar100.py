"""The CIFAR-100 zoo of RepDistiller/mdistiller: exact parameter counts, shapes, gradients, names."""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from torch import nn

from kdlight import models
from kdlight.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = json.loads(
    (Path(__file__).parent / "data" / "golden_param_names_repdistiller.json").read_text()
)

# zoo name (= conf/model/<name>.yaml) -> (factory, exact parameter count for 100 classes);
# the counts are those of RepDistiller's models (issue 14).
ZOO100: dict[str, tuple[Callable[..., nn.Module], int]] = {
    "resnet8": (models.resnet8, 83_892),
    "resnet14": (models.resnet14, 181_108),
    "resnet20": (models.resnet20, 278_324),
    "resnet32": (models.resnet32, 472_756),
    "resnet44": (models.resnet44, 667_188),
    "resnet56": (models.resnet56, 861_620),
    "resnet110": (models.resnet110, 1_736_564),
    "resnet8x4": (models.resnet8x4, 1_233_540),
    "resnet32x4": (models.resnet32x4, 7_433_860),
    "resnet50_cifar": (models.ResNet50Cifar, 23_705_252),
    "wrn_16_1": (models.wrn_16_1, 180_916),
    "wrn_16_2": (models.wrn_16_2, 703_284),
    "wrn_40_1": (models.wrn_40_1, 569_780),
    "wrn_40_2": (models.wrn_40_2, 2_255_156),
    "vgg8": (models.vgg8, 3_965_028),
    "vgg11": (models.vgg11, 9_277_284),
    "vgg13": (models.vgg13, 9_462_180),
    "vgg16": (models.vgg16, 14_774_436),
    "vgg19": (models.vgg19, 20_086_692),
    "mobilenetv2": (models.mobile_half, 812_836),
    "shufflev1": (models.shufflev1, 949_258),
    "shufflev2": (models.shufflev2, 1_355_528),
}


@functools.cache
def build(name: str) -> nn.Module:
    torch.manual_seed(0)
    return ZOO100[name][0](num_classes=100)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", list(ZOO100))
def test_parameter_count_at_100_classes_is_exact(name):
    assert n_params(build(name)) == ZOO100[name][1]


@pytest.mark.parametrize("name", list(ZOO100))
def test_train_mode_forward_gives_batch_by_100_logits(name):
    model = build(name).train()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 100)  # plain logits: no (features, logits) tuple as in RepDistiller


@pytest.mark.parametrize("name", list(ZOO100))
def test_every_trainable_parameter_gets_a_gradient(name):
    # Eval mode: with batch statistics a conv bias followed by BN has an exactly-zero gradient.
    model = build(name).eval()
    model.zero_grad(set_to_none=True)
    out = model(torch.randn(2, 3, 32, 32))
    assert torch.isfinite(out).all()
    out.square().sum().backward()
    no_grad = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    zero = [n for n, p in model.named_parameters() if p.grad is not None and not p.grad.any()]
    model.zero_grad(set_to_none=True)
    assert not no_grad, f"parameters without gradient: {no_grad[:5]}"
    assert not zero, f"parameters with an all-zero gradient: {zero[:5]}"


@pytest.mark.parametrize("name", list(ZOO100))
def test_state_dict_names_and_shapes_are_repdistillers(name):
    """Same ordered names and shapes as RepDistiller's model (golden file written from its code)."""
    golden = GOLDEN[name]
    state = build(name).state_dict()
    if "entries" in golden:
        ours = {k: list(v.shape) for k, v in state.items()}
        assert ours == golden["entries"], golden["source"]
    lines = [f"{k}:{list(v.shape)}" for k, v in state.items()]
    assert len(lines) == golden["n_entries"], golden["source"]
    assert hashlib.sha256("\n".join(lines).encode()).hexdigest() == golden["sha256"], name


@pytest.mark.parametrize("name", list(ZOO100))
def test_zoo_config_builds_its_network_for_the_datas_classes(name):
    with initialize_config_dir(
        config_dir=str(ROOT / "src" / "kdlight" / "conf"), version_base="1.3"
    ):
        cfg = compose(config_name=f"model/{name}", overrides=["+data.num_classes=100"])
    model = instantiate(cfg.model)
    assert n_params(model) == ZOO100[name][1]
    assert model.arch == name  # the name a checkpoint error reports


def test_resnet8x4_at_10_classes_only_changes_the_classifier():
    # fc: 256 -> classes, so 90 fewer outputs remove 90 * 257 parameters
    assert n_params(models.resnet8x4(num_classes=10)) == 1_233_540 - 90 * 257


@pytest.mark.parametrize(
    ("factory", "match"),
    [
        (lambda: models.VGG(depth=12), "depth=12"),
        (lambda: models.ResNet(depth=8, widths=(16, 32)), "widths=\\[16, 32\\]"),
        (lambda: models.ShuffleNetV2(net_size=3), "net_size=3"),
        (lambda: models.MobileNetV2(expand_ratio=0), "expand_ratio=0"),
    ],
)
def test_invalid_zoo_arguments_raise_config_error(factory, match):
    with pytest.raises(ConfigError, match=match):
        factory()
