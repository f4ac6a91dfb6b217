"""Channels-last batches get channels-last convolution weights (run.assemble.memory_format)."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from kdlight.models.cnn import CNN5
from kdlight.models.mlp import MLP
from kdlight.run.assemble import memory_format


def _cl(t: torch.Tensor) -> bool:
    return t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous()


def test_conv_weights_follow_channels_last_batches_and_values_stay():
    torch.manual_seed(0)
    net = CNN5(num_classes=10)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    out = memory_format(net, SimpleNamespace(channels_last=True))
    assert out is net
    convs = [p for p in net.parameters() if p.dim() == 4]
    assert convs and all(_cl(p) for p in convs)
    assert all(p.is_contiguous() for p in net.parameters() if p.dim() != 4)
    after = net.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    x = torch.randn(4, 3, 32, 32)
    ref = CNN5(num_classes=10)
    ref.load_state_dict(before)  # loads into NCHW weights: the same function
    net.eval(), ref.eval()
    torch.testing.assert_close(net(x.contiguous(memory_format=torch.channels_last)), ref(x))


def test_nchw_batches_and_mlps_are_left_alone():
    net = CNN5(num_classes=10)
    memory_format(net, SimpleNamespace(channels_last=False))
    assert all(p.is_contiguous() for p in net.parameters())
    mlp = MLP(in_features=784, hidden=[16], num_classes=10)
    memory_format(mlp, SimpleNamespace(channels_last=True))
    assert all(p.is_contiguous() for p in mlp.parameters())
    memory_format(net, object())  # a data module without the option: NCHW
    assert all(p.is_contiguous() for p in net.parameters())
