"""Image folders and shards as someone else left them: corrupt files read by workers, looping
links, file names that are not UTF-8, damaged shards, killed and concurrent conversions."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

from kdlight.data.formats.image_tree import load_image_folder
from kdlight.data.modules.image_folder import ImageFolderDataModule
from kdlight.errors import DataError, KdlightError
from kdlight.io import try_lock
from tests.helpers.data import write_image_folder, write_image_tree

CLASSES = [f"n{i:08d}" for i in range(5)]
LATIN1 = b"caf\xe9.png"  # a Latin-1 name: not valid UTF-8


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("KDLIGHT_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    return write_image_tree(tmp_path_factory.mktemp("imgs") / "tree")


@pytest.fixture
def copy(tree, tmp_path) -> Path:
    root = tmp_path / "t"
    shutil.copytree(tree, root)
    return root


def folder(root, **kw) -> ImageFolderDataModule:
    args = dict(root=str(root), val_size=10, batch_size=8, eval_batch_size=8, image_size=32)
    return ImageFolderDataModule(**{**args, "num_workers": 0, "augment": False, **kw})


def test_a_corrupt_image_read_by_a_worker_is_one_sentence_naming_it(copy):
    bad = sorted((copy / "val" / CLASSES[3]).iterdir())[0]
    bad.write_bytes(b"\xff\xd8\xff not really a JPEG")
    dm = folder(copy, num_workers=1, eval_batch_size=50)
    with pytest.raises(DataError) as err:
        list(dm.test_dataloader())
    msg = str(err.value)
    assert msg.startswith(f"image {bad} is corrupt") and "\n" not in msg and "Traceback" not in msg


@pytest.mark.parametrize("where", ["file", "class folder"])
def test_a_looping_link_is_named(copy, where):
    link = copy / "train" / CLASSES[0] / "loop.png" if where == "file" else copy / "train" / "zz"
    os.symlink(link.name, link)
    with pytest.raises(
        DataError, match=rf"{link} in the image folder .* is a symbolic link that loops"
    ):
        folder(copy).setup()


def test_a_looping_link_in_a_tree_decoded_whole_is_named(tmp_path):
    root = write_image_folder(tmp_path / "cf", n_train=20, n_test=10)
    link = root / "train" / "cat" / "loop.png"
    os.symlink("loop.png", link)
    with pytest.raises(DataError, match=r"loop.png in the image folder .* loops"):
        load_image_folder(root, cache_dir=tmp_path / "c")


def test_a_file_name_that_is_not_utf8_is_read(copy, tmp_path):
    src = sorted((copy / "train" / CLASSES[1]).iterdir())[0]
    shutil.copy(src, os.path.join(os.fsencode(copy / "train" / CLASSES[1]), LATIN1))
    dm = folder(copy)
    dm.setup()
    i = [os.fsencode(n).endswith(LATIN1) for n in map(os.fsdecode, dm.arrays.train_files)]
    row = torch.tensor([i.index(True)])
    assert dm.view_batch(row, None).shape == (1, 3, 32, 32)
    assert len(dm.fingerprint()) == 16
    whole = write_image_folder(tmp_path / "cf", n_train=20, n_test=10)
    cat = os.fsencode(whole / "train" / "cat")
    shutil.copy(next(Path(os.fsdecode(cat)).iterdir()), os.path.join(cat, LATIN1))
    assert load_image_folder(whole, cache_dir=tmp_path / "c").train_x.shape[0] == 21


# ---- shards ----------------------------------------------------------------------------------


@pytest.fixture
def shards(copy, tmp_path) -> Path:
    pytest.importorskip("litdata")
    from kdlight.data.shards.convert import convert

    src = sorted((copy / "train" / CLASSES[1]).iterdir())[0]
    shutil.copy(src, os.path.join(os.fsencode(copy / "train" / CLASSES[1]), LATIN1))
    convert(copy, tmp_path / "out", progress=False)
    return tmp_path / "out"


def test_shards_of_a_non_utf8_name_read_like_the_folder(copy, shards):
    a, b = folder(copy), folder("/nonexistent", shards=str(shards))
    b.setup()
    assert a.fingerprint() == b.fingerprint()
    assert torch.equal(b.view_batch(torch.arange(20), None), a.view_batch(torch.arange(20), None))


@pytest.mark.parametrize("damage", ["truncated", "missing"])
def test_a_damaged_chunk_is_named_before_litdata_waits_for_it(shards, damage):
    chunk = next((shards / "train").glob("*.bin"))
    if damage == "missing":
        chunk.unlink()
    else:
        chunk.write_bytes(chunk.read_bytes()[:-10])
    what = "is missing" if damage == "missing" else r"has \d+ bytes"
    with pytest.raises(DataError, match=rf"is damaged: {chunk} {what} but train/index.json lists"):
        folder("/nonexistent", shards=str(shards)).setup()


def test_a_killed_conversions_partial_folder_is_removed_by_the_next(copy, tmp_path):
    pytest.importorskip("litdata")
    from kdlight.data.shards.convert import convert

    left = tmp_path / ".out.partial-999999"
    (left / "train").mkdir(parents=True)
    (left / "train" / "chunk-0-0.bin").write_bytes(b"half")
    convert(copy, tmp_path / "out", progress=False)
    assert not left.exists() and (tmp_path / "out" / "kdlight_shards.json").is_file()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out.partial")] == []


def test_a_second_conversion_into_one_folder_is_refused_while_the_first_runs(copy, tmp_path):
    pytest.importorskip("litdata")
    from kdlight.data.shards.convert import convert

    held = try_lock(tmp_path / ".out.kdlight-shards.lock", "pid 4242")
    try:
        with pytest.raises(KdlightError, match=r"another kdlight-shards convert \(pid 4242\) is"):
            convert(copy, tmp_path / "out", progress=False)
        assert not (tmp_path / "out").exists()
    finally:
        held.close()
    convert(copy, tmp_path / "out", progress=False)  # once it has ended


def test_a_missing_chunk_of_remote_shards_is_one_sentence(shards, tmp_path):
    next((shards / "train").glob("*.bin")).unlink()
    dm = folder("/nonexistent", shards=f"local:{shards}")  # a URL: chunks come on demand
    dm.setup()
    with pytest.raises(DataError, match=r"cannot read train/.* from shards local:.*; copy the"):
        dm.view_batch(torch.tensor([5]), None)
