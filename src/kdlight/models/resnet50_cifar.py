"""RepDistiller's CIFAR ResNet-50: bottleneck blocks [3, 4, 6, 3], 3x3 stem, no max-pool."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kdlight.models.base import stage


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (stride) -> 1x1 (4x width) convs with BN, plus shortcut, then ReLU.

    out = relu(bn3(conv3(relu(bn2(conv2(relu(bn1(conv1(x)))))))) + shortcut(x)); the
    shortcut is identity (an empty ``nn.Sequential``) or 1x1 conv -> BN (``shortcut.0/1``)
    when the stride or width changes.
    """

    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        out_planes = planes * self.expansion
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_planes, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != out_planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_planes),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + self.shortcut(x))


class ResNet50Cifar(nn.Module):
    """ResNet-50 for 32x32 inputs: 3x3 stem (64 ch), 4 stages of [3, 4, 6, 3] bottlenecks.

    Stage widths 64/128/256/512 (x4 out), strides 1/2/2/2, global average pool, ``linear``.
    23,705,252 parameters for 100 classes. Parameter names (``conv1``, ``bn1``,
    ``layer1..4.i.{conv,bn}{1,2,3}``, ``shortcut.0/1``, ``linear``) are those of
    HobbitLong/RepDistiller ``models/resnetv2.py`` (``ResNet50``, also mdistiller's), so its
    ``ResNet50_vanilla/ckpt_epoch_240.pth`` loads directly.
    """

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.arch = "resnet50_cifar"
        self.num_classes = num_classes
        self.conv1 = nn.Conv2d(3, 64, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        in_planes = 64
        stages = []
        for planes, blocks, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
            layers = []
            for i in range(blocks):
                layers.append(Bottleneck(in_planes, planes, stride if i == 0 else 1))
                in_planes = planes * Bottleneck.expansion
            stages.append(nn.Sequential(*layers))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.linear = nn.Linear(512 * Bottleneck.expansion, num_classes)
        # each block ends in ReLU: post-activation maps
        e = Bottleneck.expansion
        self.feature_info = [stage(f"layer{i + 1}", (64 << i) * e, 1 << i) for i in range(4)]
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(out)
