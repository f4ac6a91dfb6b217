"""FitNets: feature hooks, the regressor, the two stages and what each trains."""

from __future__ import annotations

import functools

import pytest
import torch
from torch import nn

from kdlight.errors import ConfigError
from kdlight.losses import HintonKD, hint_loss
from kdlight.models.cnn import CNN5
from kdlight.models.mlp import MLP
from kdlight.models.resnet import ResNet
from kdlight.modules.fitnets import FitNetsModule, HintRegressor, capture, features

pytestmark = pytest.mark.filterwarnings("ignore:.*self.trainer. reference is not registered")
ADAM = functools.partial(torch.optim.Adam, lr=1e-2)
LOWER = ("conv1", "bn1", "conv2", "bn2")  # CNN5 up to the guided layer bn2
UPPER = ("conv3", "bn3", "fc1", "fcbn1", "fc2")


def _batch(n=2):
    torch.manual_seed(0)
    return {
        "x": torch.randn(n, 3, 32, 32),
        "y": torch.randint(0, 10, (n,)),
        "idx": torch.arange(n),
        "split": "train",
    }


def _fitnets(hint_epochs=2, guided="bn2", hint="layer2", **kw):
    torch.manual_seed(0)
    teacher, student = ResNet(20), CNN5(dropout=0.0)  # no dropout: losses are reproducible
    module = FitNetsModule(
        student, teacher, HintonKD(0.9, 4.0), 10, ADAM,
        hint_layer=hint, guided_layer=guided, hint_epochs=hint_epochs, **kw,
    )  # fmt: skip
    module.build_regressor(torch.zeros(2, 3, 32, 32))
    module.train()
    return module, teacher, student


def _at_epoch(monkeypatch, epoch):
    monkeypatch.setattr(FitNetsModule, "current_epoch", property(lambda self: epoch))


def test_hooks_capture_the_named_layers_shapes():
    x = torch.zeros(2, 3, 32, 32)
    assert features(ResNet(20).eval(), "layer2", x).shape == (2, 32, 16, 16)
    assert features(CNN5().eval(), "bn2", x).shape == (2, 64, 16, 16)
    assert features(MLP(784, (800, 800)).eval(), "layers.3", torch.zeros(2, 1, 28, 28)).shape == (
        2,
        800,
    )


def test_capture_without_stop_runs_the_whole_forward_and_keeps_the_layer_output():
    net = MLP(
        4, (3,)
    ).eval()  # Linear -> ReLU(inplace) -> Linear: the capture must survive the ReLU
    x = torch.tensor([[-5.0, -5.0, -5.0, -5.0]])
    with capture(net, "layers.1") as box:
        out = net(x)
    assert out.shape == (1, 10)
    assert torch.equal(box["out"], net.layers[1](x.flatten(1)))


def test_regressor_is_a_conv_sized_by_a_dummy_forward():
    module, _, _ = _fitnets()
    conv = module.regressor.proj
    assert isinstance(conv, nn.Conv2d)
    assert (conv.in_channels, conv.out_channels, conv.kernel_size) == (64, 32, (1, 1))
    module3, _, _ = _fitnets(regressor_kernel=3)
    assert module3.regressor.proj.kernel_size == (3, 3) and module3.regressor.proj.padding == (1, 1)


@pytest.mark.parametrize(
    ("student_shape", "teacher_shape", "size"),
    [
        ((32, 32, 32), (64, 8, 8), (8, 8)),
        ((128, 4, 4), (16, 32, 32), (4, 4)),
        ((64, 16, 16), (32, 16, 16), (16, 16)),
    ],
)
def test_spatial_mismatch_pools_the_larger_map(student_shape, teacher_shape, size):
    reg = HintRegressor(student_shape, teacher_shape, kernel_size=3)
    s, t = torch.randn(2, *student_shape), torch.randn(2, *teacher_shape)
    assert reg(s).shape == reg.target(t).shape == (2, teacher_shape[0], *size)
    if teacher_shape[1:] == size:
        assert torch.equal(reg.target(t), t)  # the smaller map is never resampled


def test_flat_features_use_a_linear_regressor():
    reg = HintRegressor((800,), (64, 4, 4))
    assert (
        isinstance(reg.proj, nn.Linear)
        and reg.proj.in_features == 800
        and reg.proj.out_features == 1024
    )
    assert reg(torch.randn(3, 800)).shape == reg.target(torch.randn(3, 64, 4, 4)).shape == (3, 1024)


def test_regressor_is_in_the_optimizer_and_the_teacher_is_not():
    module, teacher, student = _fitnets()
    opt = module.configure_optimizers()
    in_opt = {id(p) for g in opt.param_groups for p in g["params"]}
    expected = {id(p) for p in student.parameters()} | {
        id(p) for p in module.regressor.parameters()
    }
    assert in_opt == expected
    assert not in_opt & {id(p) for p in teacher.parameters()}


def test_stage_switches_at_hint_epochs(monkeypatch):
    module, teacher, student = _fitnets(hint_epochs=2)
    b = _batch()
    for epoch, stage1 in ((1, True), (2, False)):
        _at_epoch(monkeypatch, epoch)
        assert module.in_hint_stage() is stage1
        loss = module.training_step(b, 0)
        with torch.no_grad():
            if stage1:
                t = features(teacher, "layer2", b["x"])
                expected = hint_loss(module.regressor(features(student, "bn2", b["x"])), t)
            else:
                expected = HintonKD(0.9, 4.0)(student(b["x"]), teacher(b["x"]), b["y"])["loss"]
        assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def _grads(module, batch):
    module.zero_grad(set_to_none=True)
    module.training_step(batch, 0).backward()
    student = module.student
    return {n: p.grad for n, p in student.named_parameters()}


def test_stage1_trains_only_the_lower_student_and_the_regressor(monkeypatch):
    module, teacher, _ = _fitnets()
    _at_epoch(monkeypatch, 0)
    grads = _grads(module, _batch())
    for name, g in grads.items():
        if name.split(".")[0] in LOWER:
            assert g is not None and g.abs().sum() > 0, name
        else:
            assert name.split(".")[0] in UPPER and g is None, name
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in module.regressor.parameters())
    assert all(p.grad is None for p in teacher.parameters())


def test_stage2_trains_the_whole_student_and_not_the_regressor(monkeypatch):
    module, _, _ = _fitnets()
    _at_epoch(monkeypatch, 2)
    grads = _grads(module, _batch())
    assert all(g is not None and g.abs().sum() > 0 for g in grads.values())
    assert all(p.grad is None for p in module.regressor.parameters())


def test_stage1_leaves_the_upper_layers_and_the_teacher_untouched(monkeypatch):
    module, teacher, student = _fitnets()
    teacher_before = {k: v.clone() for k, v in teacher.state_dict().items()}
    upper_before = {
        k: v.clone() for k, v in student.state_dict().items() if k.split(".")[0] in UPPER
    }
    lower_before = student.bn2.running_mean.clone()
    opt = module.configure_optimizers()
    _at_epoch(monkeypatch, 0)
    for _ in range(2):
        opt.zero_grad(set_to_none=True)
        module.training_step(_batch(), 0).backward()
        opt.step()
    assert not teacher.training and not any(m.training for m in teacher.modules())
    assert all(torch.equal(teacher_before[k], v) for k, v in teacher.state_dict().items())
    # the forward stops at bn2: the head's weights and BatchNorm statistics do not move
    assert all(
        torch.equal(upper_before[k], v)
        for k, v in student.state_dict().items()
        if k in upper_before
    )
    assert not torch.equal(lower_before, student.bn2.running_mean)


def test_unknown_layer_names_fail_early_with_the_valid_names():
    with pytest.raises(ConfigError, match="'layer9'.*layer2"):
        FitNetsModule(
            CNN5(), ResNet(20), HintonKD(), 10, ADAM, hint_layer="layer9", guided_layer="bn2"
        )
    with pytest.raises(ConfigError, match="'bn9'"):
        FitNetsModule(
            CNN5(), ResNet(20), HintonKD(), 10, ADAM, hint_layer="layer2", guided_layer="bn9"
        )
    with pytest.raises(ConfigError, match="hint_epochs=-1"):
        FitNetsModule(
            CNN5(),
            ResNet(20),
            HintonKD(),
            10,
            ADAM,
            hint_layer="layer2",
            guided_layer="bn2",
            hint_epochs=-1,
        )
    with pytest.raises(ConfigError, match="regressor_kernel=2"):
        HintRegressor((4, 2, 2), (4, 2, 2), kernel_size=2)
