"""VGG with batch norm for CIFAR (RepDistiller's variant: five conv blocks, one linear layer)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kdlight.errors import ConfigError
from kdlight.models.base import stage

#: depth -> channels of the convs in each of the five blocks (RepDistiller's cfg S, A, B, D, E).
CONFIGS: dict[int, tuple[tuple[int, ...], ...]] = {
    8: ((64,), (128,), (256,), (512,), (512,)),
    11: ((64,), (128,), (256, 256), (512, 512), (512, 512)),
    13: ((64, 64), (128, 128), (256, 256), (512, 512), (512, 512)),
    16: ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512)),
    19: ((64, 64), (128, 128), (256, 256, 256, 256), (512, 512, 512, 512), (512, 512, 512, 512)),
}


def _block(channels: tuple[int, ...], in_channels: int) -> nn.Sequential:
    """[conv3x3 (bias) -> BN -> ReLU] per channel count, without the last ReLU."""
    layers: list[nn.Module] = []
    for c in channels:
        layers += [
            nn.Conv2d(in_channels, c, 3, padding=1),
            nn.BatchNorm2d(c),
            nn.ReLU(inplace=True),
        ]
        in_channels = c
    return nn.Sequential(*layers[:-1])


class VGG(nn.Module):
    """VGG-8/11/13/16/19 with BN: ``block0..4`` (each ends in BN, ReLU applied after it), max-pool
    after blocks 0-2 (and 3 on 64x64 inputs), global average pool, ``classifier`` (512 -> classes).

    For 100 classes: VGG-8 3,965,028 parameters, VGG-11 9,277,284, VGG-13 9,462,180, VGG-16
    14,774,436, VGG-19 20,086,692. Parameter names (``block{0..4}.{3i}`` conv, ``.{3i+1}`` BN,
    ``classifier``) are those of HobbitLong/RepDistiller ``models/vgg.py`` (``vgg*_bn``, also
    mdistiller's), so its ``vgg13_vanilla/ckpt_epoch_240.pth`` loads directly. Like the
    original, the fourth pooling is skipped on 32x32 inputs (block 4 runs at 4x4). Stages:
    ``relu1..4``, each block's activation before its pooling (RepDistiller's f1..f4).
    """

    def __init__(self, depth: int = 13, num_classes: int = 10) -> None:
        super().__init__()
        if depth not in CONFIGS:
            raise ConfigError(
                f"VGG depth={depth} is invalid; use one of {', '.join(map(str, CONFIGS))}."
            )
        self.arch = f"vgg{depth}"
        self.num_classes = num_classes
        cfg = CONFIGS[depth]
        ins = (3, *(c[-1] for c in cfg[:-1]))
        self.block0, self.block1, self.block2, self.block3, self.block4 = (
            _block(c, i) for c, i in zip(cfg, ins, strict=True)
        )
        self.pool0, self.pool1, self.pool2, self.pool3 = (nn.MaxPool2d(2, 2) for _ in range(4))
        # One parameter-free ReLU module per block, so each block's activation can be tapped.
        self.relu0, self.relu1, self.relu2, self.relu3, self.relu4 = (nn.ReLU() for _ in range(5))
        self.feature_info = [
            stage(f"relu{i}", cfg[i][-1], r) for i, r in ((1, 2), (2, 4), (3, 8), (4, 8))
        ]
        self.classifier = nn.Linear(512, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.shape[2]
        x = self.pool0(self.relu0(self.block0(x)))
        x = self.pool1(self.relu1(self.block1(x)))
        x = self.pool2(self.relu2(self.block2(x)))
        x = self.relu3(self.block3(x))
        if h == 64:  # as the original: a 4th pooling only for 64x64 (Tiny-ImageNet) inputs
            x = self.pool3(x)
        x = self.relu4(self.block4(x))
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.classifier(x)


def vgg8(num_classes: int = 10) -> VGG:
    """VGG-8 with BN (RepDistiller's ``vgg8_bn``; 3,965,028 parameters for 100 classes)."""
    return VGG(8, num_classes)


def vgg11(num_classes: int = 10) -> VGG:
    """VGG-11 with BN (RepDistiller's ``vgg11_bn``; 9,277,284 parameters for 100 classes)."""
    return VGG(11, num_classes)


def vgg13(num_classes: int = 10) -> VGG:
    """VGG-13 with BN (RepDistiller's ``vgg13_bn``; 9,462,180 parameters for 100 classes)."""
    return VGG(13, num_classes)


def vgg16(num_classes: int = 10) -> VGG:
    """VGG-16 with BN (RepDistiller's ``vgg16_bn``; 14,774,436 parameters for 100 classes)."""
    return VGG(16, num_classes)


def vgg19(num_classes: int = 10) -> VGG:
    """VGG-19 with BN (RepDistiller's ``vgg19_bn``; 20,086,692 parameters for 100 classes)."""
    return VGG(19, num_classes)
