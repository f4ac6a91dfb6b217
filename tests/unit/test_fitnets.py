"""FitNets: feature hooks, the regressor, the two stages and what each trains."""

from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kdlight.engine import DistillationModule
from kdlight.errors import ConfigError
from kdlight.methods.base import RAW
from kdlight.methods.fitnets import FitNets, HintRegressor, hint_loss
from kdlight.methods.taps import features, taps
from kdlight.models.cnn import CNN5
from kdlight.models.mlp import MLP
from kdlight.models.resnet import ResNet

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
    method = FitNets(0.9, 4.0, hint_layer=hint, guided_layer=guided, hint_epochs=hint_epochs, **kw)
    module = DistillationModule(student, teacher, method, 10, ADAM)
    module.build_method(torch.zeros(2, 3, 32, 32))
    module.train()
    return module, teacher, student


def _at_epoch(monkeypatch, epoch):
    monkeypatch.setattr(DistillationModule, "current_epoch", property(lambda self: epoch))


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
    with taps(net, ["layers.1"]) as box:
        out = net(x)
    assert out.shape == (1, 10)
    assert torch.equal(box["layers.1"], net.layers[1](x.flatten(1)))


def test_regressor_is_a_conv_sized_by_a_dummy_forward():
    module, _, _ = _fitnets()
    conv = module.method.regressor.proj
    assert isinstance(conv, nn.Conv2d)
    assert (conv.in_channels, conv.out_channels, conv.kernel_size) == (64, 32, (1, 1))
    module3, _, _ = _fitnets(regressor_kernel=3)
    assert module3.method.regressor.proj.kernel_size == (
        3,
        3,
    ) and module3.method.regressor.proj.padding == (1, 1)


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
        id(p) for p in module.method.regressor.parameters()
    }
    assert in_opt == expected
    assert not in_opt & {id(p) for p in teacher.parameters()}


def test_stage_switches_at_hint_epochs(monkeypatch):
    module, teacher, student = _fitnets(hint_epochs=2)
    b = _batch()
    for epoch, stage1 in ((1, True), (2, False)):
        _at_epoch(monkeypatch, epoch)
        assert module.method.in_hint_stage(epoch) is stage1
        loss = module.training_step(b, 0)
        with torch.no_grad():
            if stage1:
                t = features(teacher, "layer2", b["x"])
                expected = hint_loss(module.method.regressor(features(student, "bn2", b["x"])), t)
            else:
                # stage 2 is Hinton KD: 0.9 * T^2 KL(q_t || q_s) + 0.1 CE, T = 4
                q_t = F.softmax(teacher(b["x"]) / 4.0, dim=1)
                s_logits = student(b["x"])
                q_s = F.softmax(s_logits / 4.0, dim=1)
                kl = (q_t * (q_t.log() - q_s.log())).sum(dim=1).mean()
                expected = 0.9 * 16.0 * kl + 0.1 * F.cross_entropy(s_logits, b["y"])
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
    assert all(
        p.grad is not None and p.grad.abs().sum() > 0 for p in module.method.regressor.parameters()
    )
    assert all(p.grad is None for p in teacher.parameters())


def test_stage2_trains_the_whole_student_and_not_the_regressor(monkeypatch):
    module, _, _ = _fitnets()
    _at_epoch(monkeypatch, 2)
    grads = _grads(module, _batch())
    assert all(g is not None and g.abs().sum() > 0 for g in grads.values())
    assert all(p.grad is None for p in module.method.regressor.parameters())


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


def _build(hint="layer2", guided="bn2", **kw):
    method = FitNets(hint_layer=hint, guided_layer=guided, **kw)
    DistillationModule(CNN5(), ResNet(20), method, 10, ADAM).build_method(torch.zeros(2, 3, 32, 32))


def test_unknown_layer_names_fail_early_with_the_valid_names():
    with pytest.raises(ConfigError, match="teacher layer 'layer9'.*layer2"):
        _build(hint="layer9")
    with pytest.raises(ConfigError, match="student layer 'bn9'"):
        _build(guided="bn9")
    with pytest.raises(ConfigError, match="hint_epochs=-1"):
        FitNets(hint_layer="layer2", guided_layer="bn2", hint_epochs=-1)
    with pytest.raises(ConfigError, match="regressor_kernel=2"):
        HintRegressor((4, 2, 2), (4, 2, 2), kernel_size=2)


@pytest.mark.parametrize(
    ("teacher", "student", "hint", "guided"),
    [
        # RepDistiller's --hint_layer 2: the output of the second of the three stages. Issue 31:
        # the stages are post-activation maps (CNN5's relu2, was bn2; an MLP's second hidden
        # ReLU, was its Linear), which the references' ReLU-ended regressor can match.
        (lambda: ResNet(20), lambda: CNN5(), "layer2", "relu2"),
        (lambda: ResNet(56), lambda: ResNet(8), "layer2", "layer2"),
        # MLPs: Flatten, then Linear, ReLU[, Dropout] per hidden layer; the second hidden ReLU
        (
            lambda: MLP(784, (1200, 1200), dropout=0.5),
            lambda: MLP(784, (800, 800)),
            "layers.5",
            "layers.4",
        ),
        (lambda: MLP(784, (64,)), lambda: MLP(784, (32,)), "layers.2", "layers.2"),
    ],
)
def test_auto_layers_are_the_second_stage_of_each_network(teacher, student, hint, guided):
    t, s = teacher(), student()
    method = FitNets()  # hint_layer / guided_layer default to auto
    method.resolve_layers(s, t)
    assert (method.hint_layer, method.guided_layer) == (hint, guided)
    assert method.plan(0).teacher_layers == (hint,) and method.plan(0).student_layers == (guided,)
    assert method.teacher_forms() == {hint: RAW}


def test_auto_on_a_network_without_known_stages_names_the_setting():
    odd = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    with pytest.raises(ConfigError, match="layers=auto does not know the stages of the teacher"):
        FitNets().resolve_layers(CNN5(), odd)


# ---- issue 31: the references' regressor, the one-stage form -------------------------------
def test_default_regressor_is_conv_bn_relu_as_repdistillers_convreg():
    torch.manual_seed(4)
    reg = HintRegressor((8, 4, 4), (6, 4, 4))  # default form
    x = torch.randn(5, 8, 4, 4)
    conv, bn = reg.proj, reg.bn
    assert isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d)
    # ConvReg.forward: relu(bn(conv(x))), BN on the batch's statistics in training mode
    z = F.conv2d(x, conv.weight, conv.bias)
    mean, var = (
        z.mean(dim=(0, 2, 3), keepdim=True),
        z.var(dim=(0, 2, 3), unbiased=False, keepdim=True),
    )
    expected = torch.clamp((z - mean) / torch.sqrt(var + 1e-5), min=0.0)  # BN's weight 1, bias 0
    assert torch.allclose(reg(x), expected, atol=1e-5)
    flat = HintRegressor((800,), (64,))
    assert isinstance(flat.bn, nn.BatchNorm1d) and bool((flat(torch.randn(4, 800)) >= 0).all())


def test_bare_conv_regressor_is_a_named_option():
    reg = HintRegressor((8, 4, 4), (6, 4, 4), form="conv")
    assert reg.bn is None and not reg.relu
    x = torch.randn(2, 8, 4, 4)
    assert torch.equal(reg(x), F.conv2d(x, reg.proj.weight, reg.proj.bias))
    assert HintRegressor((8, 4, 4), (6, 4, 4), relu=True, form="conv").relu
    with pytest.raises(ConfigError, match="regressor='mlp'"):
        HintRegressor((8, 4, 4), (6, 4, 4), form="mlp")
    with pytest.raises(
        ConfigError, match="regressor_relu=false with distill.regressor=conv_bn_relu"
    ):
        FitNets(regressor_relu=False)
    assert FitNets(regressor="conv", regressor_relu=False).regressor_form == "conv"


def test_one_stage_is_ce_plus_100_times_the_hint_every_epoch(monkeypatch):
    torch.manual_seed(0)
    teacher, student = ResNet(20), CNN5(dropout=0.0)
    method = FitNets(
        alpha=None, ce_weight=1.0, kd_weight=0.0, form="one_stage", beta=100.0,
        hint_layer="layer2", guided_layer="relu2",
    )  # fmt: skip
    module = DistillationModule(student, teacher, method, 10, ADAM)
    module.build_method(torch.zeros(2, 3, 32, 32))
    module.train()
    b = _batch(4)
    for epoch in (0, 7):
        plan = method.plan(epoch)
        assert plan.student_layers == ("relu2",) and plan.teacher_layers == ("layer2",)
        assert not plan.stop_early and not plan.teacher_logits  # kd_weight 0: no teacher logits
        _at_epoch(monkeypatch, epoch)
        loss = module.training_step(b, 0)
        with torch.no_grad():
            s = torch.relu(student.bn1(student.conv1(b["x"])))
            s = torch.relu(student.bn2(student.conv2(F.max_pool2d(s, 2))))  # relu2: 64 x 16 x 16
            hint = ((method.regressor(s) - features(teacher, "layer2", b["x"])) ** 2).mean()
            expected = F.cross_entropy(student(b["x"]), b["y"]) + 100.0 * hint
        assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    grads = _grads(module, b)
    assert all(g is not None and g.abs().sum() > 0 for g in grads.values())  # the whole student


def test_one_stage_has_no_hint_stage_and_forms_are_named():
    method = FitNets(form="one_stage", hint_epochs=2, hint_layer="layer2", guided_layer="relu2")
    assert all(not method.plan(e).stop_early for e in (0, 1, 5))  # hint_epochs is two_stage's
    assert method.plan(0).teacher_logits  # alpha 0.9: RepDistiller's FitNet + KD reads logits
    with pytest.raises(ConfigError, match="form='three_stage'"):
        FitNets(form="three_stage")


def test_a_first_stage_as_long_as_training_is_warned_once(caplog):
    """hint_epochs >= max_epochs: the KD stage never runs, said once (not every step)."""
    from kdlight.methods.base import Context
    from kdlight.methods.features import warn_if_first_stage_covers_training

    method = FitNets(hint_epochs=5)
    ctx = Context(None, None, None, torch.arange(2), max_epochs=5)
    with caplog.at_level("WARNING"):
        for _ in range(3):
            warn_if_first_stage_covers_training(method, ctx, "hint_epochs", 5, "the classifier")
    assert [r.getMessage() for r in caplog.records] == [
        "FitNets: hint_epochs=5 >= max_epochs=5, so the classifier is never trained."
    ]
    later = FitNets(hint_epochs=4)
    with caplog.at_level("WARNING"):
        warn_if_first_stage_covers_training(later, ctx, "hint_epochs", 4, "the classifier")
    assert len(caplog.records) == 1  # 4 < 5: the KD stage runs
