"""kdlight.run.read and kdlight.io: what a saved config may build, paths kept inside a run folder,
one key hash, and a read-only teacher store that holds what a run needs."""

from __future__ import annotations

import pytest
import torch

from kdlight import io
from kdlight.models.mlp import MLP
from kdlight.run import read as runs
from tests.helpers.runs import write_run


@pytest.mark.parametrize(
    "target",
    [
        "os.system",
        "torch.load",
        "builtins.eval",
        "kdlight.models.mlp.torch.load",  # an attribute walk out of an allowed module
        "kdlight.models.mlp.nn.Module",  # imported into an allowed module, defined elsewhere
        "kdlight.run.train.run",
        "kdlight.models.mlp._private",
    ],
)
def test_a_saved_config_cannot_build_anything_but_a_network(target):
    with pytest.raises(runs.RunFolderError, match="refused"):
        runs.safe_instantiate({"_target_": target}, where="student")


def test_a_nested_target_is_checked_before_anything_is_built(tmp_path):
    marker = tmp_path / "ran"
    node = {**MLP_NODE, "hidden": {"_target_": "os.system", "_args_": [f"touch {marker}"]}}
    with pytest.raises(runs.RunFolderError, match=r"student\.hidden\._target_"):
        runs.safe_instantiate(node, where="student")
    assert not marker.exists()


MLP_NODE = {"_target_": "kdlight.models.mlp.MLP", "in_features": 784, "hidden": [8]}


def test_kdlight_and_torchvision_networks_are_built():
    assert isinstance(runs.safe_instantiate(MLP_NODE), MLP)
    net = runs.safe_instantiate({"_target_": "torchvision.models.resnet18", "num_classes": 3})
    assert net.fc.out_features == 3


def _run(tmp_path, metrics=None, recorded=None):
    hydra = None
    if recorded:
        hydra = {"hydra": {"runtime": {"output_dir": str(recorded), "cwd": str(tmp_path)}}}
    return write_run(
        tmp_path / "run",
        {"student": MLP_NODE},
        checkpoints={"best-epoch001.ckpt": {"x": torch.zeros(1)}},
        metrics=metrics or None,
        hydra=hydra,
    )


def test_a_moved_run_folder_finds_its_own_checkpoint(tmp_path):
    old = tmp_path / "old-place"
    run = _run(tmp_path, {"best_checkpoint": str(old / "checkpoints" / "best-epoch001.ckpt")}, old)
    opened, ckpt = runs.open_run(run)
    assert ckpt == (run / "checkpoints" / "best-epoch001.ckpt").resolve()


def test_paths_leading_out_of_the_run_folder_are_refused(tmp_path):
    other = tmp_path / "other.ckpt"
    torch.save({"x": torch.zeros(1)}, other)
    run = _run(tmp_path, {"best_checkpoint": "../other.ckpt"})
    with pytest.raises(runs.RunFolderError, match="outside the run folder"):
        runs.open_run(run)


def test_one_key_hash_everywhere():
    from kdlight.run.teacher import key_hash
    from kdlight.teacher.store import TeacherLogitStore

    key = {"b": [1, 2], "a": "x"}
    assert key_hash is io.key_hash
    assert len(io.key_hash(key)) == 16 and io.key_hash(key) == io.key_hash(
        dict(reversed(key.items()))
    )
    assert TeacherLogitStore.__init__.__globals__["key_hash"] is io.key_hash


def test_try_lock_is_exclusive_and_names_its_holder(tmp_path):
    held = io.try_lock(tmp_path / "x.lock", "pid 1")
    assert held is not None and io.lock_note(tmp_path / "x.lock") == "pid 1"
    import subprocess
    import sys

    code = "import sys; from kdlight.io import try_lock; sys.exit(try_lock(sys.argv[1]) is None)"
    assert subprocess.run([sys.executable, "-c", code, str(tmp_path / "x.lock")]).returncode == 1
    held.close()
    assert subprocess.run([sys.executable, "-c", code, str(tmp_path / "x.lock")]).returncode == 0


def test_a_read_only_store_serves_a_stored_teacher(make_cfg, monkeypatch, tmp_path):
    """A stored teacher is read without opening the store's lock file for writing."""
    from hydra.utils import instantiate

    from kdlight.run import teacher as teacher_mod

    cfg = make_cfg("+experiment=mnist_mlp_kd", "teacher.hidden=[8]")
    dm = instantiate(cfg.data)
    dm.setup("fit")
    key = teacher_mod.teacher_key(cfg, dm)
    h = io.key_hash(key)
    folder = tmp_path / "store" / "teachers" / h
    stored = MLP(784, (8,), 10, dropout=0.8)
    io.atomic_torch_save(
        {"state_dict": stored.state_dict(), "kdlight": {"key_hash": h}}, folder / "teacher.pt"
    )

    def read_only(*args, **kwargs):
        raise PermissionError(30, "Read-only file system")

    monkeypatch.setattr(io, "file_lock", read_only)  # the lock of io.cached
    net = instantiate(cfg.teacher)
    info = teacher_mod.train_or_reuse(cfg, net, dm)
    assert info["source"] == str(folder / "teacher.pt")
    assert torch.equal(net.layers[1].weight, stored.layers[1].weight)


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("kdlight.data.mnist.MNISTDataModule", "MNISTDataModule"),
        ("kdlight.data.image_folder.ImageFolderDataModule", "ImageFolderDataModule"),
    ],
)
def test_a_run_of_an_earlier_kdlight_builds_its_moved_data_module(tmp_path, old, new):
    cfg = {"data": {"_target_": old, "data_dir": str(tmp_path / "data"), "root": str(tmp_path)}}
    if "mnist" in old:
        cfg["data"].pop("root")
    else:
        cfg["data"].pop("data_dir")
    run = runs.read_run(write_run(tmp_path / "run", cfg))
    assert type(run.build_data()).__name__ == new
