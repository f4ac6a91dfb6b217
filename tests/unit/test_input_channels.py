"""torchvision networks on grey-scale data: the first convolution adapted to the data's channels."""

from __future__ import annotations

import pytest
import torch

from kdlight.errors import ConfigError
from kdlight.models.external import adapt_input_channels, torchvision_model


def test_a_grey_image_gives_what_the_rgb_network_gives_on_its_three_copies():
    torch.manual_seed(0)
    rgb = torchvision_model("resnet18", num_classes=10).eval()
    grey = adapt_input_channels(torchvision_model("resnet18", num_classes=10).eval(), 1)
    grey.load_state_dict(
        {
            k: (v.sum(1, keepdim=True) if k == "conv1.weight" else v)
            for k, v in rgb.state_dict().items()
        }
    )
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        assert torch.allclose(grey(x), rgb(x.expand(-1, 3, -1, -1)), atol=1e-4)
    assert grey.conv1.weight.shape == (64, 1, 7, 7)


def test_in_chans_builds_the_adapted_network_and_keeps_its_summed_kernel():
    torch.manual_seed(1)
    net = torchvision_model("resnet18", num_classes=10, in_chans=1)
    assert net.conv1.in_channels == 1
    assert net(torch.randn(2, 1, 32, 32)).shape == (2, 10)
    assert torchvision_model("resnet18", num_classes=10, in_chans=3).conv1.in_channels == 3


def test_a_network_without_an_rgb_convolution_is_one_sentence():
    with pytest.raises(ConfigError, match="no 3-channel input convolution to adapt to in_chans=1"):
        adapt_input_channels(torch.nn.Linear(3, 3), 1)
