"""The model zoo: plain ``nn.Module`` networks, built from ``conf/model/*.yaml`` by Hydra.

One architecture per module; a factory per named variant of a family (``resnet20``,
``preresnet164``, ...). ``CNN5`` and ``ResNet18`` are single variants: the class is the
factory. (A function named ``resnet18`` here would shadow the module ``models.resnet18``.)
"""

from kdlight.models.cnn import CNN5
from kdlight.models.densenet import DenseNet, densenet_bc_100
from kdlight.models.mlp import MLP
from kdlight.models.preresnet import PreResNet, preresnet110, preresnet164
from kdlight.models.resnet import ResNet, resnet20, resnet32, resnet44, resnet56, resnet110
from kdlight.models.resnet18 import ResNet18
from kdlight.models.resnext import CifarResNeXt, resnext29_8x64d
from kdlight.models.wrn import WideResNet, wrn_28_10

__all__ = [
    "CNN5",
    "MLP",
    "CifarResNeXt",
    "DenseNet",
    "PreResNet",
    "ResNet",
    "ResNet18",
    "WideResNet",
    "densenet_bc_100",
    "preresnet110",
    "preresnet164",
    "resnet20",
    "resnet32",
    "resnet44",
    "resnet56",
    "resnet110",
    "resnext29_8x64d",
    "wrn_28_10",
]
