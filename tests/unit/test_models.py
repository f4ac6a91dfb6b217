"""The model zoo: exact parameter counts, output shapes, gradients, names and configs."""

from __future__ import annotations

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
GOLDEN = json.loads((Path(__file__).parent / "data" / "golden_param_names.json").read_text())

# name -> (factory, exact parameter count for 10 classes, input shape); counts from DESIGN.md §3.
ZOO: dict[str, tuple[Callable[..., nn.Module], int, tuple[int, ...]]] = {
    "mlp_teacher": (
        lambda **kw: models.MLP(784, (1200, 1200), dropout=0.8, **kw),
        2_395_210,
        (1, 28, 28),
    ),
    "mlp_student": (lambda **kw: models.MLP(784, (800, 800), **kw), 1_276_810, (1, 28, 28)),
    "cnn5": (models.CNN5, 357_514, (3, 32, 32)),
    "resnet18": (models.ResNet18, 11_173_962, (3, 32, 32)),
    "resnet20": (models.resnet20, 272_474, (3, 32, 32)),
    "resnet56": (models.resnet56, 855_770, (3, 32, 32)),
    "resnet110": (models.resnet110, 1_730_714, (3, 32, 32)),
    "wrn_28_10": (models.wrn_28_10, 36_479_194, (3, 32, 32)),
    "preresnet110": (models.preresnet110, 1_730_522, (3, 32, 32)),
    "preresnet164": (models.preresnet164, 1_703_258, (3, 32, 32)),
    "densenet_bc_100": (models.densenet_bc_100, 769_162, (3, 32, 32)),
    "resnext29_8x64d": (models.resnext29_8x64d, 34_426_698, (3, 32, 32)),
}

_BUILT: dict[str, nn.Module] = {}


def build(name: str) -> nn.Module:
    """Build each zoo model once per session (the 35M-parameter nets take ~0.4 s to build)."""
    if name not in _BUILT:
        torch.manual_seed(0)
        _BUILT[name] = ZOO[name][0]()
    return _BUILT[name]


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", list(ZOO))
def test_parameter_count_is_exact(name):
    assert n_params(build(name)) == ZOO[name][1]


@pytest.mark.parametrize("name", list(ZOO))
def test_train_mode_forward_gives_batch_by_classes(name):
    model = build(name).train()
    with torch.no_grad():
        assert model(torch.randn(2, *ZOO[name][2])).shape == (2, 10)


@pytest.mark.parametrize("name", list(ZOO))
def test_every_trainable_parameter_gets_a_gradient(name):
    # Eval mode: with batch statistics a conv bias followed by BN has an exactly-zero
    # gradient, which would hide a parameter that is really disconnected.
    model = build(name).eval()
    model.zero_grad(set_to_none=True)
    out = model(torch.randn(2, *ZOO[name][2]))
    assert out.shape == (2, 10)
    assert torch.isfinite(out).all()
    out.square().sum().backward()
    no_grad = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    zero = [n for n, p in model.named_parameters() if p.grad is not None and not p.grad.any()]
    assert not no_grad, f"parameters without gradient: {no_grad[:5]}"
    assert not zero, f"parameters with an all-zero gradient: {zero[:5]}"
    model.zero_grad(set_to_none=True)


# One small member of each architecture: the classifier code is the same at every size.
SMALL = {
    "CNN5": lambda **kw: models.CNN5(**kw),
    "ResNet18": lambda **kw: models.ResNet18(**kw),
    "ResNet": lambda **kw: models.ResNet(depth=8, **kw),
    "PreResNet-bottleneck": lambda **kw: models.PreResNet(depth=11, block="bottleneck", **kw),
    "WideResNet": lambda **kw: models.WideResNet(depth=10, widen_factor=1, **kw),
    "DenseNet-BC": lambda **kw: models.DenseNet(depth=10, growth_rate=4, **kw),
    "CifarResNeXt": lambda **kw: models.CifarResNeXt(depth=11, cardinality=2, widen_factor=1, **kw),
}


@pytest.mark.parametrize("name", list(SMALL))
def test_num_classes_sets_the_classifier_width(name):
    model = SMALL[name](num_classes=100).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 100)


@pytest.mark.parametrize("name", sorted(k for k in GOLDEN if not k.startswith("_")))
def test_parameter_names_match_the_original_code(name):
    """Names and shapes transcribed from the original files load 1:1 into ours."""
    state = build(name).state_dict()
    expected = GOLDEN[name]["params"]
    missing = [k for k in expected if k not in state]
    assert not missing, f"{name}: names of {GOLDEN[name]['source']} not found: {missing}"
    wrong = {k: (list(state[k].shape), v) for k, v in expected.items() if list(state[k].shape) != v}
    assert not wrong, f"{name}: shapes differ (ours, original): {wrong}"


def test_cnn5_applies_bn_then_pool_then_relu_like_the_kd_project():
    """The original Net: relu(max_pool(bn(conv(x)))) x 3, then dropout(relu(fcbn1(fc1)))."""
    torch.manual_seed(1)
    model = models.CNN5().eval()
    for bn in (model.bn1, model.bn2, model.bn3, model.fcbn1):
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 2.0)
    x = torch.randn(2, 3, 32, 32)
    s = x
    for conv, bn in ((model.conv1, model.bn1), (model.conv2, model.bn2), (model.conv3, model.bn3)):
        s = torch.relu(torch.nn.functional.max_pool2d(bn(conv(s)), 2))
    s = torch.relu(model.fcbn1(model.fc1(s.view(-1, 4 * 4 * 128))))
    with torch.no_grad():
        assert torch.allclose(model(x), model.fc2(s), atol=1e-6)


def test_cnn5_dropout_is_configurable():
    assert models.CNN5(dropout=0.0).dropout.p == 0.0
    assert models.CNN5().dropout.p == 0.5


@pytest.mark.parametrize(
    ("factory", "match"),
    [
        (lambda: models.ResNet(depth=21), "depth=21"),
        (lambda: models.ResNet(depth=2), "depth=2"),
        (lambda: models.ResNet(depth=20, block="wide"), "block='wide'"),
        (lambda: models.PreResNet(depth=50, block="bottleneck"), "9n\\+2"),
        (lambda: models.PreResNet(depth=29, block="basic"), "6n\\+2"),
        (lambda: models.WideResNet(depth=27), "6n\\+4"),
        (lambda: models.WideResNet(dropout=1.0), "dropout=1.0"),
        (lambda: models.DenseNet(depth=101), "depth=101"),
        (lambda: models.DenseNet(compression=0.0), "compression=0.0"),
        (lambda: models.CifarResNeXt(depth=30), "9n\\+2"),
        (lambda: models.CNN5(dropout=-0.1), "dropout=-0.1"),
    ],
)
def test_invalid_architecture_arguments_raise_config_error(factory, match):
    with pytest.raises(ConfigError, match=match):
        factory()


# config file -> (class, parameter count for 10 classes)
CONFIGS = {
    "cnn5": (models.CNN5, 357_514),
    "cnn5_nodropout": (models.CNN5, 357_514),
    "resnet18": (models.ResNet18, 11_173_962),
    "resnet20": (models.ResNet, 272_474),
    "resnet56": (models.ResNet, 855_770),
    "resnet110": (models.ResNet, 1_730_714),
    "wrn_28_10": (models.WideResNet, 36_479_194),
    "preresnet110": (models.PreResNet, 1_730_522),
    "preresnet164": (models.PreResNet, 1_703_258),
    "densenet_bc_100": (models.DenseNet, 769_162),
    "resnext29_8x64d": (models.CifarResNeXt, 34_426_698),
}


def test_every_cifar_model_config_builds_the_named_network():
    with initialize_config_dir(
        config_dir=str(ROOT / "src" / "kdlight" / "conf"), version_base="1.3"
    ):
        for name, (cls, count) in CONFIGS.items():
            cfg = compose(config_name=f"model/{name}", overrides=["+data.num_classes=10"])
            model = instantiate(cfg.model)
            assert type(model) is cls, name
            assert n_params(model) == count, name
        nodrop = instantiate(
            compose(config_name="model/cnn5_nodropout", overrides=["+data.num_classes=10"]).model
        )
        assert nodrop.dropout.p == 0.0
        hundred = compose(config_name="model/resnet20", overrides=["+data.num_classes=100"])
        assert instantiate(hundred.model).fc.out_features == 100


# ---- stage names (feature_info), issue 30/31 ------------------------------------------------
STAGED = {  # factory -> whether every stage map is post-activation (>= 0)
    "mlp_student": (lambda: models.MLP(784, (800, 800)), True),
    "cnn5": (models.CNN5, True),
    "resnet20": (models.resnet20, True),
    "resnet8x4": (models.resnet8x4, True),
    "resnet18": (models.ResNet18, True),
    "resnet50_cifar": (models.ResNet50Cifar, True),
    "resnext": (lambda: models.CifarResNeXt(depth=11, cardinality=2, widen_factor=1), True),
    "vgg8": (models.vgg8, True),
    "vgg13": (models.vgg13, True),
    "shufflev1": (models.shufflev1, True),
    # pre-activation nets end a stage on the residual stream; linear bottlenecks, on no ReLU
    "preresnet110": (models.preresnet110, False),
    "wrn_16_2": (models.wrn_16_2, False),
    "densenet": (lambda: models.DenseNet(depth=22), False),
    "mobile_half": (models.mobile_half, False),
    "shufflev2": (models.shufflev2, False),
}


@pytest.mark.parametrize("name", list(STAGED))
def test_every_zoo_network_declares_its_stages(name):
    from kdlight.methods.taps import tapped_forward

    factory, post_activation = STAGED[name]
    net = factory().eval()
    info = net.feature_info
    assert info and all(set(d) == {"module", "num_chs", "reduction"} for d in info)
    x = torch.randn(2, 1, 28, 28) if name.startswith("mlp") else torch.randn(2, 3, 32, 32)
    modules = dict(net.named_modules())
    calls = {d["module"]: 0 for d in info}
    handles = [
        modules[n].register_forward_hook(lambda m, i, o, n=n: calls.__setitem__(n, calls[n] + 1))
        for n in calls
    ]
    with torch.no_grad():
        _, feats = tapped_forward(net, x, [d["module"] for d in info])
    for h in handles:
        h.remove()
    assert all(c == 1 for c in calls.values()), calls  # a shared module would be tapped twice
    for d in info:
        f = feats[d["module"]]
        assert f.shape[1] == d["num_chs"], d
        if f.dim() == 4:
            assert f.shape[-1] * d["reduction"] == 32, d
        if post_activation:
            assert bool((f >= 0).all()), d
    assert [d["reduction"] for d in info] == sorted(d["reduction"] for d in info)


def test_cnn5_penultimate_feature_is_taken_before_dropout():
    from kdlight.methods.taps import tapped_forward

    torch.manual_seed(0)
    net = models.CNN5(dropout=0.5).train()
    assert net.penultimate == "relu4"
    x = torch.randn(4, 3, 32, 32)
    _, feats = tapped_forward(net, x, ["relu4", "fc2:in"])
    with torch.no_grad():  # the original Net's fc path, by hand: relu(fcbn1(fc1(flatten)))
        s = x
        for conv, bn in ((net.conv1, net.bn1), (net.conv2, net.bn2), (net.conv3, net.bn3)):
            s = torch.relu(torch.max_pool2d(bn(conv(s)), 2))
        clean = torch.relu(net.fcbn1(net.fc1(s.flatten(1))))
    assert torch.allclose(feats["relu4"], clean, atol=1e-5)
    assert not torch.allclose(feats["fc2:in"], clean)  # after dropout: zeros and a 2x scale
