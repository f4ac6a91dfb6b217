"""Image folders as LitData shards (kdlight-shards convert, data.shards=OUT), on trees the tests write."""

from __future__ import annotations

import json
import os
import pickle
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from kdlight.cli.shards import main
from kdlight.data.datasets.tiny_imagenet import TinyImageNetDataModule
from kdlight.data.modules.image_folder import ImageFolderDataModule
from kdlight.data.shards.convert import convert
from kdlight.data.shards.read import MANIFEST, ShardImages
from kdlight.errors import DataError, KdlightError
from tests.helpers.data import write_class_images, write_tiny_imagenet
from tests.helpers.hostile import RunsCode

pytest.importorskip("litdata")

CLASSES = [f"n{i:08d}" for i in range(5)]


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    """5 classes x 40 training images (PNG/JPEG alternating, 64x64 to 100x75) and 5 x 3 in val/."""
    root = tmp_path_factory.mktemp("imgs") / "tree"
    write_class_images(root / "train", CLASSES, 40, seed=0)
    write_class_images(root / "val", CLASSES, 3, seed=1)
    return root


@pytest.fixture(scope="module")
def out(tree, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("shards") / "out"
    convert(tree, path, progress=False)
    return path


def module(root: Path | None, shards: Path | None = None, **kw) -> ImageFolderDataModule:
    args = dict(num_classes=5, val_size=10, batch_size=8, eval_batch_size=8, image_size=32)
    args.update(num_workers=0, augment=True, aug_seed=1)
    root = root if root is not None else "/nonexistent"  # shards: root is never read
    return ImageFolderDataModule(root=str(root), shards=shards and str(shards), **{**args, **kw})


def epoch(dm, e: int) -> None:
    dm.trainer = SimpleNamespace(current_epoch=e)  # what current_view() reads


def by_index(dm, split: str = "train") -> dict[int, tuple[torch.Tensor, int | None]]:
    loader = {"train": dm.train_dataloader, "val": dm.val_dataloader, "test": dm.test_dataloader}
    got = {}
    for b in loader[split]():
        ys = b["y"].tolist() if "y" in b else [None] * len(b["idx"])
        got.update({int(i): (x, y) for i, x, y in zip(b["idx"], b["x"], ys, strict=True)})
    return got


# ---- the conversion keeps the folder's samples -------------------------------------------------


def test_shards_hold_the_folders_samples_labels_and_bytes_in_order(tree, out):
    # expected from the tree itself: sorted class folders, sorted file names within each
    def listing(split):
        names, labels = [], []
        for y, cls in enumerate(CLASSES):
            for f in sorted(os.listdir(tree / split / cls)):
                names.append(f"{split}/{cls}/{f}")
                labels.append(y)
        return names, labels

    dm = module(None, out)
    dm.setup()
    a = dm.arrays
    assert a.classes == CLASSES
    for files, ys, split in ((a.train_files, a.train_y, "train"), (a.test_files, a.test_y, "val")):
        names, labels = listing(split)
        assert [f.decode() for f in files] == names and ys.tolist() == labels
    assert len(a.train_files) == 200 and len(a.test_files) == 15
    train = ShardImages(out, "train", a.train_files)
    test = ShardImages(out, "test", a.test_files)
    for i in (0, 1, 77, 199):  # the file's own bytes: nothing re-encoded
        assert train.read(i) == (tree / a.train_files[i].decode()).read_bytes()
    assert test.read(14) == (tree / a.test_files[14].decode()).read_bytes()
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["layout"] == "image_folder" and manifest["source"] == str(tree.resolve())


def test_a_sample_is_the_same_input_from_the_folder_and_the_shards(tree, out, monkeypatch):
    """Same (seed, view, index) -> same crop, from files or shards, whatever batch or worker count."""
    monkeypatch.setenv("PL_GLOBAL_SEED", "7")  # the same shuffle for every loader
    folder = module(tree)
    epoch(folder, 3)
    ref = by_index(folder)
    assert len(ref) == 190
    for workers, batch in ((0, 8), (2, 5)):
        dm = module(None, out, num_workers=workers, batch_size=batch)
        epoch(dm, 3)
        got = by_index(dm)
        assert got.keys() == ref.keys()
        assert all(torch.equal(got[i][0], ref[i][0]) and got[i][1] == ref[i][1] for i in ref)
    # the same batches in the same order, and view_batch (what a store fill decodes)
    dm = module(None, out)
    epoch(dm, 3)
    b_folder, b_shards = next(iter(folder.train_dataloader())), next(iter(dm.train_dataloader()))
    assert torch.equal(b_folder["idx"], b_shards["idx"]) and torch.equal(
        b_folder["x"], b_shards["x"]
    )
    idx = torch.tensor([0, 5, 101, 150, 199])
    assert torch.equal(dm.view_batch(idx, 3), folder.view_batch(idx, 3))
    assert not torch.equal(dm.view_batch(idx, 4), dm.view_batch(idx, 3))
    for split in ("val", "test"):  # evaluation: resize + centre crop, labels
        ev, ev_ref = by_index(dm, split), by_index(folder, split)
        assert ev.keys() == ev_ref.keys()
        assert all(torch.equal(ev[i][0], ev_ref[i][0]) and ev[i][1] == ev_ref[i][1] for i in ev)
    assert dm.transform_key() == folder.transform_key()
    assert dm.input_shape == folder.input_shape == (3, 32, 32)


@pytest.mark.parametrize(
    "kw",
    [
        {"labeled_fraction": 0.05},
        {"unlabeled": True},
        {"val_size": 25, "split_seed": 3},
        {"augment": False, "views": 2},
        {"crop": "pad", "image_size": 48, "eval_resize": 48},
    ],
)
def test_splits_and_options_are_the_folders(tree, out, kw, monkeypatch):
    monkeypatch.setenv("PL_GLOBAL_SEED", "5")
    folder, dm = module(tree, **kw), module(None, out, **kw)
    folder.setup()
    dm.setup()
    assert torch.equal(dm.train_idx, folder.train_idx) and torch.equal(dm.val_idx, folder.val_idx)
    epoch(folder, 3)
    epoch(dm, 3)
    b_f, b_s = next(iter(folder.train_dataloader())), next(iter(dm.train_dataloader()))
    assert ("y" in b_s) == ("y" in b_f) == (not kw.get("unlabeled", False))
    assert b_s["view"] == b_f["view"] and torch.equal(b_s["idx"], b_f["idx"])
    x_f = folder.on_after_batch_transfer(b_f, 0)["x"]
    assert torch.equal(dm.on_after_batch_transfer(b_s, 0)["x"], x_f)
    if kw.get("labeled_fraction"):
        # 5% of the 190 left after the 10 held out: 10 samples, 2 per class
        assert dm.train_idx.numel() == 10
        assert dm.arrays.train_y[dm.train_idx].bincount().tolist() == [2] * 5


def test_tiny_imagenet_layout_converts_with_its_val_labels(tmp_path):
    tiny = write_tiny_imagenet(tmp_path / "tiny-imagenet-200")
    manifest = convert(tiny, tmp_path / "out", progress=False)
    assert manifest["layout"] == "tiny_imagenet"
    ref = TinyImageNetDataModule(root=str(tiny), num_classes=5, val_size=10)
    dm = TinyImageNetDataModule(
        root="unused", shards=str(tmp_path / "out"), num_classes=5, val_size=10
    )
    ref.setup()
    dm.setup()
    assert dm.arrays.test_files.tolist() == ref.arrays.test_files.tolist()
    assert torch.equal(dm.arrays.test_y, ref.arrays.test_y)
    assert torch.equal(
        dm.view_batch(torch.arange(10), None, "test"),
        ref.view_batch(torch.arange(10), None, "test"),
    )


def test_fingerprint_follows_the_samples(tree, out, tmp_path):
    a, b = module(None, out), module(None, out, scale=(0.5, 1.0))
    assert a.fingerprint() == b.fingerprint()
    root = tmp_path / "t"
    shutil.copytree(tree, root)
    (root / "train" / CLASSES[0] / sorted(os.listdir(root / "train" / CLASSES[0]))[0]).unlink()
    convert(root, tmp_path / "out2", progress=False)
    assert module(None, tmp_path / "out2").fingerprint() != a.fingerprint()


# ---- nothing from the shards is executed --------------------------------------------------------


def test_a_shard_holding_pickles_is_refused_without_unpickling(out, tmp_path):
    from litdata.streaming import Cache

    marker = tmp_path / "ran"
    bad = tmp_path / "bad"
    shutil.copytree(out, bad)
    shutil.rmtree(bad / "train")
    cache = Cache(input_dir=str(bad / "train"), chunk_bytes="1MB")
    n = len(json.loads((bad / MANIFEST).read_text())["splits"]["train"]["files"])
    for i in range(n):
        cache[i] = {"index": i, "label": 0, "image": RunsCode(Path.touch, marker)}
    cache.done()
    cache.merge()
    config = json.loads((bad / "train" / "index.json").read_text())["config"]
    assert config["data_format"][-1] == "pickle"  # what an attacker's shard would declare
    with pytest.raises(DataError, match="shards of another layout"):
        module(None, bad).setup()
    # even past the manifest check, the reader has no pickle deserialiser
    reader = ShardImages(bad, "train", module(None, out).load_files().train_files)
    with pytest.raises(DataError, match="'pickle' items, which kdlight does not read"):
        reader.read(0)
    assert not marker.exists()
    assert pickle.loads(pickle.dumps(reader)).folder == reader.folder  # travels to workers


# ---- errors a user can cause --------------------------------------------------------------------


def test_convert_refuses_an_out_that_holds_something(tree, tmp_path):
    held = tmp_path / "held"
    held.mkdir()
    (held / "notes.txt").write_text("keep me\n")
    with pytest.raises(KdlightError, match=r"OUT .*held already holds 1 entry \(notes.txt\)"):
        convert(tree, held, progress=False)
    assert (held / "notes.txt").read_text() == "keep me\n" and os.listdir(held) == ["notes.txt"]
    afile = tmp_path / "afile"
    afile.write_text("x")
    with pytest.raises(KdlightError, match="is a file, not a folder"):
        convert(tree, afile, progress=False)
    assert afile.read_text() == "x"
    with pytest.raises(KdlightError, match="is inside SRC"):
        convert(tree, tree / "shards", progress=False)
    assert not (tree / "shards").exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    convert(tree, empty, progress=False)  # an empty folder is fine
    assert sorted(os.listdir(empty)) == [MANIFEST, "train", "val"]
    assert [p for p in os.listdir(tmp_path) if "partial" in p] == []


def test_convert_errors_name_the_bad_input(tree, tmp_path):
    with pytest.raises(DataError, match=r"SRC .*nope does not exist or is not a folder; give"):
        convert(tmp_path / "nope", tmp_path / "o1", progress=False)
    root = tmp_path / "t"
    shutil.copytree(tree, root)
    bad = root / "train" / CLASSES[2] / "zz_bad.jpg"
    bad.write_bytes(b"not an image")
    with pytest.raises(DataError, match=f"image {bad} is corrupt or not a JPEG/PNG \\(no JPEG/PNG"):
        convert(root, tmp_path / "o2", progress=False)
    assert not (tmp_path / "o2").exists()  # nothing half-written left behind
    assert [p for p in os.listdir(tmp_path) if "partial" in p] == []


def test_cli_prints_one_line_and_exits_2_on_a_user_error(tree, tmp_path, capsys):
    assert main(["convert", str(tree), str(tmp_path / "o"), "--quiet"]) == 0
    assert "wrote 200 train/ and 15 val/ images of 5 classes" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:
        main(["convert", str(tree), str(tmp_path / "o"), "--quiet"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert (
        len(err) == 1 and err[0].startswith("error: OUT ") and "already holds 3 entries" in err[0]
    )


def test_reading_errors_name_the_folder(out, tmp_path):
    with pytest.raises(DataError, match=r"data.shards=.*nope does not exist or is not a folder"):
        module(None, tmp_path / "nope").setup()
    (tmp_path / "plain").mkdir()
    with pytest.raises(DataError, match=f"holds no {MANIFEST}; set it to a folder written by"):
        module(None, tmp_path / "plain").setup()
    broken = tmp_path / "broken"
    shutil.copytree(out, broken)
    m = json.loads((broken / MANIFEST).read_text())
    m["splits"]["train"]["labels"] = m["splits"]["train"]["labels"][:-1]
    (broken / MANIFEST).write_text(json.dumps(m))
    with pytest.raises(DataError, match="has a kdlight_shards.json kdlight cannot read"):
        module(None, broken).setup()
    with pytest.raises(DataError, match=r"has 5 classes but data.num_classes=3"):
        module(None, out, num_classes=3).setup()
    with pytest.raises(DataError, match=r"data.shards=local:.*nope could not be read"):
        module(None, f"local:{tmp_path / 'nope'}").setup()


def test_remote_shards_are_downloaded_and_read_alike(tree, out, tmp_path, monkeypatch):
    """A URL goes through LitData's downloader (``local:`` is its test backend, as s3:// or gs://)."""
    monkeypatch.setenv("KDLIGHT_CACHE_DIR", str(tmp_path / "cache"))
    url = f"local:{out}"
    remote, folder = module(None, url, num_workers=2), module(tree)
    epoch(remote, 2)
    epoch(folder, 2)
    got, ref = by_index(remote), by_index(folder)
    assert got.keys() == ref.keys()
    assert all(torch.equal(got[i][0], ref[i][0]) and got[i][1] == ref[i][1] for i in ref)
    assert remote.arrays.root == url and remote.fingerprint() == module(None, out).fingerprint()
    cached = {p.name for p in (tmp_path / "cache" / "shards").rglob("*") if p.is_file()}
    assert MANIFEST in cached and any(n.endswith(".bin") for n in cached)  # chunks downloaded


def test_a_corrupt_image_in_a_shard_is_named(tree, tmp_path):
    root = tmp_path / "t"
    shutil.copytree(tree, root)
    victim = sorted((root / "train" / CLASSES[0]).glob("*.jpg"))[0]
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) * 2 // 3])  # the header parses, the pixels are cut off
    convert(root, tmp_path / "o", progress=False)
    dm = module(None, tmp_path / "o", augment=False)
    dm.setup()
    i = [f.decode() for f in dm.arrays.train_files].index(victim.relative_to(root).as_posix())
    with pytest.raises(DataError, match=f"image {victim.relative_to(root).as_posix()} in shards"):
        dm.view_batch(torch.tensor([i]), None)
