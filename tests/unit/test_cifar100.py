"""CIFAR-100: the pickle format (read without running code), other sources, and the data module."""

from __future__ import annotations

import os
import pickle
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from kdlight.data.datasets import fetch
from kdlight.data.datasets.cifar100 import CIFAR100DataModule, load_cifar100
from kdlight.data.formats.cifar import read_cifar_pickles
from kdlight.errors import DataError
from tests.helpers.data import write_cifar100_pickles
from tests.helpers.hostile import RunsCode


@pytest.fixture(scope="module")
def pickles(tmp_path_factory):
    return write_cifar100_pickles(tmp_path_factory.mktemp("c100") / "cifar-100-python")


def _raw(folder, split):
    with open(folder / split, "rb") as fh:
        return pickle.load(fh, encoding="bytes")  # our own test file: safe to load plainly


def test_pickles_give_nchw_images_fine_labels_and_class_names(pickles):
    arrays = read_cifar_pickles(pickles)
    raw = _raw(pickles, "train")
    assert arrays.train_x.shape == (200, 3, 32, 32) and arrays.test_x.shape == (100, 3, 32, 32)
    assert arrays.train_x.dtype == torch.uint8 and arrays.train_y.dtype == torch.int64
    # row layout of the format: 1024 red, then 1024 green, then 1024 blue values, row-major
    n, c, h, w = 7, 2, 5, 30
    assert arrays.train_x[n, c, h, w] == raw[b"data"][n, c * 1024 + h * 32 + w]
    assert arrays.train_y.tolist() == raw[b"fine_labels"]  # fine, not coarse, labels
    assert arrays.classes == [f"fine_{i:02d}" for i in range(100)]


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_pickles_of_any_protocol_read_the_same(tmp_path, pickles, protocol):
    other = write_cifar100_pickles(tmp_path / "cifar-100-python", protocol=protocol)
    a, b = read_cifar_pickles(pickles), read_cifar_pickles(other)
    assert torch.equal(a.train_x, b.train_x) and torch.equal(a.test_y, b.test_y)


def test_a_pickle_that_would_run_code_is_refused(tmp_path, monkeypatch):
    folder = write_cifar100_pickles(tmp_path / "cifar-100-python", n_train=4, n_test=2)
    (folder / "meta").write_bytes(
        pickle.dumps({b"fine_label_names": RunsCode(os.mkdir, "PWNED")}, protocol=2)
    )
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match=r"meta was refused: .*(posix|os)\.mkdir is not allowed"):
        read_cifar_pickles(folder)
    assert not (tmp_path / "PWNED").exists()


def test_missing_or_malformed_files_are_named(tmp_path):
    folder = write_cifar100_pickles(tmp_path / "cifar-100-python", n_train=4, n_test=2)
    (folder / "test").unlink()
    with pytest.raises(DataError, match="lacks test"):
        read_cifar_pickles(folder)
    folder = write_cifar100_pickles(tmp_path / "other", n_train=4, n_test=2)
    record = {b"data": np.zeros((4, 1024), np.uint8), b"fine_labels": [0, 1, 2, 3]}
    (folder / "train").write_bytes(pickle.dumps(record, protocol=2))
    with pytest.raises(DataError, match=r"'data' of shape \(4, 1024\)"):
        read_cifar_pickles(folder)
    (folder / "train").write_bytes(b"\x80\x02}q\x00(X")  # truncated
    with pytest.raises(DataError, match="not a readable CIFAR pickle"):
        read_cifar_pickles(folder)


def test_the_original_tarball_in_data_dir_reads_like_the_folder(tmp_path, pickles):
    with tarfile.open(tmp_path / "cifar-100-python.tar.gz", "w:gz") as tar:
        tar.add(pickles, arcname="cifar-100-python")
    arrays = load_cifar100(tmp_path, download=False)
    folder = read_cifar_pickles(pickles)
    assert torch.equal(arrays.train_x, folder.train_x) and torch.equal(arrays.test_y, folder.test_y)


def test_an_image_folder_of_100_classes_loads_and_10_classes_are_refused(tmp_path):
    def tree(root, n_classes):
        for split in ("train", "test"):
            for c in range(n_classes):
                p = root / split / f"class_{c:03d}" / "0.png"
                p.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(np.full((32, 32, 3), c, np.uint8)).save(p)
        return root

    arrays = load_cifar100(tmp_path, archive=tree(tmp_path / "c100", 100), download=False)
    assert arrays.train_y.tolist() == list(range(100))
    assert arrays.train_x[42].max() == 42  # labels follow the sorted class folders
    with pytest.raises(DataError, match="not CIFAR-100: it holds 10 classes"):
        load_cifar100(tmp_path, archive=tree(tmp_path / "c10", 10), download=False)


class FakeCIFAR100:
    url = "https://example.org/cifar-100-python.tar.gz"
    filename = "cifar-100-python.tar.gz"
    tgz_md5 = "0123456789abcdef"


def test_download_uses_torchvisions_url_and_checksum_then_reads_safely(tmp_path, monkeypatch):
    calls = []

    def fake_download(url, root, filename, md5):
        calls.append((url, root, filename, md5))
        write_cifar100_pickles(root / "cifar-100-python", n_train=10, n_test=5)

    monkeypatch.setattr(fetch, "torchvision_dataset", {"CIFAR100": FakeCIFAR100}.get)
    monkeypatch.setattr(fetch, "download_archive", fake_download)
    arrays = load_cifar100(tmp_path / "data", download=True)
    assert calls == [
        (FakeCIFAR100.url, tmp_path / "data", FakeCIFAR100.filename, "0123456789abcdef")
    ]
    assert arrays.train_x.shape == (10, 3, 32, 32)


def test_nothing_found_lists_the_places_looked_at(tmp_path, monkeypatch):
    monkeypatch.delenv("KDLIGHT_CIFAR100_ARCHIVE", raising=False)
    with pytest.raises(DataError) as err:
        load_cifar100(tmp_path, download=False)
    msg = str(err.value)
    assert msg.startswith("CIFAR-100 not found")
    assert str(tmp_path / "cifar-100-python") in msg and "data.download=false" in msg


# ---- the data module: CIFAR-10's behaviour with CIFAR-100's statistics ----------------------


def _dm(data_dir, **kw):
    dm = CIFAR100DataModule(
        data_dir=str(data_dir), download=False, val_size=50, batch_size=16, **kw
    )
    dm.setup()
    return dm


def test_datamodule_has_100_classes_and_cifar100_statistics(pickles):
    dm = _dm(pickles.parent, augment=False)
    assert dm.num_classes == 100 and dm.name == "cifar100"
    idx = dm.train_idx[:4]
    x = dm.view_batch(idx, None)
    raw = dm.arrays.train_x[idx].double() / 255
    mean = torch.tensor([0.5071, 0.4865, 0.4409], dtype=torch.float64).view(1, 3, 1, 1)
    std = torch.tensor([0.2673, 0.2564, 0.2762], dtype=torch.float64).view(1, 3, 1, 1)
    assert torch.allclose(x.double(), (raw - mean) / std, atol=1e-5)


def test_validation_split_and_5_percent_subset_are_stratified_and_disjoint(pickles):
    dm = _dm(pickles.parent, labeled_fraction=0.05)
    assert dm.val_idx.numel() == 50
    # 150 left after validation; 5% of them, rounded: 8 samples, at most one per class
    assert dm.train_idx.numel() == 8
    labels = dm.arrays.train_y[dm.train_idx]
    assert labels.unique().numel() == 8
    assert set(dm.train_idx.tolist()).isdisjoint(dm.val_idx.tolist())
    val_counts = torch.bincount(dm.arrays.train_y[dm.val_idx], minlength=100)
    assert val_counts.max() == 1  # 2 images per class: 50 classes give one each


def test_unlabeled_training_batches_carry_no_labels(pickles):
    dm = _dm(pickles.parent, unlabeled=True)
    assert all("y" not in b for b in dm.train_dataloader())
    assert "y" in next(iter(dm.val_dataloader()))


def test_views_cycle_the_augmentation(pickles):
    dm = _dm(pickles.parent, augment=True, views=2)
    idx = dm.train_idx[:8]
    v0, v1, v2 = (dm.view_batch(idx, v % 2) for v in range(3))
    assert torch.equal(v0, v2) and not torch.equal(v0, v1)


def test_data_config_builds_the_module_and_sizes_the_models(tiny_data_dir, make_cfg):
    from hydra.utils import instantiate

    cfg = make_cfg("data=cifar100", "model@student=resnet8x4")
    dm = instantiate(cfg.data)
    assert isinstance(dm, CIFAR100DataModule) and dm.num_classes == 100
    assert instantiate(cfg.student).fc.out_features == 100
    dm.setup()
    assert dm.arrays.source == str(tiny_data_dir / "cifar-100-python")
