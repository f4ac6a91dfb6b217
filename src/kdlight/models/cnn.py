"""The study's 5-layer CNN student for 32x32 RGB images (CIFAR-10)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kdlight.errors import ConfigError
from kdlight.models.base import stage


class CNN5(nn.Module):
    """3 x [conv3x3 -> BN -> ReLU -> maxpool 2], then Linear -> BN1d -> ReLU -> dropout -> Linear.

    Channels ``width, 2*width, 4*width`` (32, 64, 128); the conv output is 4 x 4 x 128 = 2048
    features for a 32 x 32 input. With ``width=32`` and 10 classes: 357,514 parameters.

    Parameter names and the order of operations are those of ``Net`` in the original KD
    project's ``model/net.py`` (conv1/bn1 ... conv3/bn3, fc1, fcbn1, fc2), so its
    ``best.pth.tar`` state dicts load directly and give the same logits. That code applies
    max-pool before ReLU; the two commute exactly (values and gradients), so ReLU comes first.

    The ReLUs are modules (``relu1..relu4``, no parameters) so they can be tapped: the stages
    are ``relu1..3`` (post-ReLU, before max-pool: 32, 16, 8 pixels for a 32 x 32 input, as a
    CIFAR ResNet's stages) and the penultimate feature is ``relu4``, the fully connected
    layer's activation before dropout.
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
        self.relu1, self.relu2, self.relu3, self.relu4 = (nn.ReLU() for _ in range(4))
        self.num_classes = num_classes
        self.feature_info = [stage("relu1", c1, 1), stage("relu2", c2, 2), stage("relu3", c3, 4)]
        self.penultimate = "relu4"  # before dropout: relation methods compare clean features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # ReLU before max-pool: the KD project's pool-then-ReLU gives the same values and
        # gradients (ReLU is monotone), and the tapped stages keep the conv's resolution
        x = F.max_pool2d(self.relu1(self.bn1(self.conv1(x))), 2)
        x = F.max_pool2d(self.relu2(self.bn2(self.conv2(x))), 2)
        x = F.max_pool2d(self.relu3(self.bn3(self.conv3(x))), 2)
        x = torch.flatten(x, 1)
        x = self.dropout(self.relu4(self.fcbn1(self.fc1(x))))
        return self.fc2(x)
