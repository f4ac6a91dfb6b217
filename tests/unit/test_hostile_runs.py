"""Issue 34, items 1, 4, 5, 7: files someone else planted, checkpoints cut short, a YAML alias
bomb, and advice that must not loop. Each test plants the hostile file as a user could and
checks that kdlight refuses in one sentence and that no file outside its own output changes."""

from __future__ import annotations

import errno
import os
import time

import pytest
import torch
from omegaconf import OmegaConf

from kdlight import io
from kdlight.errors import CheckpointError, ConfigError, DataError
from kdlight.run import read as runs
from tests.helpers.runs import lightning_checkpoint, write_run

MLP_NODE = {"_target_": "kdlight.models.mlp.MLP", "in_features": 784, "hidden": [8]}


@pytest.fixture
def victim(tmp_path):
    """A file outside every output folder that a planted link points to."""
    path = tmp_path / "victim.txt"
    path.write_text("precious\n")
    return path


def _plant(link, target):
    link.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(target, link)
    return link


# ---- item 1: planted symbolic links -----------------------------------------------------------


def test_a_lock_file_planted_as_a_link_is_refused_and_its_target_kept(tmp_path, victim):
    lock = _plant(tmp_path / "run" / ".kdlight.lock", victim)
    with pytest.raises(io.UnsafeFileError, match=r"\.kdlight\.lock is a symbolic link"):
        io.try_lock(lock, "pid 1")
    with pytest.raises(io.UnsafeFileError, match="symbolic link"):
        with io.file_lock(lock):
            pass
    assert victim.read_text() == "precious\n"  # before the fix: truncated to "pid 1"


def test_a_lock_file_planted_as_a_hard_link_is_refused(tmp_path, victim):
    lock = tmp_path / "run" / ".kdlight.lock"
    lock.parent.mkdir()
    os.link(victim, lock)
    with pytest.raises(io.UnsafeFileError, match="hard link"):
        io.try_lock(lock, "pid 1")
    assert victim.read_text() == "precious\n"


def test_a_fifo_at_the_lock_name_is_refused_without_hanging(tmp_path):
    lock = tmp_path / ".kdlight.lock"
    os.mkfifo(lock)
    with pytest.raises(io.UnsafeFileError, match="not a regular file"):
        io.try_lock(lock, "pid 1")


def test_a_lock_kdlight_created_still_works(tmp_path):
    held = io.try_lock(tmp_path / "x.lock", "pid 7")
    assert held is not None and io.lock_note(tmp_path / "x.lock") == "pid 7"
    assert io.try_lock(tmp_path / "x.lock") is None
    held.close()


@pytest.mark.parametrize(
    "write",
    [
        lambda p: io.atomic_write_text(p, "x"),
        lambda p: io.atomic_write_json(p, {"a": 1}),
        lambda p: io.atomic_write_bytes(p, b"x"),
        lambda p: io.atomic_torch_save({"a": 1}, p),
    ],
    ids=["text", "json", "bytes", "torch"],
)
def test_the_atomic_writers_refuse_a_planted_link(tmp_path, victim, write):
    link = _plant(tmp_path / "out" / "analysis.json", victim)
    with pytest.raises(io.UnsafeFileError, match="analysis.json is a symbolic link"):
        write(link)
    assert victim.read_text() == "precious\n" and link.is_symlink()
    assert [p.name for p in link.parent.iterdir()] == ["analysis.json"]  # no temp file left


def test_atomic_output_renames_a_fresh_file_and_refuses_a_link(tmp_path, victim):
    path = tmp_path / "student.onnx"
    with io.atomic_output(path) as tmp:
        assert tmp.parent == path.parent and tmp.suffix == ".onnx" and tmp != path
        tmp.write_bytes(b"model")
    assert path.read_bytes() == b"model" and sorted(os.listdir(tmp_path)) == [
        "student.onnx",
        "victim.txt",
    ]
    _plant(tmp_path / "student.ts", victim)
    with pytest.raises(io.UnsafeFileError, match="student.ts is a symbolic link"):
        with io.atomic_output(tmp_path / "student.ts"):
            pytest.fail("a link was written through")
    assert victim.read_text() == "precious\n"


def test_an_output_folder_planted_as_a_link_is_refused(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "analysis.json").write_text("theirs")
    link = _plant(tmp_path / "run" / "analysis", elsewhere)
    with pytest.raises(io.UnsafeFileError, match="analysis folder .* is a symbolic link"):
        io.own_folder(link, "analysis folder")
    from kdlight.analysis.write import write_analysis

    logits, labels = torch.zeros(4, 3), torch.tensor([0, 1, 2, 0])
    with pytest.raises(io.UnsafeFileError):
        write_analysis(link, logits, labels, ["a", "b", "c"])
    assert os.listdir(elsewhere) == ["analysis.json"]
    assert (elsewhere / "analysis.json").read_text() == "theirs"


def test_a_figure_refuses_a_planted_link(tmp_path, victim):
    from kdlight.reporting import plots

    fig = plots.new_figure(1, 1)
    with pytest.raises(io.UnsafeFileError):
        plots.save(fig, _plant(tmp_path / "methods.png", victim))
    assert victim.read_text() == "precious\n"
    plots.save(fig, tmp_path / "ok.png")
    assert (tmp_path / "ok.png").read_bytes()[:4] == b"\x89PNG"


def test_a_store_entry_planted_as_a_link_is_refused(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    _plant(tmp_path / "store" / io.key_hash({"k": 1}), elsewhere)
    with pytest.raises(io.UnsafeFileError, match="store entry"):
        io.cached(tmp_path / "store", {"k": 1}, lambda _: torch.zeros(1))
    assert os.listdir(elsewhere) == []


def test_a_teacher_ckpt_folder_planted_as_a_link_is_refused(tmp_path):
    from kdlight.run.teacher import _train

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    entry = tmp_path / "entry"
    _plant(entry / "ckpt", elsewhere)
    cfg = OmegaConf.create(
        {"teacher_train": {"seed": 0}, "teacher": MLP_NODE, "data": {"_target_": "nope.Nope"}}
    )
    with pytest.raises(io.UnsafeFileError, match="teacher store's checkpoint folder"):
        _train(cfg, None, entry, "h")
    assert os.listdir(elsewhere) == []


# ---- item 4: checkpoints appear whole or not at all -------------------------------------------


def test_a_checkpoint_is_written_beside_itself_not_in_the_temp_dir(tmp_path, monkeypatch):
    from kdlight.callbacks import AtomicCheckpointIO

    system_tmp = tmp_path / "system-tmp"
    system_tmp.mkdir()
    monkeypatch.setenv("TMPDIR", str(system_tmp))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)
    folder = tmp_path / "run" / "checkpoints"
    folder.mkdir(parents=True)
    (folder / ".last.ckpt.dead1234.tmp").write_bytes(b"half")  # a killed writer's orphan
    seen = []
    real_save = torch.save

    def spy(obj, f, *a, **k):
        seen.append(os.path.dirname(os.readlink(f"/proc/self/fd/{f.fileno()}")))
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(torch, "save", spy)
    AtomicCheckpointIO().save_checkpoint({"epoch": 3}, folder / "last.ckpt")
    assert seen == [str(folder)] and os.listdir(system_tmp) == []
    assert sorted(os.listdir(folder)) == ["last.ckpt"]  # the orphan is gone
    assert torch.load(folder / "last.ckpt", weights_only=True) == {"epoch": 3}


def test_a_full_disk_keeps_the_old_checkpoint_and_says_so(tmp_path, monkeypatch):
    from kdlight.callbacks import AtomicCheckpointIO

    folder = tmp_path / "checkpoints"
    folder.mkdir()
    (folder / "last.ckpt").write_bytes(b"PK old checkpoint")
    real_save = torch.save

    def full_disk(obj, f, *a, **k):
        f.write(b"PK half")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(CheckpointError, match=r"No space left on device.*last.ckpt \(if any\) is"):
        AtomicCheckpointIO().save_checkpoint({"epoch": 3}, folder / "last.ckpt")
    monkeypatch.setattr(torch, "save", real_save)
    assert (folder / "last.ckpt").read_bytes() == b"PK old checkpoint"
    assert os.listdir(folder) == ["last.ckpt"]  # the half-written temp file freed its space


def test_the_checkpoint_callback_installs_the_atomic_writer(tmp_path):
    import lightning as L

    from kdlight.callbacks import AtomicCheckpointIO, AtomicModelCheckpoint

    cb = AtomicModelCheckpoint(dirpath=tmp_path, filename="last", monitor=None)
    trainer = L.Trainer(
        accelerator="cpu", logger=False, callbacks=[cb], enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=tmp_path,
    )  # fmt: skip
    cb.setup(trainer, L.LightningModule(), "fit")
    assert type(trainer.strategy.checkpoint_io) is AtomicCheckpointIO


def test_a_broken_last_checkpoint_names_the_intact_ones(tmp_path):
    from kdlight.run.resume import _with_intact_checkpoints

    folder = tmp_path / "checkpoints"
    lightning_checkpoint(folder / "best-epoch002.ckpt", {"w": torch.zeros(1)})
    (folder / "last.ckpt").write_bytes(b"PK\x03\x04 cut short")
    (folder / "other.ckpt").write_bytes(b"")
    msg = _with_intact_checkpoints("checkpoint last.ckpt is not readable.", folder / "last.ckpt")
    assert "intact checkpoints (best-epoch002.ckpt)" in msg
    assert f"ckpt_path={folder / 'best-epoch002.ckpt'}" in msg and msg.count(".ckpt") == 3
    (folder / "best-epoch002.ckpt").unlink()
    assert "no intact checkpoint" in _with_intact_checkpoints("x.", folder / "last.ckpt")


# ---- item 5: bounded YAML ---------------------------------------------------------------------

BOMB = "a: &a [x,x,x,x,x,x,x,x,x]\n" + "".join(
    f"{c}: &{c} [*{p},*{p},*{p},*{p},*{p},*{p},*{p},*{p},*{p}]\n"
    for p, c in zip("abcdefgh", "bcdefghi", strict=True)
)


def test_a_yaml_alias_bomb_is_refused_at_once(tmp_path):
    assert len(BOMB) < 500  # 9**9 = 387 million strings once expanded
    path = tmp_path / "config.yaml"
    path.write_text(BOMB)
    start = time.perf_counter()
    with pytest.raises(DataError, match="more than 200000 YAML nodes"):
        io.load_yaml_bounded(path)
    assert time.perf_counter() - start < 2.0
    run = write_run(tmp_path / "run", BOMB)
    with pytest.raises(ConfigError, match="the run config .*alias bomb"):
        runs.read_run(run)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("a: &a [*a]\n", "not readable YAML"),  # an alias inside its own anchor
        ("a: " + "[" * 5000 + "]" * 5000 + "\n", "not readable YAML"),
        (b"a: \xff\xfe\n", "not readable YAML"),
    ],
    ids=["recursive", "deep", "not-utf8"],
)
def test_other_hostile_yaml_is_refused_in_one_sentence(tmp_path, text, match):
    path = tmp_path / "c.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(DataError, match=match):
        io.load_yaml_bounded(path)


def test_a_huge_or_special_yaml_file_is_not_read(tmp_path):
    big = tmp_path / "big.yaml"
    big.write_text("a: " + "x" * 200 + "\n")
    with pytest.raises(DataError, match="larger than"):
        io.load_yaml_bounded(big, max_bytes=100)
    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)
    with pytest.raises(DataError, match="not a regular file"):
        io.load_yaml_bounded(fifo)


def test_a_normal_config_reads_as_omegaconf_reads_it(tmp_path):
    text = "lr: 1e-3\nT: .inf\nm: {a: &x [1, 2], b: *x}\nname: ${lr}\n"
    path = tmp_path / "c.yaml"
    path.write_text(text)
    assert io.load_yaml_bounded(path) == OmegaConf.load(path)
    assert io.load_yaml_bounded(path).lr == 0.001


# ---- item 7: advice that names what needs changing ---------------------------------------------


def _cfg(tmp_path, *overrides):
    from tests.helpers.overrides import compose_cfg

    return compose_cfg(["+experiment=mnist_mlp_kd_unlabeled", *overrides], tmp_path, tmp_path)


def test_crd_on_unlabeled_data_is_told_what_to_change_and_the_advice_works(tmp_path):
    from kdlight.run.checks import check_config

    cfg = _cfg(tmp_path, "distill=crd", "distill.alpha=1.0", "distill.nce_k=4")
    with pytest.raises(ConfigError) as err:
        check_config(cfg)
    msg = str(err.value)
    assert "set distill.gamma=0.0 distill.negatives=any (" in msg, msg
    assert "distill.alpha=1.0 (" not in msg  # the loop of the issue: it already was 1.0
    fixed = _cfg(tmp_path, "distill=crd", "distill.nce_k=4", "distill.gamma=0.0")
    fixed.distill.negatives = "any"
    assert check_config(fixed) is not None  # the advice, followed, is accepted


def test_kd_on_unlabeled_data_is_still_told_to_set_alpha(tmp_path):
    from kdlight.run.checks import check_config

    with pytest.raises(ConfigError, match=r"distill.alpha=0.5, whose .*set distill.alpha=1.0 \("):
        check_config(_cfg(tmp_path, "distill.alpha=0.5"))


def test_dkd_on_unlabeled_data_is_told_to_change_method(tmp_path):
    from kdlight.run.checks import check_config

    with pytest.raises(ConfigError, match="whatever its weights; use a method"):
        check_config(_cfg(tmp_path, "distill=dkd"))


@pytest.mark.parametrize(
    ("override", "shown"),
    [
        ("distill.temperature=inf", "distill.temperature=inf"),
        ("distill.alpha=nan", "distill.alpha=nan"),
        ("module.optimizer.lr=inf", "module.optimizer.lr=inf"),
    ],
)
def test_a_non_finite_temperature_or_weight_is_refused_up_front(tmp_path, override, shown):
    from kdlight.run.checks import check_values

    cfg = _cfg(tmp_path, "data.unlabeled=false", override)
    with pytest.raises(ConfigError, match=rf"^{shown} is invalid; it must be a finite number\.$"):
        check_values(cfg)


@pytest.mark.parametrize(
    ("value", "match"),
    [("[]", r"teacher_ckpt=\[\] names no"), ("[null]", r"teacher_ckpt\[0\]=None")],
)
def test_an_empty_teacher_ckpt_list_is_refused(tmp_path, value, match):  # fmt: skip
    from kdlight.run.checks import check_values

    with pytest.raises(ConfigError, match=match):
        check_values(_cfg(tmp_path, f"teacher_ckpt={value}"))


def test_a_resume_with_other_hparams_names_the_keys(tmp_path):
    from kdlight.run.hparams import hparams_of
    from kdlight.run.resume import check_same_hparams

    cfg = _cfg(tmp_path, "distill.alpha=1.0")
    previous = {**hparams_of(cfg), "alpha": 0.9, "lr": 0.5, "max_epochs": 1}
    with pytest.raises(
        CheckpointError, match=r"recorded with lr=0.5 \(now .*\), alpha=0.9 \(now 1.0\)"
    ):
        check_same_hparams(cfg, previous, tmp_path)
    check_same_hparams(cfg, {**hparams_of(cfg), "max_epochs": 99}, tmp_path)  # more epochs: fine


def test_another_users_lock_file_is_locked_read_only(tmp_path, monkeypatch):
    # root ignores file modes, so the 0644 lock file of another user is simulated: opening it
    # for writing is refused, as it would be for anyone else
    from kdlight import io as kio

    lock = tmp_path / "view_0.lock"
    lock.write_text("pid 7")
    real_open = os.open

    def no_write(path, flags, *args):
        if flags & os.O_RDWR:
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, flags, *args)

    monkeypatch.setattr(kio.os, "open", no_write)
    with kio.file_lock(lock):
        pass
    held = kio.try_lock(lock, "pid 9")
    assert held is not None and not held.writable()
    held.close()
    assert lock.read_text() == "pid 7"  # another user's note stays


@pytest.mark.parametrize(
    "target",
    [
        "kdlight.methods.taps.tapped_forward",  # a function of kdlight.methods, not a method
        "kdlight.methods.base.Context",  # a class there, but not a Method
        "os.system",
    ],
)
def test_a_saved_distill_node_builds_only_a_method_class(target, monkeypatch):
    called = []
    monkeypatch.setattr("hydra.utils.instantiate", lambda *a, **k: called.append(a))
    with pytest.raises(runs.RunFolderError, match=r"distill._target_=.* refused"):
        runs.build_method({"_target_": target, "x": 1}, "a saved config")
    assert called == []


def test_a_saved_distill_node_of_a_method_builds_it():
    method = runs.build_method({"_target_": "kdlight.methods.kd.KD", "alpha": 0.5}, "cfg")
    assert type(method).__name__ == "KD" and method.alpha == 0.5
