"""ResNeXt for 32x32 inputs (Xie et al., 2017): ResNeXt-29 8x64d."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kdlight.errors import ConfigError
from kdlight.models.base import stage


class ResNeXtBottleneck(nn.Module):
    """conv1x1 (D) -> BN-ReLU -> grouped conv3x3 -> BN-ReLU -> conv1x1 -> BN, + shortcut, ReLU.

    D = cardinality * out_channels / widen_factor. The shortcut is an empty ``nn.Sequential``
    or ``shortcut_conv`` (1x1, strided) -> ``shortcut_bn`` when the width changes.
    """

    def __init__(
        self, in_channels: int, out_channels: int, stride: int, cardinality: int, widen_factor: int
    ) -> None:
        super().__init__()
        d = cardinality * out_channels // widen_factor
        self.conv_reduce = nn.Conv2d(in_channels, d, 1, stride=1, padding=0, bias=False)
        self.bn_reduce = nn.BatchNorm2d(d)
        self.conv_conv = nn.Conv2d(
            d, d, 3, stride=stride, padding=1, groups=cardinality, bias=False
        )
        self.bn = nn.BatchNorm2d(d)
        self.conv_expand = nn.Conv2d(d, out_channels, 1, stride=1, padding=0, bias=False)
        self.bn_expand = nn.BatchNorm2d(out_channels)
        self.shortcut = nn.Sequential()
        if in_channels != out_channels:
            self.shortcut.add_module(
                "shortcut_conv",
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, padding=0, bias=False),
            )
            self.shortcut.add_module("shortcut_bn", nn.BatchNorm2d(out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn_reduce(self.conv_reduce(x)), inplace=True)
        out = F.relu(self.bn(self.conv_conv(out)), inplace=True)
        out = self.bn_expand(self.conv_expand(out))
        return F.relu(self.shortcut(x) + out, inplace=True)


class CifarResNeXt(nn.Module):
    """ResNeXt-depth (C x d): 3x3 stem (64 ch), 3 stages of (depth-2)/9 bottlenecks, fc.

    Stage widths are 64w, 128w, 256w for ``widen_factor`` w; each bottleneck's grouped conv
    has ``cardinality`` groups. ResNeXt-29 8x64d (cardinality 8, widen 4): 34,426,698
    parameters for 10 classes.

    Parameter names (``conv_1_3x3``, ``bn_1``, ``stage_1..3.stage_<s>_bottleneck_<i>.*``,
    ``shortcut.shortcut_{conv,bn}``, ``classifier``) follow bearpaw/pytorch-classification
    ``models/cifar/resnext.py`` (from prlz77/ResNeXt.pytorch).
    """

    def __init__(
        self,
        depth: int = 29,
        cardinality: int = 8,
        widen_factor: int = 4,
        num_classes: int = 10,
    ) -> None:
        super().__init__()
        if depth < 11 or (depth - 2) % 9 != 0:
            raise ConfigError(
                f"CifarResNeXt depth={depth} is invalid; it must be 9n+2 (e.g. 11, 20, 29, 38)."
            )
        if cardinality < 1 or widen_factor < 1:
            raise ConfigError(
                f"CifarResNeXt cardinality={cardinality}, widen_factor={widen_factor} are "
                "invalid; both must be >= 1."
            )
        self.depth = depth
        self.cardinality = cardinality
        self.widen_factor = widen_factor
        self.num_classes = num_classes
        self.block_depth = (depth - 2) // 9
        stages = [64, 64 * widen_factor, 128 * widen_factor, 256 * widen_factor]
        self.conv_1_3x3 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        self.bn_1 = nn.BatchNorm2d(64)
        self.stage_1 = self._make_stage("stage_1", stages[0], stages[1], 1)
        self.stage_2 = self._make_stage("stage_2", stages[1], stages[2], 2)
        self.stage_3 = self._make_stage("stage_3", stages[2], stages[3], 2)
        self.classifier = nn.Linear(stages[3], num_classes)
        # each bottleneck ends in ReLU: post-activation maps
        self.feature_info = [stage(f"stage_{i}", stages[i], 1 << (i - 1)) for i in (1, 2, 3)]
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        nn.init.kaiming_normal_(self.classifier.weight)
        nn.init.zeros_(self.classifier.bias)

    def _make_stage(self, name: str, in_channels: int, out_channels: int, stride: int):
        stage = nn.Sequential()
        for i in range(self.block_depth):
            stage.add_module(
                f"{name}_bottleneck_{i}",
                ResNeXtBottleneck(
                    in_channels if i == 0 else out_channels,
                    out_channels,
                    stride if i == 0 else 1,
                    self.cardinality,
                    self.widen_factor,
                ),
            )
        return stage

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn_1(self.conv_1_3x3(x)), inplace=True)
        x = self.stage_3(self.stage_2(self.stage_1(x)))
        # Global average pool; bit-identical to the original avg_pool2d(x, 8, 1) on 32x32 inputs.
        x = F.avg_pool2d(x, x.shape[-2:]).flatten(1)
        return self.classifier(x)


def resnext29_8x64d(num_classes: int = 10) -> CifarResNeXt:
    """ResNeXt-29 8x64d, cardinality 8, widen factor 4 (34,426,698 parameters for 10 classes)."""
    return CifarResNeXt(depth=29, cardinality=8, widen_factor=4, num_classes=num_classes)
