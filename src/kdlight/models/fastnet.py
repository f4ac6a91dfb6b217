"""A small, fast-training CIFAR network of the shape of airbench94's (Jordan, 2024).

Used as a CPU-sized teacher that clearly beats the 5-layer CNN in few epochs (issue 17): wide
3x3 convolutions at low resolution keep a CPU's vector units busy, where ResNet-20's 16-channel
layers do not (on this project's 2-core CPU it trains at about the speed of WRN-16-2 per image,
and reaches a higher accuracy in a short schedule). Only the shape is airbench's: plain
initialisation (no patch-whitening stem), ordinary BatchNorm, and none of its training tricks.
"""

from __future__ import annotations

import torch
from torch import nn

from kdlight.errors import ConfigError


def _conv_bn(c_in: int, c_out: int, pool: bool) -> list[nn.Module]:
    layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)]
    if pool:
        layers.append(nn.MaxPool2d(2))
    return layers + [nn.BatchNorm2d(c_out), nn.GELU()]


class FastNet(nn.Module):
    """2x2 conv stem (3 -> ``stem``, no padding) -> GELU, then three blocks of
    [conv3x3 -> max-pool 2 -> BN -> GELU -> conv3x3 -> BN -> GELU], global max-pool, Linear.

    A 32 x 32 input is 31 x 31 after the stem and 15, 7, 3 pixels wide after the blocks
    ``block1..3`` (the stage outputs feature methods read). Widths ``(64, 256, 256)``: with 10
    classes 1,972,792 parameters.
    """

    arch = "fastnet"

    def __init__(
        self,
        num_classes: int = 10,
        widths: tuple[int, int, int] | list[int] = (64, 256, 256),
        stem: int = 24,
    ) -> None:
        super().__init__()
        widths = tuple(int(w) for w in widths)
        if len(widths) != 3 or min(widths) <= 0 or stem <= 0:
            raise ConfigError(
                f"FastNet widths={list(widths)}, stem={stem} is invalid; give three positive "
                "block widths and a positive stem width (airbench94: [64, 256, 256], 24)."
            )
        self.stem = nn.Sequential(nn.Conv2d(3, stem, 2, bias=True), nn.GELU())
        c = stem
        for i, w in enumerate(widths, start=1):
            setattr(self, f"block{i}", nn.Sequential(*_conv_bn(c, w, True), *_conv_bn(w, w, False)))
            c = w
        self.pool = nn.AdaptiveMaxPool2d(1)
        self.fc = nn.Linear(c, num_classes, bias=False)
        self.num_classes = num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block3(self.block2(self.block1(self.stem(x))))
        return self.fc(torch.flatten(self.pool(x), 1))
