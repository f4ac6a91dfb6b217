"""Multi-layer perceptron for MNIST-format images (the study's teacher and student)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from kdlight.errors import ConfigError
from kdlight.models.base import stage


class MLP(nn.Module):
    """Flatten -> [Linear -> ReLU -> Dropout(p)] per hidden size -> Linear(num_classes).

    The study's teacher is ``MLP(784, (1200, 1200), dropout=0.8)`` (2,395,210 parameters),
    its student ``MLP(784, (800, 800))`` (1,276,810 parameters).
    """

    def __init__(
        self,
        in_features: int = 784,
        hidden: Sequence[int] = (800, 800),
        num_classes: int = 10,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if not 0.0 <= dropout < 1.0:
            raise ConfigError(f"MLP dropout={dropout} is invalid; it must be in [0, 1).")
        if any(int(h) <= 0 for h in hidden):
            raise ConfigError(f"MLP hidden sizes {list(hidden)} are invalid; each must be > 0.")
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_features
        for h in hidden:
            layers += [nn.Linear(width, int(h)), nn.ReLU(inplace=True)]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = int(h)
        layers.append(nn.Linear(width, num_classes))
        self.layers = nn.Sequential(*layers)
        self.num_classes = num_classes
        # the hidden layers' activations (before dropout); "reduction" has no meaning here: 1
        self.feature_info = [
            stage(f"layers.{i}", layers[i - 1].out_features, 1)
            for i, m in enumerate(layers)
            if isinstance(m, nn.ReLU)
        ]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)
