"""Bad input reaches the user as one clear sentence: the real CLI, a non-zero exit, no traceback,
and nothing already on disk touched.

Every case runs ``python -m kdlight.train`` in a subprocess, as a user would. The runs are
independent, so one module fixture starts them all (a few at a time) and each test reads its
own result.
"""

from __future__ import annotations

import gzip
import io
import os
import re
import shutil
import tarfile
from pathlib import Path

import pytest
import torch

from kdlight.data.sources import CIFAR10_CLASSES
from tests.conftest import make_images, write_mnist_like
from tests.smoke.cli import cli_args, cli_env, metrics, run_parallel

SENTINEL = b"written before the run\n"


class _RunsCode:
    """Pickles to ``os.system(cmd)``: loading it with plain pickle would run the command."""

    def __init__(self, cmd: str) -> None:
        self.cmd = cmd

    def __reduce__(self):
        return (os.system, (self.cmd,))


def _cifar_archive_with_corrupt_jpeg(path: Path) -> str:
    """A CIFAR-10 image-folder .tar.gz of JPEGs whose first ``cat`` image is cut short; its name."""
    from PIL import Image

    classes = list(CIFAR10_CLASSES)
    bad = None
    with tarfile.open(path, "w:gz") as tar:
        for split, n in (("train", 60), ("test", 20)):
            x, y = make_images(n, 32, 3, 10, seed=0)
            for i, (img, c) in enumerate(zip(x, y, strict=True)):
                name = f"cifar10/{split}/{classes[c]}/{i:04d}.jpg"
                buf = io.BytesIO()
                Image.fromarray(img).save(buf, format="JPEG")
                data = buf.getvalue()
                if bad is None and classes[c] == "cat":
                    bad, data = name, data[: len(data) // 3]  # as left by a failed copy
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return bad


def _snapshot(*roots: Path) -> dict[str, tuple[bytes, int]]:
    files = {}
    for root in roots:
        for p in sorted(root.rglob("*")) if root.is_dir() else []:
            if p.is_file():
                files[str(p)] = (p.read_bytes(), p.stat().st_mtime_ns)
    return files


def build_cases(tmp: Path) -> tuple[dict, dict]:
    """Write every bad-input case's files under ``tmp``; its CLI jobs and what to check."""
    data = write_mnist_like(tmp / "data", "mnist", n_train=120, n_test=40)
    kd = "+experiment=mnist_mlp_kd"
    mlp = "+experiment=mnist_mlp"

    # files the cases point at
    from kdlight.models.resnet import ResNet

    resnet20 = tmp / "resnet20.pt"
    torch.save(ResNet(depth=20, block="basic", num_classes=10).state_dict(), resnet20)
    marker = tmp / "pwned"
    evil = tmp / "evil.pt"
    torch.save({"state_dict": _RunsCode(f"touch {marker}")}, evil)
    empty = tmp / "empty-data"
    empty.mkdir()
    truncated = tmp / "truncated-data"
    shutil.copytree(data, truncated)
    raw = truncated / "mnist" / "train-images-idx3-ubyte"
    gz = truncated / "mnist" / "train-images-idx3-ubyte.gz"
    raw.write_bytes(gzip.decompress(gz.read_bytes())[:5000])  # raw is read before .gz
    gz.unlink()
    archive = tmp / "cifar10-jpeg.tar.gz"
    bad_jpeg = _cifar_archive_with_corrupt_jpeg(archive)
    afile = tmp / "afile"
    afile.write_text("a regular file where the output folder's parent should be\n")

    specs = {
        # name: (overrides, expected words in the message, extra env, output dir)
        "unknown experiment": (["+experiment=nope"], ["nope"], {}, None),
        "unknown model": ([mlp, "model@student=nope"], ["nope"], {}, None),
        "unknown data": ([mlp, "data=nope"], ["nope"], {}, None),
        "alpha > 1": ([kd, "distill.alpha=1.5"], ["distill.alpha=1.5", "[0, 1]"], {}, None),
        "T <= 0": ([kd, "distill.temperature=0"], ["distill.temperature=0", "> 0"], {}, None),
        "labeled_fraction 0": (
            [mlp, "data.labeled_fraction=0"],
            ["data.labeled_fraction=0", "(0, 1]"],
            {},
            None,
        ),
        "unlabeled classifier": ([mlp, "data.unlabeled=true"], ["data.unlabeled=true"], {}, None),
        "unlabeled KD alpha < 1": (
            ["+experiment=mnist_mlp_kd_unlabeled", "distill.alpha=0.5"],
            ["distill.alpha=0.5"],
            {},
            None,
        ),
        "teacher_store.batch_size 0": (
            [kd, "teacher_store.batch_size=0"],
            ["teacher_store.batch_size", "got 0", "positive integer"],
            {},
            None,
        ),
        "teacher checkpoint missing": (
            [kd, f"teacher_ckpt={tmp / 'nope.ckpt'}"],
            ["nope.ckpt"],
            {},
            None,
        ),
        "teacher of another architecture": (
            [kd, f"teacher_ckpt={resnet20}"],
            [str(resnet20), "MLP"],
            {},
            None,
        ),
        "teacher/student class counts differ": (
            [kd, "teacher.num_classes=5"],
            ["5", "10"],
            {},
            None,
        ),
        "empty data dir": ([mlp], [str(empty)], {"KDLIGHT_DATA": str(empty)}, None),
        "truncated IDX file": (
            [mlp],
            [str(raw), "truncated"],
            {"KDLIGHT_DATA": str(truncated)},
            None,
        ),
        "corrupt JPEG in CIFAR archive": (
            ["+experiment=cifar_cnn", f"data.archive={archive}"],
            [bad_jpeg, "corrupt"],
            {},
            None,
        ),
        "output dir not creatable": ([mlp], [str(afile)], {}, afile / "run"),
        "checkpoint that runs code": (
            [kd, f"teacher_ckpt={evil}"],
            [str(evil), "refused"],
            {},
            None,
        ),
        "NaN loss": (
            [
                mlp,
                "trainer.max_epochs=3",
                # epoch 0 trains at lr 0.01; the scheduler multiplies it by 1e30 for epoch 1
                "module.scheduler={_target_:torch.optim.lr_scheduler.StepLR,_partial_:true,step_size:1,gamma:1e30}",
            ],
            ["step", "epoch 1"],
            {},
            None,
        ),
    }
    jobs, out = {}, {}
    for i, (name, (overrides, words, env, run_dir)) in enumerate(specs.items()):
        case = tmp / f"case{i:02d}"
        store = case / "store"
        store.mkdir(parents=True)
        (store / "keep.txt").write_bytes(SENTINEL)
        run_dir = run_dir or case / "run"
        if run_dir.parent.is_dir():
            run_dir.mkdir()
            (run_dir / "keep.txt").write_bytes(SENTINEL)
        before = _snapshot(store, run_dir, data, *(Path(v) for v in env.values()))
        out[name] = {"words": words, "run_dir": run_dir, "store": store, "before": before}
        jobs[name] = (cli_args(run_dir, store, *overrides), case, cli_env(data, **env))
    out["_files"] = {"marker": marker, "afile": afile, "archive": archive}
    return jobs, out


@pytest.fixture(scope="module")
def cases(tmp_path_factory):
    """Run every bad-input case (a few at a time); ``{name: case}`` with ``case["result"]``."""
    jobs, out = build_cases(tmp_path_factory.mktemp("errors"))
    for name, result in run_parallel(jobs).items():
        out[name]["result"] = result
    return out


HYDRA_CASES = ["unknown experiment", "unknown model", "unknown data"]
NAMES = [
    *HYDRA_CASES,
    "alpha > 1",
    "T <= 0",
    "labeled_fraction 0",
    "unlabeled classifier",
    "unlabeled KD alpha < 1",
    "teacher_store.batch_size 0",
    "teacher checkpoint missing",
    "teacher of another architecture",
    "teacher/student class counts differ",
    "empty data dir",
    "truncated IDX file",
    "corrupt JPEG in CIFAR archive",
    "output dir not creatable",
    "checkpoint that runs code",
    "NaN loss",
]
_SENTENCE_END = re.compile(r"[.!?] +[A-Z]")


def user_message(stderr: str) -> str:
    """The one ``error: ...`` line of a failed run, checked to be one sentence."""
    lines = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, f"expected one 'error:' line, got {lines}"
    message = lines[0][len("error: ") :]
    assert message.endswith("."), message
    assert not _SENTENCE_END.search(message), f"more than one sentence: {message}"
    return message


@pytest.mark.parametrize("name", NAMES)
def test_bad_input_gives_one_clear_sentence(cases, name):
    case = cases[name]
    res = case["result"]
    err = res.stderr
    assert res.returncode != 0, err[-2000:]
    assert "Traceback" not in err, err[-2000:]
    if name in HYDRA_CASES:  # Hydra's own message: the bad name and the valid ones
        assert "Could not find" in err and "Available options" in err
        message = err
    else:
        assert res.returncode == 2
        message = user_message(err)
    for word in case["words"]:
        assert word in message, f"{word!r} not in {message!r}"
    for path, (data, mtime) in case["before"].items():
        assert Path(path).is_file(), f"{path} was removed"
        assert Path(path).read_bytes() == data, f"{path} was changed"
        assert Path(path).stat().st_mtime_ns == mtime, f"{path} was rewritten"
    if name != "NaN loss":  # stopped before any training: no teacher stored, no checkpoint
        assert [p.name for p in case["store"].rglob("*")] == ["keep.txt"]
        assert not (case["run_dir"] / "checkpoints").exists()
    print(f"MESSAGE[{name}] {message.strip() if name not in HYDRA_CASES else err.strip()}")


def test_a_checkpoint_that_would_run_code_is_never_unpickled(cases):
    assert cases["checkpoint that runs code"]["result"].returncode == 2
    assert not cases["_files"]["marker"].exists(), "loading the checkpoint ran its code"


def test_an_unwritable_output_dir_stops_before_any_work(cases):
    res = cases["output dir not creatable"]["result"]
    assert res.returncode == 2
    assert cases["_files"]["afile"].is_file()
    assert "Seed set" not in res.stderr + res.stdout  # stopped before the task began


def test_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(cases):
    case = cases["NaN loss"]
    assert case["result"].returncode == 2
    run_dir = case["run_dir"]
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["epoch"] == 0  # written at the end of epoch 0, before the loss diverged in epoch 1
    assert all(torch.isfinite(t).all() for t in ckpt["state_dict"].values())
    m = metrics(run_dir)
    assert m["status"] == "failed" and "step" in m["error"]
