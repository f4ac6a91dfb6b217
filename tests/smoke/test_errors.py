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

from kdlight.data.datasets.cifar10 import CIFAR10_CLASSES
from tests.helpers.data import make_images, write_mnist_like
from tests.helpers.hostile import RunsCode
from tests.helpers.runs import lightning_checkpoint, write_run
from tests.smoke.cli import cli_args, cli_env, metrics, run_parallel

SENTINEL = b"written before the run\n"


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


def _fake_run(folder: Path, student: dict, ckpt_state: dict | None = None, metrics=None) -> Path:
    """A run folder as kdlight.train writes it: .hydra/config.yaml, checkpoints/, metrics.json."""
    cfg = {
        "name": "mnist_mlp",
        "data": {"_target_": "kdlight.data.datasets.mnist.MNISTDataModule", "name": "mnist"},
        "student": student,
        "distill": None,
    }
    write_run(folder, cfg, metrics=metrics)
    if ckpt_state is not None:
        lightning_checkpoint(folder / "checkpoints" / "last.ckpt", ckpt_state)
    return folder


def _huge_tensor_checkpoint(path: Path) -> None:
    """A 1 kB checkpoint whose pickle declares a 8 GiB tensor (its record holds 16 bytes)."""
    import struct
    import zipfile

    small = path.with_suffix(".small")
    torch.save({"w": torch.zeros(4)}, small)
    with zipfile.ZipFile(small) as z:
        items = [(i.filename, z.read(i.filename)) for i in z.infolist()]
    big = b"J" + struct.pack("<i", 2**31 - 1)  # BININT: the storage's and the tensor's numel
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as out:
        for name, data in items:
            if name.endswith("data.pkl"):
                data = data.replace(b"K\x04t", big + b"t", 1).replace(
                    b"K\x04\x85", big + b"\x85", 1
                )
            out.writestr(name, data)
    small.unlink()


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
    torch.save({"state_dict": RunsCode(os.system, f"touch {marker}")}, evil)
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
    from kdlight.models.mlp import MLP

    truncated_zip = tmp / "truncated.pt"
    torch.save(MLP(784, (8,), 10).state_dict(), truncated_zip)
    truncated_zip.write_bytes(truncated_zip.read_bytes()[:300])
    numpy_pickle = tmp / "numpy.pt"
    import numpy as np

    torch.save({"state_dict": {"w": torch.zeros(1)}, "acc": np.float64(0.9)}, numpy_pickle)
    huge = tmp / "huge.pt"
    _huge_tensor_checkpoint(huge)
    nan_teacher = tmp / "nan_teacher.pt"
    teacher = MLP(784, (8,), 10, dropout=0.8)
    with torch.no_grad():
        teacher.layers[1].weight[0, 0] = float("nan")
    torch.save(teacher.state_dict(), nan_teacher)
    mlp_student = MLP(784, (800, 800), 10).state_dict()
    from tests.helpers.data import write_image_folder

    tree = write_image_folder(tmp / "tree", n_train=20, n_test=10)
    linked = sorted((tree / "train").rglob("*.png"))[0]
    outside = tmp / "outside.png"
    shutil.move(linked, outside)
    linked.symlink_to(outside)  # a file of the tree that lives elsewhere

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
        "teacher_store.top_k 0": (
            [kd, "teacher_store.top_k=0"],
            ["teacher_store.top_k", "got 0", "null (exact logits) or a positive integer"],
            {},
            None,
        ),
        "teacher_store.shard_rows 0": (
            [kd, "teacher_store.shard_rows=0"],
            ["teacher_store.shard_rows", "got 0", "positive integer"],
            {},
            None,
        ),
        "teacher_store.max_gb < 0": (
            [kd, "teacher_store.max_gb=-1"],
            ["teacher_store.max_gb", "got -1", ">= 0"],
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
        "lr <= 0": ([mlp, "module.optimizer.lr=0"], ["module.optimizer.lr=0", "> 0"], {}, None),
        "trainer.max_epochs 0": ([mlp, "trainer.max_epochs=0"], ["trainer.max_epochs=0"], {}, None),
        "fused optimizer setting not auto/true/false": (
            [mlp, "module.fused_optimizer=sometimes"],
            ["module.fused_optimizer=sometimes is not valid", "auto, true or false"],
            {},
            None,
        ),
        "teacher_train.max_epochs 0": (
            [kd, "teacher_train.max_epochs=0", "teacher.hidden=[8]"],
            ["teacher_train.max_epochs=0", "untrained"],
            {},
            None,
        ),
        "data.views 0": ([kd, "data.views=0"], ["data.views=0", "K >= 1"], {}, None),
        "no validation split, val-best selection": (
            [mlp, "data.val_size=0"],
            ["data.val_size=0", "val/acc"],
            {},
            None,
        ),
        "batch size not a number": (
            [mlp, "data.batch_size=abc"],
            ["data.batch_size=abc"],
            {},
            None,
        ),
        "seed not a number": ([mlp, "seed=x"], ["seed=x", "integer"], {}, None),
        "misspelled key added with +": (
            [mlp, "+data.bach_size=3"],
            ["data.bach_size", "did you mean data.batch_size"],
            {},
            None,
        ),
        "misspelled key": (
            [mlp, "data.bach_size=3"],
            ["data.bach_size", "did you mean data.batch_size"],
            {},
            None,
        ),
        "store path is a file": (
            [kd, f"paths.store_dir={afile}"],
            [str(afile), "a file"],
            {},
            None,
        ),
        "teacher checkpoint is a folder": (
            [kd, f"teacher_ckpt={empty}"],
            [str(empty), "is a folder"],
            {},
            None,
        ),
        "corrupt (truncated) checkpoint": (
            [kd, f"teacher_ckpt={truncated_zip}", "teacher.hidden=[8]"],
            [str(truncated_zip), "corrupt or truncated"],
            {},
            None,
        ),
        "checkpoint with a non-weights global": (
            [kd, f"teacher_ckpt={numpy_pickle}"],
            [str(numpy_pickle), "refused", "numpy"],
            {},
            None,
        ),
        "checkpoint declaring a huge tensor": (
            [kd, f"teacher_ckpt={huge}"],
            [str(huge), "refused before loading", "8.0 GiB"],
            {},
            None,
        ),
        "NaN teacher weights, store off": (
            [
                kd,
                f"teacher_ckpt={nan_teacher}",
                "teacher.hidden=[8]",
                "teacher_store.enabled=false",
            ],
            [str(nan_teacher), "NaN"],
            {},
            None,
        ),
        "run folder holds a finished run": (
            [mlp],
            ["already holds a run", "ckpt_path=last"],
            {},
            ("metrics", {"status": "finished", "test/acc_best": 0.5}),
        ),
        "resume without a checkpoint": (
            [mlp, "ckpt_path=last"],
            ["ckpt_path=last", "last.ckpt"],
            {},
            None,
        ),
        "resume from another architecture": (
            [mlp, "ckpt_path=last"],
            ["last.ckpt", "does not fit", "student"],
            {},
            ("ckpt", resnet20),
        ),
        "resume from another experiment": (
            [mlp, "ckpt_path=last"],
            ["last.ckpt", "mnist_mlp_kd", "+experiment=mnist_mlp_kd"],
            {},
            ("ckpt+metrics", mlp_student),
        ),
        "resume from a checkpoint that runs code": (
            [mlp, "ckpt_path=last"],
            ["last.ckpt", "refused", "posix.system"],
            {},
            ("evil", evil),
        ),
        "image-folder symlink out of the tree": (
            ["+experiment=cifar_cnn", f"data.archive={tree}"],
            [str(linked), "outside the folder"],
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
        setup = run_dir if isinstance(run_dir, tuple) else None
        run_dir = case / "run" if run_dir is None or setup else run_dir
        if run_dir.parent.is_dir():
            run_dir.mkdir()
            (run_dir / "keep.txt").write_bytes(SENTINEL)
        if setup is not None:  # what an earlier run left in the folder
            import json

            kind, what = setup
            ckpt = run_dir / "checkpoints" / "last.ckpt"
            if kind == "metrics":
                (run_dir / "metrics.json").write_text(json.dumps(what))
            elif kind == "evil":
                ckpt.parent.mkdir()
                shutil.copy(what, ckpt)
            elif kind == "ckpt":
                lightning_checkpoint(ckpt, torch.load(what, weights_only=True))
            else:
                lightning_checkpoint(ckpt, what)
                hparams = {"experiment": "mnist_mlp_kd"}
                (run_dir / "metrics.json").write_text(
                    json.dumps({"status": "failed", "hparams": hparams})
                )
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
    "teacher_store.top_k 0",
    "teacher_store.shard_rows 0",
    "teacher_store.max_gb < 0",
    "teacher checkpoint missing",
    "teacher of another architecture",
    "teacher/student class counts differ",
    "empty data dir",
    "truncated IDX file",
    "corrupt JPEG in CIFAR archive",
    "output dir not creatable",
    "checkpoint that runs code",
    "NaN loss",
    "lr <= 0",
    "trainer.max_epochs 0",
    "fused optimizer setting not auto/true/false",
    "teacher_train.max_epochs 0",
    "data.views 0",
    "no validation split, val-best selection",
    "batch size not a number",
    "seed not a number",
    "misspelled key added with +",
    "misspelled key",
    "store path is a file",
    "teacher checkpoint is a folder",
    "corrupt (truncated) checkpoint",
    "checkpoint with a non-weights global",
    "checkpoint declaring a huge tensor",
    "NaN teacher weights, store off",
    "run folder holds a finished run",
    "resume without a checkpoint",
    "resume from another architecture",
    "resume from another experiment",
    "resume from a checkpoint that runs code",
    "image-folder symlink out of the tree",
]
#: cases refused by train.check_config / check_resume or the run-folder check, before seeding
BEFORE_ANY_WORK = {
    "lr <= 0",
    "trainer.max_epochs 0",
    "fused optimizer setting not auto/true/false",
    "teacher_train.max_epochs 0",
    "data.views 0",
    "no validation split, val-best selection",
    "batch size not a number",
    "seed not a number",
    "misspelled key added with +",
    "misspelled key",
    "store path is a file",
    "run folder holds a finished run",
    "resume without a checkpoint",
    "resume from another architecture",
    "resume from another experiment",
    "resume from a checkpoint that runs code",
}
#: cases whose run folder already holds an earlier run's checkpoint
HAS_CHECKPOINT = {
    "resume from another architecture",
    "resume from another experiment",
    "resume from a checkpoint that runs code",
}
_SENTENCE_END = re.compile(r"[.!?] +[A-Z]")


def user_message(stderr: str) -> str:
    """The one ``error: ...`` line of a failed run, checked to be one sentence."""
    lines = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, f"expected one 'error:' line, got {lines}"
    message = lines[0][len("error: ") :]
    assert message.endswith("."), message
    assert not _SENTENCE_END.search(message), f"more than one sentence: {message}"
    return message


def test_every_case_built_is_checked(cases):
    # a case built and run but missing from NAMES would never be asserted on
    assert {name for name in cases if not name.startswith("_")} == set(NAMES)


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
    assert "weights_only=False" not in message and "weights_only` set to `False" not in err
    if name != "NaN loss":  # stopped before any training: no teacher stored, no checkpoint
        assert [p.name for p in case["store"].rglob("*")] == ["keep.txt"]
        if name not in HAS_CHECKPOINT:
            assert not (case["run_dir"] / "checkpoints").exists()
        if name in BEFORE_ANY_WORK:
            assert "Seed set" not in err + res.stdout, "work began before the check"
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


# ---- a run folder is a trust boundary: analyze / export / eval never run its code ------------

MLP_CFG = {"_target_": "kdlight.models.mlp.MLP", "in_features": 784, "hidden": [8]}


def _tool(module: str, *args: str) -> list[str]:
    import sys

    return [sys.executable, "-m", f"kdlight.{module}", *args]


@pytest.fixture(scope="module")
def run_folder_cases(tmp_path_factory):
    """Run folders that ask for code or point outside themselves, opened by the real CLIs."""
    from kdlight.models.mlp import MLP

    tmp = tmp_path_factory.mktemp("runfolders")
    data = write_mnist_like(tmp / "data", "mnist", n_train=120, n_test=40)
    state = MLP(784, (8,), 10).state_dict()
    markers = {k: tmp / f"ran-{k}" for k in ("analyze", "export", "eval", "nested", "load")}
    evil = tmp / "evil.pt"
    torch.save({"x": RunsCode(os.system, f"touch {markers['load']}")}, evil)

    def system(marker: Path) -> dict:
        return {"_target_": "os.system", "_args_": [f"touch {marker}"]}

    good = _fake_run(tmp / "good", MLP_CFG, state)
    runs = {
        "analyze: a config that runs code": (
            _fake_run(tmp / "code1", system(markers["analyze"]), state),
            lambda run: _tool("analyze", str(run)),
            ["student._target_='os.system'", "refused"],
        ),
        "export: torch.load with weights_only false": (
            _fake_run(
                tmp / "code2",
                {"_target_": "torch.load", "f": str(evil), "weights_only": False},
                state,
            ),
            lambda run: _tool("export", str(run), "--no-teacher"),
            ["torch.load", "refused"],
        ),
        "eval: a config that runs code": (
            _fake_run(tmp / "code3", system(markers["eval"]), state),
            lambda run: _tool("eval", f"+run={run}", f"hydra.run.dir={tmp / 'evalout'}"),
            ["os.system", "refused"],
        ),
        "analyze: code nested in an argument": (
            _fake_run(tmp / "code4", {**MLP_CFG, "hidden": system(markers["nested"])}, state),
            lambda run: _tool("analyze", str(run)),
            ["student.hidden._target_", "refused"],
        ),
        "analyze: metrics.json names another run's checkpoint": (
            _fake_run(
                tmp / "pointer",
                MLP_CFG,
                metrics={"best_checkpoint": str(good / "checkpoints" / "last.ckpt")},
            ),
            lambda run: _tool("analyze", str(run)),
            ["best_checkpoint", "outside the run folder"],
        ),
        "export: a checkpoint linked to another run's": (
            _fake_run(tmp / "linked", MLP_CFG),
            lambda run: _tool("export", str(run), "--no-teacher"),
            ["outside the run folder"],
        ),
    }
    (tmp / "linked" / "checkpoints").mkdir()
    (tmp / "linked" / "checkpoints" / "best-epoch000.ckpt").symlink_to(
        good / "checkpoints" / "last.ckpt"
    )
    jobs, out = {}, {}
    for name, (run, argv, words) in runs.items():
        jobs[name] = (argv(run), tmp, cli_env(data))
        out[name] = {"words": words, "run": run, "before": _snapshot(tmp / "good", run)}
    for name, result in run_parallel(jobs).items():
        out[name]["result"] = result
    out["_markers"] = markers
    out["_good"] = good
    return out


RUN_FOLDER_CASES = [
    "analyze: a config that runs code",
    "export: torch.load with weights_only false",
    "eval: a config that runs code",
    "analyze: code nested in an argument",
    "analyze: metrics.json names another run's checkpoint",
    "export: a checkpoint linked to another run's",
]


@pytest.mark.parametrize("name", RUN_FOLDER_CASES)
def test_a_run_folder_never_runs_code_nor_reaches_outside(run_folder_cases, name):
    case = run_folder_cases[name]
    res = case["result"]
    assert res.returncode == 2, res.stderr[-2000:]
    assert "Traceback" not in res.stderr, res.stderr[-2000:]
    message = user_message(res.stderr)
    for word in case["words"]:
        assert word in message, f"{word!r} not in {message!r}"
    for path, (data, mtime) in case["before"].items():
        assert Path(path).read_bytes() == data and Path(path).stat().st_mtime_ns == mtime, path
    for marker in run_folder_cases["_markers"].values():
        assert not marker.exists(), f"opening a run folder ran its code ({marker.name})"
    good = run_folder_cases["_good"]
    assert not (good / "analysis").exists() and not (good / "export").exists()
    print(f"MESSAGE[{name}] {message}")


def test_two_processes_never_train_in_one_run_folder(tmp_path):
    """The second run in a busy folder stops at once, naming the first; the first goes on."""
    from tests.smoke.cli import progress_of, run_cli, start_cli, wait_for

    data = write_mnist_like(tmp_path / "data", "mnist", n_train=120, n_test=40)
    env = cli_env(data)
    run_dir, store, progress = tmp_path / "run", tmp_path / "store", tmp_path / "progress"
    slow = [
        "+callbacks.slow._target_=tests.smoke.cli.SlowDown",
        "+callbacks.slow.seconds=3",
        f"+callbacks.slow.progress={progress}",
    ]
    # many slow epochs: the first must outlive the second's start-up on a loaded machine (it is killed)
    first = start_cli(
        cli_args(run_dir, store, "+experiment=mnist_mlp", "trainer.max_epochs=100", *slow),
        tmp_path,
        env,
        tmp_path / "1.log",
    )
    try:
        wait_for(lambda: progress_of(progress) >= (0, 0), 300, first)
        before = _snapshot(run_dir)
        second = run_cli(
            cli_args(run_dir, store, "+experiment=mnist_mlp", "ckpt_path=last"), tmp_path, env
        )
        assert first.poll() is None, "the first run should still be training"
    finally:
        first.kill()
        first.wait()
    assert second.returncode == 2 and "Traceback" not in second.stderr, second.stderr[-2000:]
    message = user_message(second.stderr)
    assert f"pid {first.pid}" in message and "another process" in message, message
    hydra = {p: v for p, v in before.items() if "/.hydra/" in p}
    assert hydra and all(Path(p).read_bytes() == v[0] for p, v in hydra.items())
    print(f"MESSAGE[second run in a busy folder] {message}")


def test_report_out_on_a_file_is_one_sentence(tmp_path):
    from tests.smoke.cli import run_cli

    afile = tmp_path / "report.md"
    afile.write_bytes(SENTINEL)
    (tmp_path / "runs" / "r").mkdir(parents=True)
    (tmp_path / "runs" / "r" / "metrics.json").write_text('{"status": "finished"}')
    res = run_cli(
        _tool("report", str(tmp_path / "runs"), "--out", str(afile)), tmp_path, cli_env(tmp_path)
    )
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr[-2000:]
    message = user_message(res.stderr)
    assert str(afile) in message and "a file" in message
    assert afile.read_bytes() == SENTINEL
    print(f"MESSAGE[report --out on a file] {message}")
