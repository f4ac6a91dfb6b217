"""The study's 5-layer CNN student for 32x32 RGB images (CIFAR-10)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kdlight.errors import ConfigError


class CNN5(nn.Module):
    """3 x [conv3x3 -> BN -> maxpool 2 -> ReLU], then Linear -> BN1d -> ReLU -> dropout -> Linear.

    Channels ``width, 2*width, 4*width`` (32, 64, 128); the conv output is 4 x 4 x 128 = 2048
    features for a 32 x 32 input. With ``width=32`` and 10 classes: 357,514 parameters.

    Parameter names and the order of operations are those of ``Net`` in the original KD
    project's ``model/net.py`` (conv1/bn1 ... conv3/bn3, fc1, fcbn1, fc2), so its
    ``best.pth.tar`` state dicts load directly and give the same logits. That code applies
    max-pool before ReLU; the two commute, the order is kept for identical numerics.
    """

    def __init__(self, num_classes: int = 10, dropout: float = 0.5, width: int = 32) -> None:
        super().__init__()
        if not 0.0 <= dropout < 1.0:
            raise ConfigError(f"CNN5 dropout={dropout} is invalid; it must be in [0, 1).")
        if width <= 0:
            raise ConfigError(f"CNN5 width={width} is invalid; it must be > 0 (the study uses 32).")
        c1, c2, c3 = width, 2 * width, 4 * width
        self.conv1 = nn.Conv2d(3, c1, 3, stride=1, padding=1)
        self.bn1 = nn.BatchNorm2d(c1)
        self.conv2 = nn.Conv2d(c1, c2, 3, stride=1, padding=1)
        self.bn2 = nn.BatchNorm2d(c2)
        self.conv3 = nn.Conv2d(c2, c3, 3, stride=1, padding=1)
        self.bn3 = nn.BatchNorm2d(c3)
        self.fc1 = nn.Linear(4 * 4 * c3, c3)
        self.fcbn1 = nn.BatchNorm1d(c3)
        self.dropout = nn.Dropout(dropout)
        self.fc2 = nn.Linear(c3, num_classes)
        self.num_classes = num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(F.max_pool2d(self.bn1(self.conv1(x)), 2))
        x = F.relu(F.max_pool2d(self.bn2(self.conv2(x)), 2))
        x = F.relu(F.max_pool2d(self.bn3(self.conv3(x)), 2))
        x = torch.flatten(x, 1)
        x = self.dropout(F.relu(self.fcbn1(self.fc1(x))))
        return self.fc2(x)
