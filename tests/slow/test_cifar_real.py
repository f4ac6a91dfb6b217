"""Real CIFAR-10 (the shared JPEG archive) and Fashion-MNIST (Debian's package), when present."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from kdlight.data.datasets import cifar10 as cifar10_data
from kdlight.data.datasets import mnist as mnist_data
from kdlight.data.datasets.cifar10 import load_cifar10
from kdlight.data.datasets.mnist import load_mnist_family
from kdlight.data.formats.image_tree import load_image_folder

pytestmark = pytest.mark.slow


def shared_archive() -> Path | None:
    """The shared CIFAR-10 archive: ``$KDLIGHT_CIFAR10_ARCHIVE``, else the module's fallbacks."""
    env = os.environ.get(cifar10_data.CIFAR10_ARCHIVE_ENV)
    candidates = [Path(env)] if env else list(cifar10_data.CIFAR10_FALLBACK_ARCHIVES)
    return next((p for p in candidates if p.is_file()), None)


@pytest.fixture(scope="module")
def cifar10(tmp_path_factory):
    archive = shared_archive()
    if archive is None:
        pytest.skip(
            f"no shared {cifar10_data.CIFAR10_ARCHIVE_NAME} (set ${cifar10_data.CIFAR10_ARCHIVE_ENV} or "
            f"place it at ../shared/data/)"
        )
    return load_cifar10(tmp_path_factory.mktemp("empty-data-dir"), download=False, progress=False)


def test_cifar10_shapes_and_class_counts(cifar10):
    assert cifar10.classes == list(cifar10_data.CIFAR10_CLASSES)
    assert cifar10.train_x.shape == (50000, 3, 32, 32) and cifar10.train_x.dtype == torch.uint8
    assert cifar10.test_x.shape == (10000, 3, 32, 32)
    assert torch.bincount(cifar10.train_y).tolist() == [5000] * 10
    assert torch.bincount(cifar10.test_y).tolist() == [1000] * 10


def test_cifar10_channel_means_match_the_published_statistics(cifar10):
    n = cifar10.train_x.numel() // 3
    mean = cifar10.train_x.sum(dim=(0, 2, 3), dtype=torch.int64).double() / n / 255
    # JPEG re-encoding moves the means by ~2e-4 from the official binary release
    assert torch.allclose(
        mean, torch.tensor([0.4914, 0.4822, 0.4465], dtype=torch.float64), atol=2e-3
    )


def test_cifar10_cache_matches_a_fresh_decode(cifar10, tmp_path):
    fresh = load_image_folder(shared_archive(), cache_dir=tmp_path, progress=False)
    cached = load_image_folder(shared_archive(), cache_dir=tmp_path, progress=False)
    assert torch.equal(fresh.train_x, cifar10.train_x) and torch.equal(fresh.test_y, cifar10.test_y)
    assert torch.equal(cached.test_x, fresh.test_x)


@pytest.mark.skipif(
    not mnist_data.DEBIAN_FASHION_MNIST_DIR.is_dir(),
    reason=f"{mnist_data.DEBIAN_FASHION_MNIST_DIR} absent (Debian package dataset-fashion-mnist)",
)
def test_fashion_mnist_from_debian(tmp_path):
    arrays = load_mnist_family("fashion_mnist", tmp_path, download=False)
    assert arrays.train_x.shape == (60000, 1, 28, 28) and arrays.test_x.shape == (10000, 1, 28, 28)
    assert torch.bincount(arrays.train_y).tolist() == [6000] * 10
