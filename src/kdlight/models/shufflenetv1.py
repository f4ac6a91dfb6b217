"""ShuffleNet V1 for CIFAR as used by RepDistiller and mdistiller (``ShuffleV1``: g=3)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kdlight.models.base import stage


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """[N, g*c, H, W] -> view [N, g, c, H, W] -> transpose to [N, c, g, H, W] -> [N, g*c, H, W]."""
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


class Bottleneck(nn.Module):
    """1x1 group conv -> BN-ReLU -> channel shuffle -> 3x3 depthwise -> BN-ReLU -> 1x1 group conv -> BN.

    Stride 1: relu(out + x). Stride 2: relu(cat(out, avgpool3x3/2(x))), so the block adds
    ``out_planes`` channels to its input's. The first 1x1 conv is ungrouped when its input is
    the 24-channel stem, as in the original.
    """

    def __init__(self, in_planes: int, out_planes: int, stride: int, groups: int) -> None:
        super().__init__()
        self.stride = stride
        mid = out_planes // 4
        g = 1 if in_planes == 24 else groups
        self.groups1 = g
        self.conv1 = nn.Conv2d(in_planes, mid, 1, groups=g, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, mid, 3, stride=stride, padding=1, groups=mid, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(mid, out_planes, 1, groups=groups, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = channel_shuffle(out, self.groups1)
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.stride == 2:
            return F.relu(torch.cat([out, F.avg_pool2d(x, 3, stride=2, padding=1)], 1))
        return F.relu(out + x)


class ShuffleNetV1(nn.Module):
    """ShuffleNet V1 (Zhang et al., 2018) for 32x32 inputs, RepDistiller's ``ShuffleV1``.

    Stem: 1x1 conv to 24 ch (``conv1``, ``bn1``); three stages ``layer1..3`` of [4, 8, 4]
    bottlenecks with 240/480/960 output channels and 3 groups (the first block of each stage
    has stride 2); global average pool; ``linear``. 949,258 parameters for 100 classes.
    Parameter names are those of HobbitLong/RepDistiller ``models/ShuffleNetv1.py`` (also
    mdistiller's), so its checkpoints load directly.
    """

    def __init__(
        self,
        num_classes: int = 10,
        out_planes: tuple[int, int, int] = (240, 480, 960),
        num_blocks: tuple[int, int, int] = (4, 8, 4),
        groups: int = 3,
    ) -> None:
        super().__init__()
        self.arch = "shufflev1"
        self.num_classes = num_classes
        self.conv1 = nn.Conv2d(3, 24, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(24)
        in_planes = 24
        stages = []
        for planes, blocks in zip(out_planes, num_blocks, strict=True):
            layers = []
            for i in range(blocks):
                # the stride-2 block concatenates its input, so it produces only the difference
                layers.append(
                    Bottleneck(
                        in_planes, planes - (in_planes if i == 0 else 0), 2 if i == 0 else 1, groups
                    )
                )
                in_planes = planes
            stages.append(nn.Sequential(*layers))
        self.layer1, self.layer2, self.layer3 = stages
        self.linear = nn.Linear(out_planes[2], num_classes)
        # each block ends in ReLU: post-activation maps
        self.feature_info = [stage(f"layer{i + 1}", out_planes[i], 2 << i) for i in range(3)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        # Global average pool; the original avg_pool2d(out, 4) on its 4x4 map (32x32 input).
        out = F.avg_pool2d(out, out.shape[-2:]).flatten(1)
        return self.linear(out)


def shufflev1(num_classes: int = 10) -> ShuffleNetV1:
    """RepDistiller's ``ShuffleV1`` (949,258 parameters for 100 classes)."""
    return ShuffleNetV1(num_classes=num_classes)
