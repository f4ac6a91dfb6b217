"""ShuffleNet V2 for CIFAR as used by RepDistiller and mdistiller (``ShuffleV2``: net size 1)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kdlight.errors import ConfigError
from kdlight.models.base import stage

#: net size -> (stage output channels + final conv channels, blocks per stage), from the original.
SIZES: dict[float, tuple[tuple[int, int, int, int], tuple[int, int, int]]] = {
    0.2: ((40, 80, 160, 512), (3, 3, 3)),
    0.3: ((40, 80, 160, 512), (3, 7, 3)),
    0.5: ((48, 96, 192, 1024), (3, 7, 3)),
    1.0: ((116, 232, 464, 1024), (3, 7, 3)),
    1.5: ((176, 352, 704, 1024), (3, 7, 3)),
    2.0: ((224, 488, 976, 2048), (3, 7, 3)),
}


def channel_shuffle(x: torch.Tensor, groups: int = 2) -> torch.Tensor:
    """[N, g*c, H, W] -> view [N, g, c, H, W] -> transpose to [N, c, g, H, W] -> [N, g*c, H, W]."""
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


class BasicBlock(nn.Module):
    """Split channels in halves (x1, x2); x2 -> 1x1 -> BN-ReLU -> 3x3 dw -> BN -> 1x1 -> BN-ReLU;
    concatenate (x1, branch) and shuffle with 2 groups."""

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        c = in_channels // 2
        self.conv1 = nn.Conv2d(c, c, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, stride=1, padding=1, groups=c, bias=False)
        self.bn2 = nn.BatchNorm2d(c)
        self.conv3 = nn.Conv2d(c, c, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[1] // 2
        x1, x2 = x[:, :c], x[:, c:]
        out = F.relu(self.bn1(self.conv1(x2)))
        out = self.bn2(self.conv2(out))
        out = F.relu(self.bn3(self.conv3(out)))
        return channel_shuffle(torch.cat([x1, out], 1))


class DownBlock(nn.Module):
    """Stride-2 block: left 3x3 dw/2 -> BN -> 1x1 -> BN-ReLU; right 1x1 -> BN-ReLU -> 3x3 dw/2 ->
    BN -> 1x1 -> BN-ReLU; each side gives half of ``out_channels``; concatenate and shuffle."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        mid = out_channels // 2
        self.conv1 = nn.Conv2d(in_channels, in_channels, 3, 2, 1, groups=in_channels, bias=False)
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv2 = nn.Conv2d(in_channels, mid, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(in_channels, mid, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(mid)
        self.conv4 = nn.Conv2d(mid, mid, 3, 2, 1, groups=mid, bias=False)
        self.bn4 = nn.BatchNorm2d(mid)
        self.conv5 = nn.Conv2d(mid, mid, 1, bias=False)
        self.bn5 = nn.BatchNorm2d(mid)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        left = F.relu(self.bn2(self.conv2(self.bn1(self.conv1(x)))))
        right = F.relu(self.bn3(self.conv3(x)))
        right = F.relu(self.bn5(self.conv5(self.bn4(self.conv4(right)))))
        return channel_shuffle(torch.cat([left, right], 1))


class ShuffleNetV2(nn.Module):
    """ShuffleNet V2 (Ma et al., 2018) for 32x32 inputs, RepDistiller's ``ShuffleV2``.

    Stem: 1x1 conv to 24 ch (``conv1``, ``bn1``); three stages ``layer1..3``, each a
    :class:`DownBlock` then [3, 7, 3] :class:`BasicBlock`; 1x1 conv (``conv2``, ``bn2``) to
    1024 ch, ReLU; global average pool; ``linear``. Net size 1: 1,355,528 parameters for 100
    classes. Parameter names are those of HobbitLong/RepDistiller ``models/ShuffleNetv2.py``
    (also mdistiller's), so its checkpoints load directly.
    """

    def __init__(self, num_classes: int = 10, net_size: float = 1.0) -> None:
        super().__init__()
        if float(net_size) not in SIZES:
            raise ConfigError(
                f"ShuffleNetV2 net_size={net_size} is invalid; use one of {', '.join(map(str, SIZES))}."
            )
        self.arch = "shufflev2" if float(net_size) == 1.0 else f"shufflev2_{net_size}"
        self.num_classes = num_classes
        channels, blocks = SIZES[float(net_size)]
        self.conv1 = nn.Conv2d(3, 24, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(24)
        in_channels = 24
        stages = []
        for out, n in zip(channels[:3], blocks, strict=True):
            stages.append(
                nn.Sequential(DownBlock(in_channels, out), *(BasicBlock(out) for _ in range(n)))
            )
            in_channels = out
        self.layer1, self.layer2, self.layer3 = stages
        self.conv2 = nn.Conv2d(channels[2], channels[3], 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels[3])
        self.linear = nn.Linear(channels[3], num_classes)
        # blocks end in a channel shuffle of [passed-through half, ReLU half]
        self.feature_info = [stage(f"layer{i + 1}", channels[i], 2 << i) for i in range(3)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = F.relu(self.bn2(self.conv2(out)))
        # Global average pool; the original avg_pool2d(out, 4) on its 4x4 map (32x32 input).
        out = F.avg_pool2d(out, out.shape[-2:]).flatten(1)
        return self.linear(out)


def shufflev2(num_classes: int = 10) -> ShuffleNetV2:
    """RepDistiller's ``ShuffleV2`` (net size 1; 1,355,528 parameters for 100 classes)."""
    return ShuffleNetV2(num_classes=num_classes, net_size=1.0)
