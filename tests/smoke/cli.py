"""Run ``python -m kdlight.train`` as a user would (a subprocess), made tiny; test-only callbacks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import lightning as L
import numpy as np
import torch

from tests.helpers.data import make_images, write_idx
from tests.helpers.overrides import TINY_CLI

ROOT = Path(__file__).resolve().parents[2]


def cli_env(data_dir: Path, **extra: str) -> dict[str, str]:
    """The environment of a CLI run: tiny data, one thread (runs share 2 cores), tests importable."""
    env = {k: v for k, v in os.environ.items() if k not in ("HYDRA_FULL_ERROR", "KDLIGHT_STORE")}
    env.update(
        KDLIGHT_DATA=str(data_dir),
        PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")])),
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
        PYTHONWARNINGS="ignore",
    )
    env.update(extra)
    return env


def tiny_folder_kd(teacher: Path) -> list[str]:
    """Overrides for a tiny KD run on a 5-class image tree (``write_image_tree``): 32-px crops,
    ResNet-8 teacher and student, the teacher's random weights saved to ``teacher`` (seed 0)."""
    from kdlight.models.resnet import ResNet

    torch.manual_seed(0)
    torch.save(ResNet(depth=8, num_classes=5).state_dict(), teacher)
    return [
        "data.num_classes=5",
        "data.image_size=32",
        "data.eval_resize=36",
        "data.num_workers=1",
        "data.eval_batch_size=20",
        "model@teacher=resnet8",
        "model@student=resnet8",
        "distill=kd",
        f"teacher_ckpt={teacher}",
    ]


def cli_args(run_dir: Path, store_dir: Path, *overrides: str) -> list[str]:
    """``python -m kdlight.train`` with the tiny settings, writing into ``run_dir``."""
    return [
        sys.executable,
        "-m",
        "kdlight.train",
        *TINY_CLI,
        f"hydra.run.dir={run_dir}",
        f"paths.store_dir={store_dir}",
        *overrides,
    ]


def run_cli(args: list[str], cwd: Path, env: dict[str, str], timeout: float = 600):
    """Run one CLI command to its end; a CompletedProcess with text stdout/stderr."""
    return subprocess.run(
        args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def run_parallel(jobs: dict[str, tuple[list[str], Path, dict[str, str]]], workers: int = 3):
    """Run several CLI commands, ``workers`` at a time; ``{name: CompletedProcess}``."""
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = {name: pool.submit(run_cli, *job) for name, job in jobs.items()}
        return {name: f.result() for name, f in futures.items()}


def start_cli(args: list[str], cwd: Path, env: dict[str, str], log: Path) -> subprocess.Popen:
    """Start a CLI command in the background, its stdout and stderr going to ``log``."""
    with open(log, "w") as fh:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(args, cwd=cwd, env=env, stdout=fh, stderr=subprocess.STDOUT)


def wait_for(predicate, timeout: float, proc: subprocess.Popen | None = None, poll: float = 0.05):
    """Poll ``predicate`` until true; fail after ``timeout`` s or when ``proc`` has exited."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        if proc is not None and proc.poll() is not None:
            raise AssertionError(
                f"the process exited ({proc.returncode}) before the condition held"
            )
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout} s")


def metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


def write_noisy_mnist(
    root: Path, name: str = "mnist", n_train: int = 300, n_test: int = 100, noise: float = 0.4
) -> Path:
    """Like ``write_mnist_like``, with a fraction ``noise`` of labels shuffled: accuracy stays below 1,
    so two runs that trained differently show it in their accuracies."""
    d = root / name
    for split, n, seed in (("train", n_train, 0), ("t10k", n_test, 1)):
        x, y = make_images(n, 28, 1, 10, seed)
        rng = np.random.default_rng(seed + 10)
        flip = rng.random(n) < noise
        y[flip] = rng.integers(0, 10, int(flip.sum()))
        write_idx(d / f"{split}-images-idx3-ubyte.gz", x[..., 0])
        write_idx(d / f"{split}-labels-idx1-ubyte.gz", y)
    return root


# ---- test-only callbacks, named on the command line as +callbacks.<x>._target_=tests.smoke.cli.<Cls>


class SlowDown(L.Callback):
    """Sleep ``seconds`` after every training batch, so a test can kill a run mid-epoch; write
    ``"<epoch> <batch>"`` of the last finished batch to ``progress`` (if given)."""

    def __init__(self, seconds: float = 0.2, progress: str | None = None) -> None:
        self.seconds = float(seconds)
        self.progress = Path(progress) if progress else None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.progress is not None:
            self.progress.write_text(f"{trainer.current_epoch} {batch_idx}\n")
        time.sleep(self.seconds)


def progress_of(path: Path) -> tuple[int, int]:
    """(epoch, batch) written by :class:`SlowDown`, (-1, -1) before the first batch."""
    try:
        epoch, batch = path.read_text().split()
        return int(epoch), int(batch)
    except (OSError, ValueError):
        return -1, -1


class IndexRecorder(L.Callback):
    """Append each training batch's sample indices (and whether labels came along) to
    ``<folder>/rank<global_rank>.jsonl``, one line per batch."""

    def __init__(self, folder: str) -> None:
        self.folder = Path(folder)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        line = {
            "epoch": trainer.current_epoch,
            "idx": batch["idx"].tolist(),
            "has_y": "y" in batch,
            "world": trainer.world_size,
        }
        if getattr(pl_module, "teacher_store", None) is not None:
            # the logits this rank is served for its own samples vs the teacher on those samples
            with torch.no_grad():
                served = pl_module.teacher_logits(batch)
                online = pl_module.teacher(batch["x"]).float()
            line["store_err"] = float((served - online).abs().max())
            line["logit_max"] = float(online.abs().max())
        with open(self.folder / f"rank{trainer.global_rank}.jsonl", "a") as fh:
            fh.write(json.dumps(line) + "\n")


class WaitForFiles(L.Callback):
    """At the start of each fit, wait until ``count`` files match ``pattern``, then ``settle`` s more.

    Name it ``+callbacks.<x>_progress`` and the teacher's training gets it too (the teacher
    trainer takes the run's progress callbacks): a test can then hold the teacher's training
    until every concurrent run has started.
    """

    def __init__(
        self, pattern: str, count: int, timeout: float = 300.0, settle: float = 2.0
    ) -> None:
        self.pattern, self.count, self.timeout, self.settle = pattern, int(count), timeout, settle

    def on_train_start(self, trainer, pl_module) -> None:
        import glob

        end = time.monotonic() + self.timeout
        while len(glob.glob(self.pattern)) < self.count:
            if time.monotonic() > end:
                raise RuntimeError(f"timed out waiting for {self.count} files {self.pattern}")
            time.sleep(0.05)
        time.sleep(self.settle)
