"""The model zoo: plain ``nn.Module`` networks, built from ``conf/model/*.yaml`` by Hydra.

One architecture per module; a factory per named variant of a family (``resnet20``,
``preresnet164``, ...). ``CNN5``, ``ResNet18`` and ``ResNet50Cifar`` are single variants:
the class is the factory. The CIFAR-100 zoo of RepDistiller/mdistiller (resnet8..resnet110,
resnet8x4/32x4, ResNet50, wrn_16/40_1/2, vgg8-19 with BN, MobileNetV2, ShuffleV1/V2) keeps
their parameter names, so their ``ckpt_epoch_240.pth`` teachers load directly. (A function
named like a module, ``resnet18`` or ``mobilenetv2``, would shadow that module here.)

Every network declares its stages in ``feature_info`` (timm's format; see
:mod:`kdlight.models.base`); feature methods' ``auto`` layers are these maps, paired shallow to
deep, plus the penultimate feature. The maps tapped, per network:

==================  ==============================  ==========================================
network             stages (``feature_info``)       what the map is
==================  ==============================  ==========================================
MLP                 ``layers.<i>``, hidden ReLUs    post-ReLU, before dropout
CNN5                ``relu1..3``                    post max-pool + ReLU; penultimate
                                                    ``relu4`` (before dropout)
ResNet (6n+2, x4)   ``layer1..3``                   post-ReLU (each block ends in ReLU)
ResNet18, 50        ``layer1..4``                   post-ReLU
ResNeXt             ``stage_1..3``                  post-ReLU
ShuffleNetV1        ``layer1..3``                   post-ReLU
VGG                 ``relu1..4``                    post-ReLU, before pooling (RepDistiller's
                                                    f1..f4)
ShuffleNetV2        ``layer1..3``                   shuffle of [passed half, ReLU half]
PreResNet, WRN      ``layer1..3``, ``block1..3``    residual stream (pre-activation nets have
                                                    no activation there; RepDistiller's f1..f3)
DenseNet            ``trans1, trans2, dense3``      transition conv + pool; last concatenation
MobileNetV2         ``blocks.1/2/4/6``              linear bottleneck (no activation)
==================  ==============================  ==========================================

Library networks (:mod:`kdlight.models.external`): torchvision's ResNet family
``layer1..4`` (post-ReLU); timm models, timm's own ``feature_info`` less its stem entry.
"""

from kdlight.models.cnn import CNN5
from kdlight.models.densenet import DenseNet, densenet_bc_100
from kdlight.models.mlp import MLP
from kdlight.models.mobilenetv2 import MobileNetV2, mobile_half
from kdlight.models.preresnet import PreResNet, preresnet110, preresnet164
from kdlight.models.resnet import (
    ResNet,
    resnet8,
    resnet8x4,
    resnet14,
    resnet20,
    resnet32,
    resnet32x4,
    resnet44,
    resnet56,
    resnet110,
)
from kdlight.models.resnet18 import ResNet18
from kdlight.models.resnet50_cifar import ResNet50Cifar
from kdlight.models.resnext import CifarResNeXt, resnext29_8x64d
from kdlight.models.shufflenetv1 import ShuffleNetV1, shufflev1
from kdlight.models.shufflenetv2 import ShuffleNetV2, shufflev2
from kdlight.models.vgg import VGG, vgg8, vgg11, vgg13, vgg16, vgg19
from kdlight.models.wrn import WideResNet, wrn_16_1, wrn_16_2, wrn_28_10, wrn_40_1, wrn_40_2

__all__ = [
    "CNN5",
    "MLP",
    "CifarResNeXt",
    "DenseNet",
    "MobileNetV2",
    "PreResNet",
    "ResNet",
    "ResNet18",
    "ResNet50Cifar",
    "ShuffleNetV1",
    "ShuffleNetV2",
    "VGG",
    "WideResNet",
    "densenet_bc_100",
    "mobile_half",
    "preresnet110",
    "preresnet164",
    "resnet8",
    "resnet8x4",
    "resnet14",
    "resnet20",
    "resnet32",
    "resnet32x4",
    "resnet44",
    "resnet56",
    "resnet110",
    "resnext29_8x64d",
    "shufflev1",
    "shufflev2",
    "vgg8",
    "vgg11",
    "vgg13",
    "vgg16",
    "vgg19",
    "wrn_16_1",
    "wrn_16_2",
    "wrn_28_10",
    "wrn_40_1",
    "wrn_40_2",
]
