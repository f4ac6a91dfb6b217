"""The data-module protocol: every data module kdlight ships has each attribute it names."""

from __future__ import annotations

import inspect

import pytest

from kdlight.data.datasets.cifar100 import CIFAR100DataModule
from kdlight.data.datasets.mnist import MNISTDataModule
from kdlight.data.datasets.tiny_imagenet import TinyImageNetDataModule
from kdlight.data.modules.image_folder import ImageFolderDataModule
from kdlight.data.protocol import DataModule

_MISSING = object()


def protocol_names() -> set[str]:
    """The attributes and methods :class:`DataModule` declares (not those of ``Protocol``)."""
    names = set(DataModule.__annotations__)
    names |= {n for n in vars(DataModule) if not n.startswith("_")}
    return names


def test_the_protocol_names_what_the_engine_reads():
    assert {"train_idx", "view_batch", "fingerprint", "transform_key", "arrays"} <= protocol_names()


@pytest.mark.parametrize(
    "module",
    [
        lambda: MNISTDataModule(name="mnist"),
        lambda: CIFAR100DataModule(),
        lambda: ImageFolderDataModule(root="nowhere", num_classes=3),
        lambda: TinyImageNetDataModule(root="nowhere", num_classes=200),
    ],
)
def test_every_data_module_has_every_protocol_attribute(module):
    dm = module()  # nothing is read before setup, so no data is needed
    # getattr_static: a property such as input_shape would load the data
    missing = [n for n in protocol_names() if inspect.getattr_static(dm, n, _MISSING) is _MISSING]
    assert missing == []
