"""What a data module says about its data: the fingerprint (every byte), the class count, the
channels, and an evaluation order whose every prefix holds every class."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from kdlight.data.datasets.mnist import MNISTDataModule
from kdlight.data.formats import digest
from kdlight.data.formats.arrays import ImageArrays
from kdlight.data.modules.array import ArrayDataModule
from kdlight.data.modules.image_folder import ImageFolderDataModule
from kdlight.data.subsets import class_interleaved
from kdlight.errors import ConfigError, DataError
from tests.helpers.data import write_class_images, write_image_tree, write_mnist_like

CLASSES = [f"n{i:08d}" for i in range(5)]


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    """Digests are cached per test: what one test hashed never answers another."""
    monkeypatch.setenv("KDLIGHT_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    return write_image_tree(tmp_path_factory.mktemp("imgs") / "tree")


class Sorted(ArrayDataModule):
    """Class-sorted toy arrays (as CIFAR's image-folder archive decodes): 4 classes x 30."""

    name = "sorted"

    def __init__(self, x=None, **kw):
        super().__init__(val_size=40, eval_batch_size=8, num_classes=4, **kw)
        y = torch.arange(4).repeat_interleave(30)
        x = torch.randint(0, 255, (120, 1, 4, 4), dtype=torch.uint8) if x is None else x
        self._arrays = ImageArrays(x, y, x.clone(), y.clone(), ["a", "b", "c", "d"])

    def load_arrays(self):
        return self._arrays


def folder(root, **kw) -> ImageFolderDataModule:
    args = dict(root=str(root), val_size=10, batch_size=8, eval_batch_size=8, image_size=32)
    return ImageFolderDataModule(**{**args, "num_workers": 0, **kw})


# ---- the fingerprint covers every byte ---------------------------------------------------------


def test_one_pixel_changes_the_array_fingerprint():
    x = torch.randint(0, 255, (120, 1, 4, 4), dtype=torch.uint8)
    changed = x.clone()
    changed[77, 0, 3, 1] ^= 1  # one bit of one pixel, far from any stride the old hash sampled
    assert Sorted(x).fingerprint() == Sorted(x.clone()).fingerprint()
    assert Sorted(changed).fingerprint() != Sorted(x).fingerprint()


def test_idx_files_are_hashed_once_then_served_from_the_cache(tmp_path, monkeypatch):
    write_mnist_like(tmp_path / "d", n_train=300, n_test=50)

    def dm():
        from kdlight.data.datasets import mnist

        mnist._CACHE.clear()  # the in-process cache of decoded arrays
        return MNISTDataModule(data_dir=str(tmp_path / "d"), download=False, val_size=50)

    first = dm().fingerprint()
    calls = []
    monkeypatch.setattr(digest, "array_digest", lambda *a: calls.append(1) or "0" * 64)
    assert dm().fingerprint() == first and calls == []  # same path, size, mtime: not re-read
    monkeypatch.undo()
    monkeypatch.setenv("KDLIGHT_CACHE_DIR", str(tmp_path / "cache"))
    images = tmp_path / "d" / "fashion_mnist" / "train-images-idx3-ubyte.gz"
    import gzip

    raw = bytearray(gzip.decompress(images.read_bytes()))
    raw[16 + 28 * 28 * 150 + 400] ^= 1  # one pixel of image 150
    images.write_bytes(gzip.compress(bytes(raw)))
    assert dm().fingerprint() != first


def test_one_pixel_changes_the_folder_fingerprint_and_the_cache_skips_unchanged_files(
    tree, tmp_path, monkeypatch
):
    root = tmp_path / "t"
    shutil.copytree(tree, root)
    first = folder(root).fingerprint()
    reads = []
    real = digest._hash_file
    monkeypatch.setattr(digest, "_hash_file", lambda p: reads.append(os.fsdecode(p)) or real(p))
    assert folder(root).fingerprint() == first and reads == []
    png = next(p for p in sorted((root / "train" / CLASSES[2]).iterdir()) if p.suffix == ".png")
    img = np.array(Image.open(png))
    img[5, 7, 1] ^= 1
    Image.fromarray(img).save(png)
    assert folder(root).fingerprint() != first
    assert reads == [str(png)]  # only the changed file was read again


def test_shards_have_their_folders_fingerprint_and_refuse_a_changed_image(tree, tmp_path):
    pytest.importorskip("litdata")
    from kdlight.data.shards.convert import convert

    convert(tree, tmp_path / "out", progress=False)
    shards = folder("/nonexistent", shards=str(tmp_path / "out"))
    assert shards.fingerprint() == folder(tree).fingerprint()
    chunk = next((tmp_path / "out" / "train").glob("*.bin"))
    data = bytearray(chunk.read_bytes())
    data[-100] ^= 0xFF  # inside the last image's bytes; the chunk keeps its size
    chunk.write_bytes(bytes(data))
    shards = folder("/nonexistent", shards=str(tmp_path / "out"))
    last = len(shards.arrays.train_files) - 1 if shards.setup() is None else None
    with pytest.raises(DataError, match=r"is not the image converted .*convert the image folder"):
        shards.view_batch(torch.tensor([last]), None)


# ---- the class count and the test split --------------------------------------------------------


def test_num_classes_is_counted_when_null_and_a_differing_one_is_refused(tree):
    dm = folder(tree, num_classes=None)
    dm.setup()
    assert dm.num_classes == 5
    for wrong in (3, 7):
        with pytest.raises(DataError, match=rf"has 5 classes but data.num_classes={wrong}; set "):
            folder(tree, num_classes=wrong).setup()
    with pytest.raises(ConfigError, match=r"data.num_classes=0 is invalid"):
        folder(tree, num_classes=0)
    arrays = Sorted()
    arrays.num_classes = None
    arrays.setup()
    assert arrays.num_classes == 4


def test_a_test_split_missing_a_class_is_refused(tmp_path):
    root = tmp_path / "t"
    write_class_images(root / "train", CLASSES, 4, seed=0)
    write_class_images(root / "val", CLASSES[:4], 2, seed=1)
    shutil.rmtree(root / "val" / CLASSES[4], ignore_errors=True)
    with pytest.raises(DataError, match=rf"no val/ \(or test/\) images of class '{CLASSES[4]}'"):
        folder(root, val_size=5).setup()


def test_channels_follow_the_data(tmp_path):
    write_mnist_like(tmp_path / "d")
    grey = MNISTDataModule(data_dir=str(tmp_path / "d"), download=False, val_size=50)
    assert grey.channels == 1 and grey.input_shape == (1, 28, 28)
    assert folder(tmp_path).channels == 3  # image folders decode to RGB


# ---- evaluation order ----------------------------------------------------------------------------


def test_the_first_eval_batch_holds_several_classes_and_the_full_set_is_unchanged():
    dm = Sorted()
    dm.setup()
    for split, rows in (("val", dm.val_idx), ("test", torch.arange(120))):
        loader = dm.val_dataloader() if split == "val" else dm.test_dataloader()
        batches = list(loader)
        assert batches[0]["y"].unique().numel() == 4  # 8 rows: two of each class
        assert sorted(torch.cat([b["idx"] for b in batches]).tolist()) == sorted(rows.tolist())
        assert torch.equal(
            torch.cat([b["idx"] for b in loader]), torch.cat([b["idx"] for b in batches])
        )


def test_the_first_image_folder_eval_batch_holds_several_classes(tree):
    dm = folder(tree, num_classes=5, eval_batch_size=5)
    assert next(iter(dm.test_dataloader()))["y"].unique().numel() == 5
    assert next(iter(dm.val_dataloader()))["y"].unique().numel() == 5


def test_class_interleaving_keeps_each_prefix_in_proportion():
    y = torch.tensor([0] * 60 + [1] * 30 + [2] * 10)
    order = class_interleaved(torch.arange(100), y)
    assert sorted(order.tolist()) == list(range(100))
    first = y[order[:10]].bincount(minlength=3).tolist()
    assert first == [6, 3, 1]
    assert torch.equal(order, class_interleaved(torch.arange(100), y))  # no seed, no state


def test_a_digest_cache_that_is_not_ours_is_ignored(tmp_path):
    cache = digest.digest_dir()
    cache.mkdir(parents=True)
    (tmp_path / "a").write_bytes(b"abc")
    for bad in ("not json", '{"version": 1, "files": []}', '{"version": 1, "files": {"a": 3}}'):
        for f in cache.glob("files-*"):
            f.unlink()
        digest.file_digests(tmp_path, [b"a"])  # writes the real cache file name
        (next(cache.glob("files-*"))).write_text(bad)
        assert digest.file_digests(tmp_path, [b"a"]) == [digest.hash_bytes(b"abc")]
    os.chmod(cache, 0o500)
    try:  # an unwritable cache only costs a re-read
        assert digest.file_digests(tmp_path, [b"a"]) == [digest.hash_bytes(b"abc")]
    finally:
        os.chmod(cache, 0o700)
