"""MobileNetV2 for CIFAR as used by RepDistiller and mdistiller (``mobile_half``: T=6, width 0.5)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kdlight.errors import ConfigError
from kdlight.models.base import stage

#: (expansion t, channels c, repeats n, first stride s) per stage; t=None means "expand_ratio".
STAGES = (
    (1, 16, 1, 1),
    (None, 24, 2, 1),
    (None, 32, 3, 2),
    (None, 64, 4, 2),
    (None, 96, 3, 1),
    (None, 160, 3, 2),
    (None, 320, 1, 1),
)


def _conv_bn_relu(inp: int, oup: int, kernel: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(inp, oup, kernel, stride, kernel // 2, bias=False),
        nn.BatchNorm2d(oup),
        nn.ReLU(inplace=True),
    )


class InvertedResidual(nn.Module):
    """1x1 expand (x t) -> BN-ReLU -> 3x3 depthwise (stride) -> BN-ReLU -> 1x1 project -> BN.

    Held in ``self.conv`` (indices 0-7). Adds the input when stride is 1 and the widths match.
    The expansion conv is kept even for t = 1, as in RepDistiller's code.
    """

    def __init__(self, inp: int, oup: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = inp * expand_ratio
        self.use_res_connect = stride == 1 and inp == oup
        self.conv = nn.Sequential(
            nn.Conv2d(inp, hidden, 1, 1, 0, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, oup, 1, 1, 0, bias=False),
            nn.BatchNorm2d(oup),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class MobileNetV2(nn.Module):
    """MobileNetV2 (Sandler et al., 2018) for 32x32 inputs, RepDistiller's variant.

    Stem: 3x3 conv stride 2 (``conv1``, 32 x width ch); seven stages of inverted residuals
    (``blocks.0..6``, :data:`STAGES`, channels x width); 1x1 conv to 1280 (``conv2``); global
    average pool; ``classifier.0`` (linear). ``mobile_half`` (expand 6, width 0.5) has 812,836
    parameters for 100 classes. Parameter names are those of HobbitLong/RepDistiller
    ``models/mobilenetv2.py`` (also mdistiller's), so its checkpoints load directly.
    """

    def __init__(
        self, num_classes: int = 10, expand_ratio: int = 6, width_mult: float = 0.5
    ) -> None:
        super().__init__()
        if int(expand_ratio) < 1 or float(width_mult) <= 0:
            raise ConfigError(
                f"MobileNetV2 expand_ratio={expand_ratio} / width_mult={width_mult} are "
                f"invalid; expand_ratio must be >= 1 and width_mult > 0."
            )
        self.arch = (
            "mobilenetv2"
            if (expand_ratio, width_mult) == (6, 0.5)
            else (f"mobilenetv2_t{expand_ratio}_w{width_mult}")
        )
        self.num_classes = num_classes
        channels = int(32 * width_mult)
        self.conv1 = _conv_bn_relu(3, channels, 3, 2)
        self.blocks = nn.ModuleList()
        outs = []
        for t, c, n, s in STAGES:
            out = int(c * width_mult)
            layers = []
            for i in range(n):
                layers.append(
                    InvertedResidual(channels, out, s if i == 0 else 1, t or int(expand_ratio))
                )
                channels = out
            self.blocks.append(nn.Sequential(*layers))
            outs.append(channels)
        # RepDistiller's f1..f4; inverted residuals end in a linear bottleneck (no activation)
        self.feature_info = [
            stage(f"blocks.{i}", outs[i], r) for i, r in ((1, 2), (2, 4), (4, 8), (6, 16))
        ]
        self.last_channel = int(1280 * width_mult) if width_mult > 1.0 else 1280
        self.conv2 = _conv_bn_relu(channels, self.last_channel, 1, 1)
        self.classifier = nn.Sequential(nn.Linear(self.last_channel, num_classes))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        for block in self.blocks:
            x = block(x)
        x = self.conv2(x)
        # Global average pool; the original AvgPool2d(2, ceil_mode=True) on its 2x2 map (32x32 input).
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.classifier(x)


def mobile_half(num_classes: int = 10) -> MobileNetV2:
    """RepDistiller's ``mobile_half`` (its ``MobileNetV2``): expand 6, width 0.5 (812,836 parameters for 100 classes)."""
    return MobileNetV2(num_classes=num_classes, expand_ratio=6, width_mult=0.5)
