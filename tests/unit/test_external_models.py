"""Networks from libraries: model=torchvision / model=timm (random weights; nothing is downloaded)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kdlight.errors import ConfigError
from kdlight.models.external import InputResize, timm_model, torchvision_model
from kdlight.run.hparams import hparams_of
from kdlight.run.read import NETWORK_TARGETS, safe_instantiate


def _timm():
    return pytest.importorskip("timm")


def _every_parameter_learns(net: torch.nn.Module, size: int = 64) -> torch.Tensor:
    net.train()
    out = net(torch.randn(2, 3, size, size))
    out.logsumexp(dim=1).sum().backward()
    missing = [n for n, p in net.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, missing[:5]
    return out


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2"])
def test_torchvision_networks_take_64px_images_and_learn(name):
    torch.manual_seed(0)
    out = _every_parameter_learns(torchvision_model(name, num_classes=5))
    assert out.shape == (2, 5)


def test_timm_network_takes_64px_images_and_learns():
    _timm()
    torch.manual_seed(0)
    out = _every_parameter_learns(timm_model("resnet18", num_classes=7))
    assert out.shape == (2, 7)


def test_the_library_names_are_kept():
    """torchvision's own parameter and layer names: its checkpoints and layer taps fit."""
    import torchvision

    net = torchvision_model("resnet18", num_classes=10)
    ref = torchvision.models.resnet18(num_classes=10)
    assert list(net.state_dict()) == list(ref.state_dict())
    assert {"layer1", "layer4", "fc"} <= dict(net.named_modules()).keys()


@pytest.mark.parametrize(
    ("factory", "name", "close"),
    [
        (torchvision_model, "resnet19", "resnet18"),
        (torchvision_model, "mobilenetv2", "mobilenet_v2"),
        (timm_model, "resnet19", "resnet18"),
    ],
)
def test_an_unknown_name_lists_close_valid_names(factory, name, close):
    if factory is timm_model:
        _timm()
    with pytest.raises(ConfigError, match=rf"has no model named '{name}' \(close names: .*{close}"):
        factory(name, num_classes=10)


def test_torchvision_weights_are_checked_before_any_download():
    with pytest.raises(
        ConfigError, match=r"weights='IMAGENET1K_V9' is not a weight set.*IMAGENET1K_V1"
    ):
        torchvision_model("resnet18", num_classes=1000, weights="IMAGENET1K_V9")
    with pytest.raises(ConfigError, match=r"predict 1000 classes but the data has num_classes=10"):
        torchvision_model("resnet18", num_classes=10, weights="ResNet18_Weights.IMAGENET1K_V1")


def test_bad_arguments_are_config_errors():
    with pytest.raises(ConfigError, match="num_classes=0 is invalid"):
        torchvision_model("resnet18", num_classes=0)
    with pytest.raises(ConfigError, match="input_size=0 is invalid"):
        torchvision_model("resnet18", num_classes=10, input_size=0)
    _timm()
    with pytest.raises(ConfigError, match="does not pass checkpoint_path to timm"):
        timm_model("resnet18", num_classes=10, checkpoint_path="/tmp/x.pth")


def test_input_size_resizes_the_input_and_keeps_the_names():
    torch.manual_seed(0)
    plain = torchvision_model("resnet18", num_classes=5).eval()
    net = torchvision_model("resnet18", num_classes=5, input_size=96).eval()
    net.load_state_dict(plain.state_dict())  # a checkpoint of the plain network fits as is
    seen = []
    net.conv1.register_forward_pre_hook(lambda m, a: seen.append(tuple(a[0].shape)))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        out = net(x)
        ref = plain(F.interpolate(x, size=(96, 96), mode="bilinear", align_corners=False))
    assert seen == [(2, 3, 96, 96)]
    assert torch.allclose(out, ref, atol=1e-6)
    assert list(net.state_dict()) == list(plain.state_dict())
    assert isinstance(net.input_resize, InputResize) and "size=96" in repr(net)
    same = torch.randn(1, 3, 96, 96)
    assert net.input_resize(same) is same


def test_run_folders_may_build_these_factories():
    node = {
        "_target_": "kdlight.models.external.torchvision_model",
        "name": "resnet18",
        "num_classes": 3,
        "input_size": 32,
    }
    net = safe_instantiate(node, NETWORK_TARGETS, "teacher", "a run folder")
    assert net.eval()(torch.zeros(1, 3, 16, 16)).shape == (1, 3)


def test_the_names_in_hparams(make_cfg):
    _timm()
    cfg = make_cfg(
        "data=tiny_imagenet",
        "model@teacher=torchvision",
        "teacher.name=resnet34",
        "model@student=timm",
        "student.name=resnet18",
        "distill=kd",
    )
    hp = hparams_of(cfg)
    assert (hp["teacher"], hp["student"]) == ("torchvision:resnet34", "timm:resnet18")
    assert hp["data"] == "tiny_imagenet"
    assert cfg.teacher.num_classes == cfg.student.num_classes == 200


def test_hparams_say_whether_the_store_served_the_teacher(make_cfg):
    assert hparams_of(make_cfg("distill=kd"))["teacher_store"] is True
    assert (
        hparams_of(make_cfg("distill=kd", "teacher_store.enabled=false"))["teacher_store"] is False
    )
    assert "teacher_store" not in hparams_of(make_cfg())  # no teacher, no store


def test_library_networks_declare_their_stages():
    from kdlight.methods.features import stage_layers
    from kdlight.methods.taps import tapped_forward

    tv = torchvision_model("resnet18", num_classes=10).eval()
    assert stage_layers(tv) == ("layer1", "layer2", "layer3", "layer4")
    assert [d["num_chs"] for d in tv.feature_info] == [64, 128, 256, 512]
    with torch.no_grad():
        _, feats = tapped_forward(tv, torch.randn(1, 3, 64, 64), stage_layers(tv))
    assert [tuple(feats[d["module"]].shape[1:]) for d in tv.feature_info] == [
        (d["num_chs"], 64 // d["reduction"], 64 // d["reduction"]) for d in tv.feature_info
    ]
    assert not hasattr(torchvision_model("mobilenet_v2", num_classes=10), "feature_info")
    pytest.importorskip("timm")
    tm = timm_model("resnet18", num_classes=10)
    assert stage_layers(tm) == ("layer1", "layer2", "layer3", "layer4")  # timm's stem entry dropped
