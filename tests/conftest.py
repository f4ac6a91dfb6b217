"""Shared fixtures: tiny data sets written once a session, and composed configs. What they write
lives in ``tests/helpers/`` (one copy of each); tests import the helpers from there."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import DictConfig

from tests.helpers.data import (
    write_cifar100_pickles,
    write_image_folder,
    write_image_tree,
    write_mnist_like,
    write_tiny_imagenet,
)
from tests.helpers.overrides import compose_cfg


@pytest.fixture(scope="session", autouse=True)
def _private_cache_dir(tmp_path_factory):
    """Data digests and decoded caches go to a folder of this test session, not ~/.cache."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("KDLIGHT_CACHE_DIR", str(tmp_path_factory.mktemp("kdlight-cache")))
        yield


@pytest.fixture(scope="session")
def tiny_data_dir(tmp_path_factory) -> Path:
    """A data_dir holding tiny MNIST, Fashion-MNIST (IDX), CIFAR-10 (image folder), CIFAR-100
    (torchvision's pickles), image-folder / ImageNet and Tiny-ImageNet sets."""
    root = tmp_path_factory.mktemp("data")
    write_mnist_like(root, "fashion_mnist")
    write_mnist_like(root, "mnist")
    write_image_folder(root / "cifar10")
    write_cifar100_pickles(root / "cifar-100-python")
    write_image_tree(root / "image_folder")  # data=image_folder's default root
    write_image_tree(root / "imagenet")
    write_tiny_imagenet(root / "tiny-imagenet-200")
    return root


@pytest.fixture
def make_cfg(tmp_path, tiny_data_dir):
    def _make(*overrides: str, store_dir: Path | None = None) -> DictConfig:
        return compose_cfg(list(overrides), tmp_path, tiny_data_dir, store_dir)

    return _make
