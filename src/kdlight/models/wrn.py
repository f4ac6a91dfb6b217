"""Wide residual networks (Zagoruyko & Komodakis, 2016) for 32x32 inputs."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kdlight.errors import ConfigError
from kdlight.models.base import stage


class BasicBlock(nn.Module):
    """Pre-activation block: BN-ReLU -> conv3x3 -> BN-ReLU -> dropout -> conv3x3, plus shortcut.

    When the width changes, the shortcut is a 1x1 conv (``convShortcut``) applied to the
    *pre-activated* input, as in the original code.
    """

    def __init__(self, in_planes: int, out_planes: int, stride: int, drop_rate: float = 0.0):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_planes, out_planes, 3, stride=1, padding=1, bias=False)
        self.dropout = nn.Dropout(drop_rate)
        self.equal_in_out = in_planes == out_planes
        self.convShortcut = (
            None
            if self.equal_in_out
            else nn.Conv2d(in_planes, out_planes, 1, stride=stride, padding=0, bias=False)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = self.relu1(self.bn1(x))
        out = self.relu2(self.bn2(self.conv1(pre)))
        out = self.conv2(self.dropout(out))
        shortcut = x if self.convShortcut is None else self.convShortcut(pre)
        return shortcut + out


class NetworkBlock(nn.Module):
    """A stage of ``nb_layers`` wide basic blocks, held in ``self.layer`` (an ``nn.Sequential``)."""

    def __init__(
        self, nb_layers: int, in_planes: int, out_planes: int, stride: int, drop_rate: float
    ) -> None:
        super().__init__()
        self.layer = nn.Sequential(
            *(
                BasicBlock(
                    in_planes if i == 0 else out_planes,
                    out_planes,
                    stride if i == 0 else 1,
                    drop_rate,
                )
                for i in range(nb_layers)
            )
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


class WideResNet(nn.Module):
    """WRN-depth-k: 3x3 stem (16 ch), 3 stages of (depth-4)/6 blocks (16k/32k/64k ch), BN-ReLU, fc.

    WRN-28-10 with dropout 0.3: 36,479,194 parameters for 10 classes; RepDistiller's
    WRN-16-1/16-2/40-1/40-2 (no dropout): 180,916 / 703,284 / 569,780 / 2,255,156 for 100.
    Parameter names (``conv1``, ``block1..3.layer.i.{bn1,conv1,bn2,conv2,convShortcut}``,
    ``bn1``, ``fc``) follow bearpaw/pytorch-classification ``models/cifar/wrn.py`` (also
    copied into the KD project's ``model/wrn.py`` and HobbitLong/RepDistiller's
    ``models/wrn.py``), so checkpoints of all three load directly.
    """

    def __init__(
        self,
        depth: int = 28,
        widen_factor: int = 10,
        dropout: float = 0.3,
        num_classes: int = 10,
    ) -> None:
        super().__init__()
        if depth < 10 or (depth - 4) % 6 != 0:
            raise ConfigError(
                f"WideResNet depth={depth} is invalid; it must be 6n+4 (e.g. 10, 16, 22, 28, 40)."
            )
        if widen_factor < 1:
            raise ConfigError(
                f"WideResNet widen_factor={widen_factor} is invalid; it must be >= 1."
            )
        if not 0.0 <= dropout < 1.0:
            raise ConfigError(f"WideResNet dropout={dropout} is invalid; it must be in [0, 1).")
        n = (depth - 4) // 6
        self.arch = f"wrn_{depth}_{widen_factor}"
        widths = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.num_classes = num_classes
        self.conv1 = nn.Conv2d(3, widths[0], 3, stride=1, padding=1, bias=False)
        self.block1 = NetworkBlock(n, widths[0], widths[1], 1, dropout)
        self.block2 = NetworkBlock(n, widths[1], widths[2], 2, dropout)
        self.block3 = NetworkBlock(n, widths[2], widths[3], 2, dropout)
        self.bn1 = nn.BatchNorm2d(widths[3])
        self.relu = nn.ReLU(inplace=True)
        self.fc = nn.Linear(widths[3], num_classes)
        # pre-activation: a stage ends on the residual stream, as RepDistiller's f1..f3
        self.feature_info = [stage(f"block{i}", widths[i], 1 << (i - 1)) for i in (1, 2, 3)]
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block3(self.block2(self.block1(self.conv1(x))))
        out = self.relu(self.bn1(out))
        # Global average pool; bit-identical to the original avg_pool2d(out, 8) on 32x32 inputs.
        out = F.avg_pool2d(out, out.shape[-2:]).flatten(1)
        return self.fc(out)


def wrn_28_10(num_classes: int = 10, dropout: float = 0.3) -> WideResNet:
    """WideResNet-28-10 (36,479,194 parameters for 10 classes)."""
    return WideResNet(depth=28, widen_factor=10, dropout=dropout, num_classes=num_classes)


def wrn_16_1(num_classes: int = 10, dropout: float = 0.0) -> WideResNet:
    """WideResNet-16-1 as in RepDistiller (180,916 parameters for 100 classes)."""
    return WideResNet(depth=16, widen_factor=1, dropout=dropout, num_classes=num_classes)


def wrn_16_2(num_classes: int = 10, dropout: float = 0.0) -> WideResNet:
    """WideResNet-16-2 as in RepDistiller (703,284 parameters for 100 classes)."""
    return WideResNet(depth=16, widen_factor=2, dropout=dropout, num_classes=num_classes)


def wrn_40_1(num_classes: int = 10, dropout: float = 0.0) -> WideResNet:
    """WideResNet-40-1 as in RepDistiller (569,780 parameters for 100 classes)."""
    return WideResNet(depth=40, widen_factor=1, dropout=dropout, num_classes=num_classes)


def wrn_40_2(num_classes: int = 10, dropout: float = 0.0) -> WideResNet:
    """WideResNet-40-2 as in RepDistiller (2,255,156 parameters for 100 classes)."""
    return WideResNet(depth=40, widen_factor=2, dropout=dropout, num_classes=num_classes)
