"""CIFAR ResNet-18 (3x3 stem, no max-pool), the study's teacher and ResNet student."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kdlight.models.base import stage


class BasicBlock(nn.Module):
    """conv3x3 -> BN -> ReLU -> conv3x3 -> BN, plus shortcut, then ReLU.

    The shortcut is an empty ``nn.Sequential`` (identity) or 1x1 conv -> BN when the stride
    or width changes, named ``shortcut.0`` / ``shortcut.1`` as in the KD project.
    """

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet18(nn.Module):
    """ResNet-18 for 32x32 inputs: 3x3 stem (64 ch), 4 stages of 2 basic blocks (64-512 ch).

    11,173,962 parameters for 10 classes. Names (``conv1``, ``bn1``, ``layer1..4``,
    ``shortcut``, ``linear``) follow ``model/resnet.py`` of the original KD project
    (itself from kuangliu/pytorch-cifar), so its ``best.pth.tar`` loads directly.
    """

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        in_planes = 64
        stages = []
        for planes, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            stages.append(
                nn.Sequential(BasicBlock(in_planes, planes, stride), BasicBlock(planes, planes))
            )
            in_planes = planes
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.linear = nn.Linear(512, num_classes)
        # each block ends in ReLU: post-activation maps
        self.feature_info = [stage(f"layer{i + 1}", 64 << i, 1 << i) for i in range(4)]
        self.num_classes = num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        # Global average pool; bit-identical to the original avg_pool2d(out, 4) on 32x32 inputs.
        out = F.avg_pool2d(out, out.shape[-2:]).flatten(1)
        return self.linear(out)
