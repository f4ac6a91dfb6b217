"""Image folders decoded per batch (data=image_folder|imagenet|tiny_imagenet), on trees the tests write."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torchvision.transforms as T
from PIL import Image

from kdlight.data.augment import (
    random_crop_flip,
    random_resized_crop_params,
    sample_generator,
    sample_hash,
    sample_seed,
)
from kdlight.data.datasets.imagenet import ImageNetDataModule
from kdlight.data.datasets.tiny_imagenet import TinyImageNetDataModule
from kdlight.data.modules.image_folder import Geometry, ImageFolderDataModule
from kdlight.errors import ConfigError, DataError
from tests.helpers.data import write_image_tree, write_tiny_imagenet

CLASSES = [f"n{i:08d}" for i in range(5)]


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    """5 classes x 14 training images (PNG/JPEG, 64x64 to 100x75) and 5 x 2 in val/."""
    return write_image_tree(tmp_path_factory.mktemp("imgs") / "tree")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return write_tiny_imagenet(tmp_path_factory.mktemp("tiny") / "tiny-imagenet-200")


def module(root: Path, cls=ImageFolderDataModule, **kw) -> ImageFolderDataModule:
    args = dict(root=str(root), num_classes=5, val_size=10, batch_size=8, eval_batch_size=8)
    args.update(image_size=32, num_workers=0, augment=True)
    return cls(**{**args, **kw})


def epoch(dm: ImageFolderDataModule, e: int) -> None:
    dm.trainer = SimpleNamespace(current_epoch=e)  # what current_view() reads


# ---- the augmentation: torchvision's draws, from a per-sample generator ------------------------


@pytest.mark.parametrize(("h", "w"), [(64, 64), (375, 500), (500, 120), (40, 300)])
def test_resized_crop_params_are_torchvisions_draws(h, w):
    img = torch.zeros(3, h, w)
    for seed in range(20):
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            expected = T.RandomResizedCrop.get_params(img, [0.08, 1.0], [3 / 4, 4 / 3])
        got = random_resized_crop_params(h, w, torch.Generator().manual_seed(seed))
        assert got == tuple(expected)


def test_sample_seed_is_the_batched_hash_of_one_index():
    # the per-image seed (Python ints, in loader workers) and the batched hash (int64 tensors,
    # the teacher store's pad-crop views) are one function: the store's keys rely on it
    cases = [(0, 0, 0), (7, 2, 0), (49_999, 1, 42), (2**32 + 5, 3, 2**40), (2**40 + 1, 2**31, -1)]
    for i, v, s in cases:
        assert sample_seed(i, v, s) == int(sample_hash(torch.tensor([i]), v, s)[0]), (i, v, s)
    idx = torch.randint(0, 2**62, (200,), generator=torch.Generator().manual_seed(0))
    batched = sample_hash(idx, 9, 1234).tolist()
    assert [sample_seed(int(i), 9, 1234) for i in idx] == batched
    with pytest.raises(ValueError, match="index"):
        sample_seed(-1, 0, 0)


def test_sample_generator_depends_on_seed_view_and_index_only():
    def draw(i, v, s):
        return torch.rand(4, generator=sample_generator(i, v, s))

    assert torch.equal(draw(7, 2, 0), draw(7, 2, 0))
    assert not torch.equal(draw(7, 2, 0), draw(8, 2, 0))
    assert not torch.equal(draw(7, 2, 0), draw(7, 3, 0))
    assert not torch.equal(draw(7, 2, 0), draw(7, 2, 1))


def test_training_crop_is_torchvisions_pipeline_pixel_for_pixel(tree):
    geo = Geometry(48, 55, "random_resized", (0.08, 1.0), (3 / 4, 4 / 3), True, seed=3)
    ref = T.Compose([T.RandomResizedCrop(48), T.RandomHorizontalFlip(), T.PILToTensor()])
    files = sorted((tree / "train" / CLASSES[1]).iterdir())
    flips = set()
    for i, f in enumerate(files):
        img = Image.open(f).convert("RGB")
        with torch.random.fork_rng():
            torch.manual_seed(sample_seed(i, 5, 3))
            expected = ref(img)
        got = geo(img, i, 5)
        assert torch.equal(got, expected), f
        g = sample_generator(i, 5, 3)
        random_resized_crop_params(img.height, img.width, g)
        flips.add(float(torch.rand((), generator=g)) < 0.5)
    assert flips == {True, False}  # both branches were exercised


def test_evaluation_is_resize_then_centre_crop(tree):
    geo = Geometry(48, 55, "random_resized", (0.08, 1.0), (3 / 4, 4 / 3), True, seed=0)
    ref = T.Compose([T.Resize(55), T.CenterCrop(48), T.PILToTensor()])
    sizes = set()
    for f in sorted((tree / "train" / CLASSES[0]).iterdir())[:4]:
        img = Image.open(f).convert("RGB")
        sizes.add(img.size)
        assert torch.equal(geo(img, 0, None), ref(img))
    assert len(sizes) > 1


# ---- the folder and its splits -----------------------------------------------------------------


def test_folder_classes_labels_and_splits(tree):
    dm = module(tree, labeled_fraction=0.5)
    dm.setup()
    a = dm.arrays
    assert a.classes == CLASSES
    assert len(a.train_files) == 70 and len(a.test_files) == 10
    assert a.train_y.bincount().tolist() == [14] * 5 and a.test_y.bincount().tolist() == [2] * 5
    assert a.train_files[0].decode().startswith(f"train/{CLASSES[0]}/")
    assert {Path(f.decode()).suffix for f in a.train_files} == {".png", ".jpg"}
    assert dm.val_idx.numel() == 10 and a.train_y[dm.val_idx].bincount().tolist() == [2] * 5
    assert dm.train_idx.numel() == 30 and not set(dm.train_idx.tolist()) & set(dm.val_idx.tolist())
    assert dm.input_shape == (3, 32, 32)


def test_batches_carry_what_the_engine_reads(tree):
    dm = module(tree)
    epoch(dm, 0)
    b = next(iter(dm.train_dataloader()))
    assert set(b) == {"idx", "x", "y", "view", "split"}
    assert b["x"].dtype == torch.uint8 and b["x"].shape == (8, 3, 32, 32)
    assert b["view"] == 0 and b["split"] == "train"
    assert torch.equal(b["y"], dm.arrays.train_y[b["idx"]])
    out = dm.on_after_batch_transfer(b, 0)
    assert out["x"].dtype == torch.float32 and out["x"].shape == (8, 3, 32, 32)
    t = next(iter(dm.test_dataloader()))
    assert t["view"] is None and t["split"] == "test" and t["x"].shape == (8, 3, 32, 32)


def test_drop_last_drops_the_last_smaller_training_batch(tree):
    # 70 images - 10 held out = 60 training images, batch 8: 7 full batches + 4
    sizes = {}
    for drop in (False, True):
        dm = module(tree, drop_last=drop)
        epoch(dm, 0)
        sizes[drop] = [len(b["idx"]) for b in dm.train_dataloader()]
    assert sizes[False] == [8] * 7 + [4] and sizes[True] == [8] * 7


def test_unlabeled_training_batches_have_no_labels(tree):
    dm = module(tree, unlabeled=True)
    epoch(dm, 0)
    assert "y" not in next(iter(dm.train_dataloader()))
    assert "y" in next(iter(dm.val_dataloader()))


def test_a_sample_gets_the_same_crop_whatever_batch_or_worker_count(tree):
    """(seed, view, index) decides the input: not the batch, the shuffle, nor the worker."""
    outs = []
    for workers, batch in ((0, 8), (2, 5)):
        dm = module(tree, num_workers=workers, batch_size=batch, aug_seed=1)
        epoch(dm, 3)
        got = {}
        for b in dm.train_dataloader():
            assert b["view"] == 3
            got.update({int(i): x for i, x in zip(b["idx"], b["x"], strict=True)})
        outs.append(got)
    assert outs[0].keys() == outs[1].keys() and len(outs[0]) == 60
    assert all(torch.equal(outs[0][i], outs[1][i]) for i in outs[0])
    # view_batch (what the teacher store decodes) gives the loader's exact input
    idx = torch.tensor(sorted(outs[0])[:6])
    from_loader = torch.stack([outs[0][int(i)] for i in idx])
    dm = module(tree, aug_seed=1)
    assert torch.equal(dm.view_batch(idx, 3), dm.transform(from_loader, idx, 3))
    assert not torch.equal(dm.view_batch(idx, 4), dm.view_batch(idx, 3))


def test_persistent_workers_decode_each_epoch_for_its_view(tree):
    """One loader, its workers started once, iterated over epochs 0, 1, 0 (a view is a
    function of the epoch): every batch is decoded for its epoch's view, also after an epoch
    cut short with batches still prefetched for the old view."""
    dm = module(tree, num_workers=2, batch_size=5, aug_seed=1)
    loader = dm.train_dataloader()
    assert loader.persistent_workers and loader.num_workers >= 1  # 2, or fewer CPUs
    workers = None
    for e, whole in ((0, False), (1, True), (0, True)):
        epoch(dm, e)
        it = iter(loader)
        workers = workers or [w.pid for w in it._workers]
        assert [w.pid for w in it._workers] == workers  # the same processes every epoch
        for k, b in enumerate(it):
            assert b["view"] == e
            assert torch.equal(dm.decode(b["idx"], e), b["x"])
            if not whole and k == 1:
                break  # the rest of this epoch's prefetched batches are dropped, not served later


def test_the_view_follows_the_epoch_and_the_views_setting(tree):
    dm = module(tree, views=2)
    epoch(dm, 5)
    assert next(iter(dm.train_dataloader()))["view"] == 1
    dm = module(tree, augment=False)
    epoch(dm, 5)
    b = next(iter(dm.train_dataloader()))
    assert b["view"] is None
    assert torch.equal(dm.on_after_batch_transfer(b, 0)["x"], dm.view_batch(b["idx"], None))


def test_a_batch_decoded_for_another_view_is_refused(tree):
    dm = module(tree)
    epoch(dm, 0)
    b = next(iter(dm.train_dataloader()))
    epoch(dm, 1)
    with pytest.raises(RuntimeError, match="decoded for view 0 but the epoch's view is 1"):
        dm.on_after_batch_transfer(b, 0)


def test_pad_crop_for_small_images(tiny):
    dm = module(
        tiny, TinyImageNetDataModule, num_classes=5, image_size=64, eval_resize=64, crop="pad"
    )
    epoch(dm, 2)
    b = next(iter(dm.train_dataloader()))
    plain = dm.view_batch(b["idx"], None)  # the uncropped 64 px images, normalised
    raw = torch.stack([dm.geometry(_img(dm, int(i)), int(i), None) for i in b["idx"]])
    assert torch.equal(b["x"], raw)  # the loader leaves the pad-crop to the batch transform
    x = dm.on_after_batch_transfer(b, 0)["x"]
    crop = random_crop_flip(raw, b["idx"], 2, dm.aug_seed, pad=4, flip=True)
    assert torch.equal(x, dm.transform(crop, b["idx"], None))
    assert not torch.equal(x, plain)
    assert torch.equal(dm.view_batch(b["idx"], 2), x)


def _img(dm, i: int) -> Image.Image:
    return Image.open(Path(dm.arrays.root) / dm.arrays.train_files[i].decode()).convert("RGB")


# ---- Tiny-ImageNet and ImageNet layouts --------------------------------------------------------


def test_tiny_imagenet_labels_val_from_its_annotations(tiny):
    dm = module(tiny, TinyImageNetDataModule, num_classes=5)
    dm.setup()
    a = dm.arrays
    assert a.classes == CLASSES and len(a.train_files) == 70
    assert a.train_files[0].decode() == f"train/{CLASSES[0]}/images/{CLASSES[0]}_0000.jpg"
    lines = (tiny / "val" / "val_annotations.txt").read_text().split("\n")
    truth = {ln.split("\t")[0]: CLASSES.index(ln.split("\t")[1]) for ln in lines if ln}
    got = {Path(f.decode()).name: int(y) for f, y in zip(a.test_files, a.test_y, strict=True)}
    assert got == truth
    assert dm.name == "tiny_imagenet"


def test_tiny_imagenet_bad_annotation_is_named(tiny, tmp_path):
    import shutil

    root = tmp_path / "t"
    shutil.copytree(tiny, root)
    table = root / "val" / "val_annotations.txt"
    table.write_text(table.read_text() + "val_99.JPEG\tn00000001\t0\t0\t1\t1\n")
    with pytest.raises(DataError, match=r"line 11 of .*val_annotations.txt names val_99.JPEG"):
        module(root, TinyImageNetDataModule, num_classes=5).setup()
    table.unlink()
    with pytest.raises(DataError, match="has no val_annotations.txt"):
        module(root, TinyImageNetDataModule, num_classes=5).setup()


def test_imagenet_reads_the_class_folder_tree(tree):
    dm = module(tree, ImageNetDataModule)
    dm.setup()
    assert dm.name == "imagenet" and dm.arrays.classes == CLASSES


# ---- errors a user can cause -------------------------------------------------------------------


def test_a_link_leaving_the_tree_is_refused(tree, tmp_path):
    import shutil

    root = tmp_path / "t"
    shutil.copytree(tree, root)
    inside = root / "train" / CLASSES[0] / "same.png"
    os.symlink(
        root / "train" / CLASSES[1] / sorted(os.listdir(root / "train" / CLASSES[1]))[0], inside
    )
    module(root).setup()  # a link within the tree is fine
    outside = tmp_path / "elsewhere.png"
    Image.new("RGB", (8, 8)).save(outside)
    os.symlink(outside, root / "train" / CLASSES[0] / "out.png")
    with pytest.raises(DataError, match="is a link to .*outside the folder"):
        module(root).setup()


def test_folder_errors_are_one_sentence(tree, tmp_path):
    with pytest.raises(DataError, match=r"does not exist or is not a folder; set data.root"):
        module(tmp_path / "nope").setup()
    (tmp_path / "a" / "train" / "cat").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(tmp_path / "a" / "train" / "cat" / "1.png")
    with pytest.raises(DataError, match=r"has no val/ or test/ folder"):
        module(tmp_path / "a").setup()
    (tmp_path / "a" / "val" / "dog").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(tmp_path / "a" / "val" / "dog" / "1.png")
    with pytest.raises(DataError, match=r"val/dog is not among the 1 training classes"):
        module(tmp_path / "a").setup()
    with pytest.raises(DataError, match=r"has 5 classes but data.num_classes=3"):
        module(tree, num_classes=3).setup()


def test_a_corrupt_image_is_named(tree, tmp_path):
    import shutil

    root = tmp_path / "t"
    shutil.copytree(tree, root)
    bad = sorted((root / "train" / CLASSES[0]).iterdir())[0]
    bad.write_bytes(b"not an image")
    dm = module(root, augment=False)
    with pytest.raises(DataError, match=f"image {bad} is corrupt"):
        dm.view_batch(torch.tensor([0]), None)


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"crop": "centre"}, "data.crop='centre' is invalid; valid: random_resized, pad"),
        ({"image_size": 64, "eval_resize": 32}, "eval_resize >= image_size"),
        ({"scale": (0.5, 0.2)}, "scale needs 0 < min <= max <= 1"),
        ({"num_workers": -1}, "num_workers=-1 is invalid"),
    ],
)
def test_bad_settings_are_config_errors(tree, kw, match):
    with pytest.raises(ConfigError, match=match):
        module(tree, **kw)


# ---- identity (teacher and store keys) ---------------------------------------------------------


def test_fingerprint_and_transform_key_follow_what_decides_the_input(tree, tmp_path):
    import shutil

    a, b = module(tree), module(tree, scale=(0.5, 1.0))
    assert a.fingerprint() == b.fingerprint()
    assert a.transform_key() != b.transform_key()
    assert module(tree, augment=False).transform_key()["scale"] is None
    root = tmp_path / "t"
    shutil.copytree(tree, root)
    (root / "train" / CLASSES[0] / sorted(os.listdir(root / "train" / CLASSES[0]))[0]).unlink()
    assert module(root).fingerprint() != a.fingerprint()
