"""Training speed of kdlight against the machine's limit (a bare loop), an expert's KD loop and a
plain PyTorch KD loop; prints one JSON document on stdout.

Usage: ``.venv/bin/python benchmarks/bench_kd.py [--cases fmnist_mlp,cifar_resnet18_cnn,sweep10,fixed_cost] [--quick]``
(see benchmarks/README.md for what each case measures). Progress goes to stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import logging
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
CONF_DIR = ROOT / "src" / "kdlight" / "conf"
if (
    str(BENCH_DIR) not in sys.path
):  # Hydra instantiates bench_kd.EpochTimer and imports plain_kd_loop
    sys.path.insert(0, str(BENCH_DIR))

from bare_loop import step_intervals  # noqa: E402 - after the path above

CASES = ("fmnist_mlp", "cifar_resnet18_cnn", "sweep10", "fixed_cost")
#: cases run only when --cases names them (benchmarks/gpu.sh): a 34M-parameter teacher is slow on a CPU
GPU_CASES = ("cifar_resnext29_resnet18",)
SWEEP_GRID = [(alpha, t) for t in (5.0, 20.0) for alpha in (0.3, 0.5, 0.7, 0.9, 0.95)]
KD_WARM_OVER_STUDENT_TARGET = 1.15
#: issue 15's targets, as (numerator run, denominator run, at least); printed, never asserted
FMNIST_TARGETS = {
    "kdlight_student_alone_over_bare": ("kdlight_student_alone", "bare_limit", 0.9),
    "kdlight_warm_over_bare": ("kdlight_store_warm", "bare_limit", 0.85),
    "kdlight_online_over_expert": ("kdlight_online", "expert_kd_online", 1.0),
}
CIFAR_TARGETS = {"kdlight_warm_over_bare": ("kdlight_store_warm", "bare_limit", 0.9)}
#: the CIFAR-10 cases (one body, case_cifar): experiment, teacher, what is measured, targets
CIFAR_CASES: dict[str, tuple[str, str, str, dict[str, tuple[str, str, float]]]] = {
    "cifar_resnet18_cnn": (
        "cifar_cnn_kd",
        "ResNet-18",
        "ResNet-18 teacher -> 5-layer CNN student (dropout 0.5), Hinton KD, Adam, RandomCrop(32, 4) + flip",
        CIFAR_TARGETS,
    ),
    "cifar_resnext29_resnet18": (
        "cifar_resnet18_kd_resnext",
        "ResNeXt-29 8x64d",
        "ResNeXt-29 8x64d teacher -> ResNet-18 student, Hinton KD (alpha 0.95, T 6), SGD, "
        "RandomCrop(32, 4) + flip",
        {},
    ),
}
SWEEP_BOUND_TARGET = 1.2  # kdlight's sweep wall time / its bound, at most
STEP_MEDIAN_NOTE = (
    "targets.*.step_median_ratio: the same ratio from each run's median step interval (start to next "
    "start, the next batch's fetch included; step_ms_median) instead of throughput: it leaves out the "
    "rare slow steps (logging steps, host bursts) and the work between epochs, so it is the steadier "
    "figure for per-step overhead; ratio (throughput) is what the targets are judged on. CPU only: "
    "a CUDA bare-loop step is not synchronised"
)


class EpochTimer(L.Callback):
    """Times each training epoch, the teacher-store work inside it, and counts its samples; writes JSON to ``out``."""

    def __init__(self, out: str) -> None:
        self.out = out
        self.epochs: list[dict[str, Any]] = []
        self._store_s = 0.0
        self._computed = 0
        self._samples = 0
        self._steps = 0
        self._t0 = 0.0
        self._has_store = False
        self._steps_s = 0.0
        self._starts: list[float] = []  # each step's start, this epoch
        self._prev_start: float | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        store = getattr(pl_module, "teacher_store", None)
        self._has_store = store is not None
        if store is None:
            return
        # the engine asks the store for each epoch's view (logits and any feature tables) once,
        # in its on_train_epoch_start, through get_view; get() (logits only) goes through it too.
        # Code from before the feature store (--baseline-src, e.g. 25c6200) has get() only.
        name = "get_view" if hasattr(store, "get_view") else "get"
        get_view = getattr(store, name)

        def timed_get_view(view, *args, **kwargs):
            start = time.perf_counter()
            try:
                self._computed += 0 if store.has(view) else 1
                return get_view(view, *args, **kwargs)
            finally:
                self._store_s += time.perf_counter() - start

        setattr(store, name, timed_get_view)

    def _now(self, pl_module: L.LightningModule) -> float:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)
        return time.perf_counter()

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._store_s, self._computed, self._samples, self._steps = 0.0, 0, 0, 0
        self._steps_s = 0.0
        self._starts = []
        # callbacks run before the module's hook, so a store fill is inside
        self._t0 = self._now(pl_module)
        self._close_previous(self._t0)
        self._prev_start = self._t0

    def _close_previous(self, now: float) -> None:
        """The previous epoch's start-to-start time: its steps plus validation and checkpoints."""
        if self._prev_start is not None and self.epochs:
            self.epochs[-1]["wall_s"] = now - self._prev_start

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._starts.append(self._now(pl_module))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._steps_s += self._now(pl_module) - self._starts[-1]
        self._samples += int(batch["idx"].numel())
        self._steps += 1

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        seconds = self._now(pl_module) - self._t0
        epoch = {
            "epoch": int(trainer.current_epoch),
            "seconds": seconds,
            "samples": self._samples,
            "steps": self._steps,
            "steps_s": self._steps_s,
            # start to next start: a step's own work plus the fetch of the next batch
            "step_intervals": step_intervals(self._starts, self._now(pl_module)),
        }
        if self._has_store:
            epoch.update(store_s=self._store_s, store_views_computed=self._computed)
        self.epochs.append(epoch)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._close_previous(self._now(pl_module))
        Path(self.out).write_text(json.dumps({"epochs": self.epochs}))


class FirstStep(L.Callback):
    """Writes the wall-clock time (``time.time()``) of the first training step's start to ``out``."""

    def __init__(self, out: str) -> None:
        self.out = out
        self._done = False

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if not self._done:
            Path(self.out).write_text(repr(time.time()))
            self._done = True


@dataclass
class Options:
    """What to run and how big."""

    cases: tuple[str, ...]
    quick: bool
    device: str
    batch_size: int
    val_size: int
    num_workers: int
    data_dir: str
    fmnist_epochs: int
    fmnist_samples: int | None
    cifar_steps: int
    sweep_runs: int
    sweep_plain_runs: int
    sweep_fraction: float
    sweep_samples: int | None
    fixed_epochs: int
    fixed_samples: int
    baseline_src: str | None
    repeat: int = 1
    fused: str = "kdlight"


# ---- helpers ---------------------------------------------------------------------------------


def _log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def _r(x: float, nd: int = 4) -> float:
    return round(float(x), nd)


def emit(doc: dict[str, Any], output: str | Path | None) -> None:
    """Print the benchmark's JSON document on stdout, and write it to ``output`` when given."""
    text = json.dumps(doc, indent=2)
    if output:
        Path(output).write_text(text + "\n")
    print(text, flush=True)


def _ratio(a: float, b: float) -> float | None:
    return _r(a / b) if b > 0 and math.isfinite(a / b) else None


@contextlib.contextmanager
def _stdout_to_stderr() -> Iterator[None]:
    """Send everything written to stdout meanwhile (Python and C level, worker processes too) to stderr."""
    sys.stdout.flush()
    real = os.dup(1)
    os.dup2(2, 1)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        sys.stdout.flush()
        os.dup2(real, 1)
        os.close(real)


def _quiet() -> None:
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "kdlight"):
        logging.getLogger(name).setLevel(logging.WARNING)
    for pattern in (
        ".*does not have many workers.*",
        ".*module\\(s\\) in eval mode.*",
        ".*isinstance\\(treespec.*",
    ):
        warnings.filterwarnings("ignore", message=pattern)
    warnings.filterwarnings("ignore", category=DeprecationWarning)


def _compose(
    experiment: str,
    overrides: list[str],
    out_dir: Path,
    store_dir: Path,
    o: Options,
    full_callbacks: bool = False,
):
    """The config a user gets for ``+experiment=NAME``, with benchmark plumbing: no logger, bar, validation.

    ``full_callbacks``: keep the logger, callbacks, checkpoints and validation a user gets.
    """
    from hydra import compose, initialize_config_dir
    from omegaconf import open_dict

    base = [
        f"+experiment={experiment}",
        f"paths.data_dir={o.data_dir}",
        f"paths.output_dir={out_dir}",
        f"paths.store_dir={store_dir}",
        f"trainer.accelerator={'gpu' if o.device == 'cuda' else 'cpu'}",
        f"data.batch_size={o.batch_size}",
        f"data.val_size={o.val_size}",
        f"data.eval_batch_size={o.batch_size}",
        "+trainer.limit_test_batches=1",  # run() always tests: one training-sized batch keeps it small
        "module.log_agreement=false",  # else the test pass runs the teacher over the test set
    ]
    if o.fused == "none":
        base.append("module.fused_optimizer=false")
    if not full_callbacks:
        base += [
            "~logger",
            "callbacks=none",
            "+trainer.enable_progress_bar=false",
            "+trainer.enable_model_summary=false",
            "+trainer.enable_checkpointing=false",  # else Lightning adds a default ModelCheckpoint
            "+trainer.limit_val_batches=0",  # only training is timed; validation would only add noise
        ]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="train", overrides=base + overrides)
    with open_dict(cfg):
        cfg.paths.output_dir = str(out_dir)
    return cfg


def _subset(train_y: torch.Tensor, o: Options, samples: int | None) -> tuple[torch.Tensor, float]:
    """kdlight's training indices for ``samples`` (None: all) and the ``data.labeled_fraction`` giving them."""
    from kdlight.data.subsets import labeled_subset, split_train_val

    pool, _ = split_train_val(train_y, o.val_size, 0)
    fraction = 1.0 if samples is None or samples >= pool.numel() else samples / pool.numel()
    return labeled_subset(pool, train_y, fraction, 0), fraction


def _save_teacher(cfg, path: Path, batch: int = 64) -> Path:
    """Save a randomly initialised teacher's state_dict (its BatchNorm statistics set on random inputs)."""
    from hydra.utils import instantiate

    torch.manual_seed(0)
    net = instantiate(cfg.teacher)
    if any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in net.modules()):
        shape = (batch, 3, 32, 32) if "cifar" in cfg.data._target_.lower() else (batch, 1, 28, 28)
        net.train()
        with torch.no_grad():  # a few passes so eval-mode logits stay in float16's range
            for _ in range(3):
                net(torch.randn(shape))
    torch.save(net.state_dict(), path)
    return path


def _epochs_summary(epochs: list[dict[str, Any]], wall_s: float | None = None) -> dict[str, Any]:
    samples = sum(e["samples"] for e in epochs)
    seconds = sum(e["seconds"] for e in epochs)
    store_s = sum(e.get("store_s", 0.0) for e in epochs)
    train_s = seconds - store_s
    out: dict[str, Any] = {
        "epochs": len(epochs),
        "steps": sum(e["steps"] for e in epochs),
        "samples": samples,
        "samples_per_epoch": [e["samples"] for e in epochs],
        "seconds": _r(seconds),
        "epoch_s": [_r(e["seconds"]) for e in epochs],
        "samples_per_s": _r(samples / seconds, 1) if seconds > 0 else None,
    }
    if any("store_s" in e for e in epochs):
        out.update(
            store_s=_r(store_s),
            store_s_per_epoch=[_r(e["store_s"]) for e in epochs],
            store_views_computed=sum(e["store_views_computed"] for e in epochs),
            train_s=_r(train_s),
            samples_per_s_excl_store=_r(samples / train_s, 1) if train_s > 0 else None,
        )
    if all("steps_s" in e for e in epochs):
        out["steps_s"] = _r(sum(e["steps_s"] for e in epochs))
    intervals = [i for e in epochs for i in e.get("step_intervals", [])]
    if intervals:  # the typical step, start to next start: a burst of host noise moves it little
        out["step_ms_median"] = _r(1000 * statistics.median(intervals))
    walls = [e["wall_s"] - e["steps_s"] for e in epochs if "wall_s" in e and "steps_s" in e]
    if walls:  # epoch start to next epoch start, minus the steps: validation, checkpoints, store
        out["outside_steps_s_per_epoch"] = [_r(w) for w in walls]
    if wall_s is not None:
        out["run_wall_s"] = _r(wall_s)
    return out


def _to_limit(
    runs: dict[str, dict[str, Any]], limit: str = "bare_limit"
) -> dict[str, float | None]:
    """Every run's samples/s over the limit's (the bare loop): the machine's share each one gets."""
    base = runs[limit]["samples_per_s"] or 0.0
    return {
        f"{name}_over_{limit}": _ratio(r["samples_per_s"] or 0.0, base)
        for name, r in runs.items()
        if name != limit
    }


def _targets(
    runs: dict[str, dict[str, Any]], targets: dict[str, tuple[str, str, float]]
) -> dict[str, Any]:
    """Issue 15's targets: each ratio, its floor and whether it is met (printed, never asserted)."""
    out: dict[str, Any] = {}
    for name, (num, den, floor) in targets.items():
        ratio = _ratio(runs[num]["samples_per_s"] or 0.0, runs[den]["samples_per_s"] or 0.0)
        out[name] = {
            "ratio": ratio,
            "at_least": floor,
            "met": None if ratio is None else ratio >= floor,
        }
        rounds = _per_round(runs, num, den)
        if rounds is not None:  # --repeat: ratio is of the medians; these are each round's
            out[name]["per_round"] = rounds
        out[name].update(_step_median_ratio(runs[num], runs[den]))
    return out


def _step_median_ratio(num: dict[str, Any], den: dict[str, Any]) -> dict[str, Any]:
    """The same ratio from the typical step (median start-to-start interval) instead of throughput.

    A step's interval has all of its per-step work in it (the fetch of the next batch too) but
    not the rare slow steps (a logging step, a burst of host noise), nor the work between epochs;
    so it answers "how much slower is a typical step" with less noise than ``ratio``, which stays
    the figure the targets are judged on. Over rounds: the median of each run's step medians.
    """
    a = num.get("repeats_step_ms_median") or [num.get("step_ms_median")]
    b = den.get("repeats_step_ms_median") or [den.get("step_ms_median")]
    if not all(a) or not all(b):
        return {}
    out: dict[str, Any] = {"step_median_ratio": _ratio(statistics.median(b), statistics.median(a))}
    if len(a) > 1 and len(a) == len(b):
        out["step_median_per_round"] = [_ratio(y, x) for x, y in zip(a, b, strict=True)]
    return out


def _repeated(
    fns: dict[str, Callable[[], dict[str, Any]]], repeat: int
) -> dict[str, dict[str, Any]]:
    """Run each of ``fns`` ``repeat`` times, in rounds whose order rotates by one each round.

    Per name: the run with the median samples/s (the lower middle one for an even count) and,
    when repeated, ``repeats_samples_per_s`` (every round's, in round order). Rounds interleave
    the runs so that a slow drift of the machine's speed (this project's CPUs drift by 10% and
    more within minutes) reaches every run alike, and rotation moves the first-run warm-up.
    """
    names = list(fns)
    results: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
    for r in range(repeat):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            results[name].append(fns[name]())
    out: dict[str, dict[str, Any]] = {}
    for name in names:
        runs = results[name]
        chosen = dict(sorted(runs, key=lambda x: x["samples_per_s"] or 0.0)[(len(runs) - 1) // 2])
        if repeat > 1:
            chosen["repeats_samples_per_s"] = [x["samples_per_s"] for x in runs]
            if all(x.get("step_ms_median") for x in runs):
                chosen["repeats_step_ms_median"] = [x["step_ms_median"] for x in runs]
        out[name] = chosen
    return out


def _per_round(runs: dict[str, dict[str, Any]], num: str, den: str) -> list[float | None] | None:
    """``num / den`` samples/s in each round (the same round's runs, minutes apart), when repeated."""
    a, b = runs[num].get("repeats_samples_per_s"), runs[den].get("repeats_samples_per_s")
    if not a or not b:
        return None
    return [_ratio(x or 0.0, y or 0.0) for x, y in zip(a, b, strict=True)]


def _bare(
    cfg,
    x: torch.Tensor,
    y: torch.Tensor,
    o: Options,
    epochs: int,
    *,
    teacher_file: Path | None = None,
    pad: int = 0,
    channels_last: bool = False,
    tag: str = "bare",
) -> dict[str, Any]:
    """The bare loop (no teacher) or the expert's online KD loop (``teacher_file``), same networks and optimizer as ``cfg``."""
    from bare_loop import train_bare
    from hydra.utils import instantiate

    teacher = None
    if teacher_file is not None:
        teacher = instantiate(cfg.teacher)
        teacher.load_state_dict(torch.load(teacher_file, map_location="cpu", weights_only=True))
    torch.manual_seed(int(cfg.seed))
    student = instantiate(cfg.student)
    optimizer = _loop_optimizer(cfg, student, o)
    distill = cfg.get("distill")
    res = train_bare(
        student,
        x,
        y,
        optimizer,
        batch_size=o.batch_size,
        epochs=epochs,
        device=o.device,
        seed=int(cfg.seed),
        pad=pad,
        channels_last=channels_last,
        teacher=teacher,
        alpha=float(distill.alpha) if distill is not None else 0.0,
        temperature=float(distill.temperature) if distill is not None else 1.0,
    )
    result = _epochs_summary(res["epochs"])
    _log(f"  {tag}: {result['samples_per_s']} samples/s over {result['samples']} samples")
    return result


def _loop_optimizer(cfg, student: torch.nn.Module, o: Options) -> torch.optim.Optimizer:
    """The hand-written loops' optimizer: the config's, as written (``--fused all``: its fused kernel)."""
    from hydra.utils import instantiate

    factory = instantiate(cfg.module.optimizer)
    if o.fused == "all":
        return factory(student.parameters(), fused=True)
    return factory(student.parameters())


def _normalised_train(
    arrays, idx: torch.Tensor, cfg, pad: int = 0, channels_last: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    from bare_loop import normalised

    x = normalised(
        arrays.train_x[idx],
        list(cfg.data.mean),
        list(cfg.data.std),
        pad=pad,
        channels_last=channels_last,
    )
    return x, arrays.train_y[idx]


def _kdlight(
    tag: str,
    experiment: str,
    overrides: list[str],
    work: Path,
    store: Path,
    o: Options,
    full_callbacks: bool = False,
) -> dict[str, Any]:
    """One ``kdlight.train.run`` with the epoch timer attached; its timings and wall time."""
    from kdlight.train import run

    out_dir = work / "runs" / tag
    out_dir.mkdir(parents=True, exist_ok=True)
    timer_file = out_dir / "timer.json"
    start = time.perf_counter()
    cfg = _compose(
        experiment,
        overrides
        + ["+callbacks.timer._target_=bench_kd.EpochTimer", f"+callbacks.timer.out={timer_file}"],
        out_dir,
        store,
        o,
        full_callbacks,
    )
    run(cfg)
    wall = time.perf_counter() - start
    result = _epochs_summary(json.loads(timer_file.read_text())["epochs"], wall)
    _log(
        f"  {tag}: {result['samples_per_s']} samples/s over {result['samples']} samples ({wall:.1f} s wall)"
    )
    return result


def _plain(cfg, teacher_file: Path, dataset, o: Options, epochs: int) -> dict[str, Any]:
    """The plain loop with the same teacher weights, student, optimizer and loss settings as ``cfg``."""
    from hydra.utils import instantiate
    from plain_kd_loop import train_kd

    start = time.perf_counter()
    teacher = instantiate(cfg.teacher)
    teacher.load_state_dict(torch.load(teacher_file, map_location="cpu", weights_only=True))
    torch.manual_seed(int(cfg.seed))
    student = instantiate(cfg.student)
    optimizer = _loop_optimizer(cfg, student, o)
    res = train_kd(
        teacher,
        student,
        dataset,
        optimizer,
        alpha=float(cfg.distill.alpha),
        temperature=float(cfg.distill.temperature),
        batch_size=o.batch_size,
        epochs=epochs,
        num_workers=o.num_workers,
        device=o.device,
        seed=int(cfg.seed),
    )
    wall = time.perf_counter() - start
    result = _epochs_summary(res["epochs"], wall)
    _log(
        f"  plain: {result['samples_per_s']} samples/s over {result['samples']} samples ({wall:.1f} s wall)"
    )
    return result


def _case_header(o: Options) -> dict[str, Any]:
    return {
        "device": o.device,
        "torch_threads": torch.get_num_threads(),
        "batch_size": o.batch_size,
        "dataloader_workers_plain": o.num_workers,
        "dataloader_workers_kdlight": 0,
    }


# ---- cases ---------------------------------------------------------------------------------


def case_fmnist_mlp(o: Options, work: Path) -> dict[str, Any]:
    """MLP-1200 teacher -> MLP-800 student on Fashion-MNIST, full epochs."""
    from plain_kd_loop import fashion_mnist_dataset

    from kdlight.data.sources import load_mnist_family

    arrays = load_mnist_family("fashion_mnist", o.data_dir)
    idx, fraction = _subset(arrays.train_y, o, o.fmnist_samples)
    # data.views=1 changes nothing without augmentation (not even the store key), but works around
    # DistillationModule asking the store for view=epoch while it filled only view 0
    common = [
        f"data.labeled_fraction={fraction}",
        f"trainer.max_epochs={o.fmnist_epochs}",
        "data.views=1",
    ]
    cfg = _compose("fmnist_mlp_kd", common, work / "runs" / "compose", work / "unused", o)
    teacher = _save_teacher(cfg, work / "teacher_mlp1200.pt")
    kd = [*common, f"teacher_ckpt={teacher}"]
    store = work / "store_fmnist"

    _log(f"fmnist_mlp: {idx.numel()} training samples x {o.fmnist_epochs} epochs")
    student_cfg = _compose("fmnist_mlp", common, work / "runs" / "compose", work / "unused", o)
    x, y = _normalised_train(arrays, idx, cfg)
    # once each: the plain loop (slow, no target) and the cold store (it fills the store)
    once = {
        "plain_loop": _plain(cfg, teacher, fashion_mnist_dataset(arrays, idx), o, o.fmnist_epochs),
        "kdlight_store_cold": _kdlight("fmnist_cold", "fmnist_mlp_kd", kd, work, store, o),
    }
    # the runs the targets compare, --repeat times in rotating rounds (default once, in this order)
    repeated = _repeated(
        {
            "bare_limit": lambda: _bare(student_cfg, x, y, o, o.fmnist_epochs, tag="bare"),
            "expert_kd_online": lambda: _bare(
                cfg, x, y, o, o.fmnist_epochs, teacher_file=teacher, tag="expert"
            ),
            "kdlight_online": lambda: _kdlight(
                "fmnist_online",
                "fmnist_mlp_kd",
                [*kd, "teacher_store.enabled=false"],
                work,
                store,
                o,
            ),
            "kdlight_store_warm": lambda: _kdlight(
                "fmnist_warm", "fmnist_mlp_kd", kd, work, store, o
            ),
            "kdlight_student_alone": lambda: _kdlight(
                "fmnist_student", "fmnist_mlp", common, work, store, o
            ),
        },
        o.repeat,
    )
    runs = {**repeated, **once}
    plain = runs["plain_loop"]["samples_per_s"]
    warm_epoch = runs["kdlight_store_warm"]["seconds"] / runs["kdlight_store_warm"]["epochs"]
    student_epoch = (
        runs["kdlight_student_alone"]["seconds"] / runs["kdlight_student_alone"]["epochs"]
    )
    warm_over_student = _ratio(warm_epoch, student_epoch)
    return {
        "what": "MLP-784-1200-1200-10 teacher -> MLP-784-800-800-10 student, Hinton KD, SGD; full epochs",
        **_case_header(o),
        "train_samples": int(idx.numel()),
        "epochs": o.fmnist_epochs,
        "runs": runs,
        "to_limit": _to_limit(runs),
        "targets": _targets(runs, FMNIST_TARGETS),
        "ratios": {
            "kdlight_warm_over_plain": _ratio(runs["kdlight_store_warm"]["samples_per_s"], plain),
            "kdlight_online_over_plain": _ratio(runs["kdlight_online"]["samples_per_s"], plain),
            "kdlight_cold_over_plain": _ratio(runs["kdlight_store_cold"]["samples_per_s"], plain),
            "kdlight_online_over_expert": _ratio(
                runs["kdlight_online"]["samples_per_s"], runs["expert_kd_online"]["samples_per_s"]
            ),
            "kd_warm_epoch_over_student_epoch": warm_over_student,
            "kd_warm_epoch_over_student_epoch_target_max": KD_WARM_OVER_STUDENT_TARGET,
            "kd_warm_epoch_over_student_epoch_within_target": (
                None
                if warm_over_student is None
                else warm_over_student <= KD_WARM_OVER_STUDENT_TARGET
            ),
        },
        "notes": [
            "bare_limit: the student alone over one normalised in-memory tensor, index-gather batches, no "
            "DataLoader, no Lightning (bare_loop.py): the machine's limit; to_limit gives every run's share of it",
            "expert_kd_online: the same loop with the teacher run every batch (an expert's online KD loop)",
            "samples_per_s = samples / summed train-epoch seconds (loader start-up and, for kdlight, the "
            "teacher-store fill in on_train_epoch_start included); validation off, test one batch, outside the timing",
            "no augmentation, so one store view serves every epoch: the cold run fills it in epoch 0 (store_s), "
            "the warm run reuses the same store directory and computes nothing (store_views_computed=0)",
            "kd_warm_epoch_over_student_epoch: mean warm-store KD epoch time / mean epoch time of the same "
            "student trained alone with cross-entropy (+experiment=fmnist_mlp)",
            STEP_MEDIAN_NOTE,
        ],
    }


def case_cifar(o: Options, work: Path, name: str = "cifar_resnet18_cnn") -> dict[str, Any]:
    """A CIFAR-10 case of :data:`CIFAR_CASES` (ResNet-18 -> 5-layer CNN, ...) with crop+flip, a fixed number of steps."""
    from plain_kd_loop import cifar10_dataset

    from kdlight.data.sources import load_cifar10

    arrays = load_cifar10(o.data_dir)
    idx, fraction = _subset(arrays.train_y, o, o.cifar_steps * o.batch_size)
    common = [f"data.labeled_fraction={fraction}", "trainer.max_epochs=1"]
    experiment, teacher_name, what, targets = CIFAR_CASES[name]
    cfg = _compose(experiment, common, work / "runs" / "compose", work / "unused", o)
    # --quick: BatchNorm statistics from one small batch (a ResNeXt-29 pass over 64 images takes a CPU long)
    teacher = _save_teacher(cfg, work / f"teacher_{name}.pt", o.batch_size if o.quick else 64)
    kd = [*common, f"teacher_ckpt={teacher}"]
    store = work / "store_cifar"

    _log(f"{name}: {idx.numel()} training samples = {math.ceil(idx.numel() / o.batch_size)} steps")
    pad = int(cfg.data.pad)
    x, y = _normalised_train(arrays, idx, cfg, pad=pad, channels_last=True)
    bare_args = {"pad": pad, "channels_last": True}
    runs = {
        "expert_kd_online": _bare(cfg, x, y, o, 1, teacher_file=teacher, tag="expert", **bare_args),
        "plain_loop": _plain(cfg, teacher, cifar10_dataset(arrays, idx), o, 1),
        "kdlight_online": _kdlight(
            "cifar_online", experiment, [*kd, "teacher_store.enabled=false"], work, store, o
        ),
        "kdlight_store_cold": _kdlight("cifar_cold", experiment, kd, work, store, o),
    }
    # the target's two runs (fast with the store warm), --repeat times in rotating rounds
    runs = {
        **_repeated(
            {
                "bare_limit": lambda: _bare(cfg, x, y, o, 1, tag="bare", **bare_args),
                "kdlight_store_warm": lambda: _kdlight(
                    "cifar_warm", experiment, kd, work, store, o
                ),
            },
            o.repeat,
        ),
        **runs,
    }
    plain = runs["plain_loop"]["samples_per_s"]
    return {
        "what": what,
        **_case_header(o),
        "train_samples": int(idx.numel()),
        "steps": math.ceil(idx.numel() / o.batch_size),
        "runs": runs,
        "to_limit": _to_limit(runs),
        "targets": _targets(runs, targets),
        "ratios": {
            "kdlight_warm_over_plain": _ratio(runs["kdlight_store_warm"]["samples_per_s"], plain),
            "kdlight_online_over_plain": _ratio(runs["kdlight_online"]["samples_per_s"], plain),
            "kdlight_cold_incl_fill_over_plain": _ratio(
                runs["kdlight_store_cold"]["samples_per_s"], plain
            ),
            "kdlight_cold_excl_fill_over_plain": _ratio(
                runs["kdlight_store_cold"]["samples_per_s_excl_store"], plain
            ),
            "kdlight_online_over_expert": _ratio(
                runs["kdlight_online"]["samples_per_s"], runs["expert_kd_online"]["samples_per_s"]
            ),
        },
        "notes": [
            "bare_limit: the student alone over one normalised, zero-padded, channels-last tensor in memory; "
            "each batch an index gather, then random crop + flip as one gather (bare_loop.py); expert_kd_online: "
            f"the same with the {teacher_name} teacher run every batch",
            f"the fixed step count is one epoch over a stratified subset of steps x batch = {idx.numel()} training "
            f"images (data.labeled_fraction={fraction:.6g}); the plain loop trains on the same images",
            "augmentation makes each epoch its own view: the cold run's store fill (store_s) runs the teacher "
            "once over every image of the subset for epoch 0's view, in inference batches of teacher_store.batch_size "
            "(default 256); the warm run repeats the same run with the same store directory, so the view is already there",
            "kdlight's CIFAR-10 batches are channels-last (data.channels_last, default true); the plain loop's are NCHW, "
            "as torchvision's transforms make them",
            "a warm store is what every run after the first of a sweep over alpha, T or lr sees (case sweep10)",
            STEP_MEDIAN_NOTE,
        ],
    }


def case_sweep(o: Options, work: Path) -> dict[str, Any]:
    """Wall time of a sweep of KD runs (alpha x T) sharing one teacher-logit store vs the same runs as plain loops."""
    from plain_kd_loop import cifar10_dataset

    from kdlight.data.sources import load_cifar10

    arrays = load_cifar10(o.data_dir)
    pool = arrays.train_y.numel() - o.val_size
    samples = o.sweep_samples if o.sweep_samples is not None else round(o.sweep_fraction * pool)
    idx, fraction = _subset(arrays.train_y, o, samples)
    common = [f"data.labeled_fraction={fraction}", "trainer.max_epochs=1"]
    cfg0 = _compose("cifar_cnn_kd", common, work / "runs" / "compose", work / "unused", o)
    teacher = _save_teacher(cfg0, work / "teacher_resnet18_sweep.pt")
    grid = SWEEP_GRID[: o.sweep_runs]
    store = work / "store_sweep"
    _log(f"sweep10: {len(grid)} runs x 1 epoch of {idx.numel()} samples")

    kd_runs = []
    start = time.perf_counter()
    for i, (alpha, t) in enumerate(grid):
        over = [
            *common,
            f"teacher_ckpt={teacher}",
            f"distill.alpha={alpha}",
            f"distill.temperature={t}",
        ]
        kd_runs.append(
            {
                "alpha": alpha,
                "T": t,
                **_kdlight(f"sweep_kd_{i}", "cifar_cnn_kd", over, work, store, o),
            }
        )
    kd_total = time.perf_counter() - start

    plain_grid = grid[: max(1, min(o.sweep_plain_runs, len(grid)))]
    plain_cfgs = [
        _compose(
            "cifar_cnn_kd",
            [*common, f"distill.alpha={a}", f"distill.temperature={t}"],
            work / "runs" / "compose",
            work / "unused",
            o,
        )
        for a, t in plain_grid
    ]  # composed outside the timing: a plain script has its models and settings written in
    plain_runs = []
    start = time.perf_counter()
    for (alpha, t), cfg in zip(plain_grid, plain_cfgs, strict=True):
        plain_runs.append(
            {"alpha": alpha, "T": t, **_plain(cfg, teacher, cifar10_dataset(arrays, idx), o, 1)}
        )
    plain_measured = time.perf_counter() - start
    extrapolated = len(plain_runs) < len(grid)
    plain_total = plain_measured / len(plain_runs) * len(grid)

    kd_samples = sum(r["samples"] for r in kd_runs)
    plain_samples = sum(r["samples"] for r in plain_runs) / len(plain_runs) * len(grid)

    # the bound: one teacher pass at its inference speed + every run's student at the bare loop's
    from bare_loop import inference_seconds, normalised
    from hydra.utils import instantiate

    pad = int(cfg0.data.pad)
    x, y = _normalised_train(arrays, idx, cfg0, pad=pad, channels_last=True)
    bare = _bare(cfg0, x, y, o, 1, tag="bare", pad=pad, channels_last=True)
    net = instantiate(cfg0.teacher)
    net.load_state_dict(torch.load(teacher, map_location="cpu", weights_only=True))
    x_view = normalised(
        arrays.train_x[idx], list(cfg0.data.mean), list(cfg0.data.std), channels_last=True
    )
    teacher_pass = inference_seconds(
        net, x_view, int(cfg0.teacher_store.batch_size), o.device, True
    )
    bound = teacher_pass + len(grid) * bare["seconds"]
    return {
        "what": f"{len(grid)} KD runs ResNet-18 -> 5-layer CNN (alpha x T grid), one epoch each, sharing one store",
        **_case_header(o),
        "runs": len(grid),
        "train_samples_per_run": int(idx.numel()),
        "grid": [{"alpha": a, "T": t} for a, t in grid],
        "kdlight": {
            "seconds": _r(kd_total),
            "samples": kd_samples,
            "samples_per_s": _r(kd_samples / kd_total, 1),
            "first_run_wall_s": kd_runs[0]["run_wall_s"],
            "store_fill_s": kd_runs[0].get("store_s"),
            "store_views_computed": sum(r.get("store_views_computed", 0) for r in kd_runs),
            "per_run": kd_runs,
        },
        "plain_loop": {
            "seconds": _r(plain_total),
            "samples": int(plain_samples),
            "samples_per_s": _r(plain_samples / plain_total, 1),
            "extrapolated": extrapolated,
            "measured_runs": len(plain_runs),
            "measured_seconds": _r(plain_measured),
            "per_run": plain_runs,
        },
        "bound": {
            "seconds": _r(bound),
            "teacher_pass_s": _r(teacher_pass),
            "bare_student_run_s": bare["seconds"],
            "bare_student_run": bare,
        },
        "targets": {
            "kdlight_seconds_over_bound": {
                "ratio": _ratio(kd_total, bound),
                "at_most": SWEEP_BOUND_TARGET,
                "met": None if bound <= 0 else kd_total / bound <= SWEEP_BOUND_TARGET,
            }
        },
        "ratios": {
            "kdlight_seconds_over_bound": _ratio(kd_total, bound),
            "plain_seconds_over_kdlight_seconds": _ratio(plain_total, kd_total),
            "kdlight_samples_per_s_over_plain": _ratio(
                kd_samples / kd_total, plain_samples / plain_total
            ),
        },
        "notes": [
            "seconds: wall time of the whole sweep, each run from composing its config (kdlight) or building "
            "its models and loader (plain) to the end of training (kdlight: also its one-batch test pass)",
            "data decoding is outside both: the CIFAR-10 arrays are loaded once per process, as in a Hydra multirun",
            "the first kdlight run fills the store for the shared view (store_fill_s); the others reuse it",
            "extrapolated=true means the plain total is measured_seconds / measured_runs x runs",
            "bound: one ResNet-18 inference pass over the subset (teacher_store.batch_size, channels-last, no "
            "augmentation) + runs x one bare-loop epoch of the student (bare_loop.py); kdlight_seconds_over_bound "
            "includes every run's fixed cost (config, data set-up, models, the one-batch test), which the bound does not",
        ],
    }


def _timed_cli(args: list[str], cwd: Path, env: dict[str, str], first_step: Path) -> dict[str, Any]:
    """Wall time of one ``python -m kdlight.train`` process and the time from its start to its first step."""
    first_step.unlink(missing_ok=True)
    start_wall = time.time()
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "kdlight.train", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"kdlight.train failed: {proc.stderr[-2000:]}")
    first = float(first_step.read_text()) - start_wall if first_step.exists() else None
    return {"wall_s": _r(wall), "to_first_step_s": None if first is None else _r(first)}


def case_fixed_cost(o: Options, work: Path) -> dict[str, Any]:
    """What a run costs besides its steps: start-up to the first step (``+debug=fdr``) and per epoch."""
    from kdlight.data.sources import load_mnist_family

    arrays = load_mnist_family("fashion_mnist", o.data_dir)  # decoded and cached outside the timing
    cfg = _compose("fmnist_mlp_kd", [], work / "runs" / "compose", work / "unused", o)
    teacher = _save_teacher(cfg, work / "teacher_mlp1200.pt")
    store = work / "store"
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(BENCH_DIR), env.get("PYTHONPATH", "")) if p)
    first = work / "first_step.txt"
    common = [
        "+experiment=fmnist_mlp_kd",
        f"teacher_ckpt={teacher}",
        f"paths.data_dir={o.data_dir}",
        f"paths.store_dir={store}",
        f"paths.root_dir={work}",
        f"data.val_size={o.val_size}",
        "+callbacks.first_step._target_=bench_kd.FirstStep",
        f"+callbacks.first_step.out={first}",
    ]
    floor_start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import torch, lightning"], env=env, check=True)
    import_floor = time.perf_counter() - floor_start

    def fdr(tag: str, src: str | None) -> dict[str, Any]:
        run_env = dict(env)
        if src is not None:  # another checkout's package first on the path (e.g. before a change)
            run_env["PYTHONPATH"] = os.pathsep.join((src, env["PYTHONPATH"]))
        args = [*common, "+debug=fdr", f"hydra.run.dir={work / 'runs' / tag}"]
        _timed_cli(args, work, run_env, first)  # warm: the store's teacher key, caches, page cache
        res = _timed_cli(
            [*args[:-1], f"hydra.run.dir={work / 'runs' / (tag + '_2')}"], work, run_env, first
        )
        _log(f"  {tag}: {res['wall_s']} s wall, first step after {res['to_first_step_s']} s")
        return res

    runs: dict[str, Any] = {"fdr": fdr("fdr", None)}
    if o.baseline_src:
        runs["fdr_baseline"] = fdr("fdr_baseline", o.baseline_src)
    idx, fraction = _subset(arrays.train_y, o, o.fixed_samples)
    epochs = _kdlight(
        "small_epochs",
        "fmnist_mlp_kd",
        [
            f"teacher_ckpt={teacher}",
            f"data.labeled_fraction={fraction}",
            f"trainer.max_epochs={o.fixed_epochs}",
        ],
        work,
        store,
        o,
        full_callbacks=True,
    )
    runs["small_epochs"] = epochs
    outside = epochs.get("outside_steps_s_per_epoch", [])
    ratios: dict[str, Any] = {
        "fdr_wall_over_import_floor": _ratio(runs["fdr"]["wall_s"], import_floor),
        "outside_steps_over_steps_per_epoch": _ratio(
            sum(outside) / max(1, len(outside)), epochs["steps_s"] / max(1, epochs["epochs"])
        )
        if outside and epochs.get("steps_s")
        else None,
    }
    if "fdr_baseline" in runs:
        ratios["fdr_wall_over_baseline"] = _ratio(
            runs["fdr"]["wall_s"], runs["fdr_baseline"]["wall_s"]
        )
        ratios["fdr_wall_over_baseline_target_max"] = 0.5
    return {
        "what": "fixed cost: python -m kdlight.train +experiment=fmnist_mlp_kd +debug=fdr (a trained teacher "
        "given), and the per-epoch cost outside the steps of a small run with validation, checkpoints and logger",
        **_case_header(o),
        "import_floor_s": _r(import_floor),
        "train_samples_small": int(idx.numel()),
        "runs": runs,
        "ratios": ratios,
        "notes": [
            "import_floor_s: a fresh python importing torch and lightning, the least any run pays",
            "fdr: the second of two identical runs (the first warms the store key and the page cache); "
            "wall_s is the whole process, to_first_step_s its start to the first training step",
            "fdr_baseline (with --baseline-src DIR, e.g. an older checkout's src/): the same with that code; "
            "the target is fdr_wall_over_baseline <= 0.5 against the code before issue 15",
            "small_epochs: outside_steps_s_per_epoch is each epoch's start-to-start time minus its steps "
            "(validation, checkpoints, logger, store checks)",
        ],
    }


CASE_FUNCS = {
    "fmnist_mlp": case_fmnist_mlp,
    "cifar_resnet18_cnn": case_cifar,
    "sweep10": case_sweep,
    "fixed_cost": case_fixed_cost,
    "cifar_resnext29_resnet18": functools.partial(case_cifar, name="cifar_resnext29_resnet18"),
}


# ---- CLI -----------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> tuple[Options, argparse.Namespace]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--cases",
        default=",".join(CASES),
        help=f"comma-separated subset of {','.join(CASES + GPU_CASES)} (default: {','.join(CASES)})",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="tiny sizes (seconds): checks the benchmark runs, not speed",
    )
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="rounds of the runs that issue 15's targets compare (fmnist_mlp, cifar_*), in rotating "
        "order; each run reports its median round (default 1)",
    )
    p.add_argument("--batch-size", type=int, default=None, help="default 128 (--quick: 32)")
    p.add_argument(
        "--val-size",
        type=int,
        default=None,
        help="held-out samples, as data.val_size (default 5000; --quick: 50)",
    )
    p.add_argument(
        "--num-workers", type=int, default=2, help="DataLoader workers of the plain loop"
    )
    p.add_argument(
        "--data-dir",
        default="data",
        help="as paths.data_dir (Fashion-MNIST also from Debian's package)",
    )
    p.add_argument("--fmnist-epochs", type=int, default=2)
    p.add_argument(
        "--cifar-steps",
        type=int,
        default=None,
        help="training steps of case 2 (default 30; --quick: 2)",
    )
    p.add_argument(
        "--sweep-runs", type=int, default=None, help="runs in the sweep (default 10; --quick: 2)"
    )
    p.add_argument(
        "--sweep-plain-runs",
        type=int,
        default=None,
        help="plain-loop runs measured; fewer than --sweep-runs extrapolates",
    )
    p.add_argument(
        "--sweep-fraction", type=float, default=0.05, help="training subset of each sweep run"
    )
    p.add_argument(
        "--work-dir",
        default=None,
        help="keep runs and stores here (default: a temporary directory)",
    )
    p.add_argument(
        "--fixed-epochs",
        type=int,
        default=None,
        help="epochs of fixed_cost's small run (default 3)",
    )
    p.add_argument(
        "--fixed-samples",
        type=int,
        default=None,
        help="training samples of fixed_cost's small run (default 2750, 5%%; --quick: 64)",
    )
    p.add_argument(
        "--baseline-src",
        default=None,
        help="fixed_cost: also time the +debug=fdr run with this checkout's src/ first on PYTHONPATH",
    )
    p.add_argument(
        "--fused",
        choices=("kdlight", "all", "none"),
        default="kdlight",
        help="the optimizer's fused kernel: kdlight (kdlight's default module.fused_optimizer=auto; "
        "the hand-written loops use the optimizer as the config writes it), all (the loops too), "
        "none (kdlight with module.fused_optimizer=false as well)",
    )
    p.add_argument("--output", default=None, help="also write the JSON to this file")
    a = p.parse_args(argv)
    cases = tuple(c.strip() for c in a.cases.split(",") if c.strip())
    unknown = [c for c in cases if c not in CASES + GPU_CASES]
    if unknown or not cases:
        p.error(f"--cases {a.cases!r} is invalid; choose from {', '.join(CASES + GPU_CASES)}")
    if a.repeat < 1:
        p.error(f"--repeat {a.repeat} is invalid; it must be an integer >= 1")
    if a.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda was asked for but torch sees no CUDA device")
    sweep_runs = a.sweep_runs if a.sweep_runs is not None else (2 if a.quick else 10)
    if not 1 <= sweep_runs <= len(SWEEP_GRID):
        p.error(f"--sweep-runs {sweep_runs} is invalid; it must be in [1, {len(SWEEP_GRID)}]")
    o = Options(
        cases=cases,
        quick=a.quick,
        device=a.device,
        batch_size=a.batch_size or (32 if a.quick else 128),
        val_size=a.val_size if a.val_size is not None else (50 if a.quick else 5000),
        num_workers=a.num_workers,
        data_dir=str(Path(a.data_dir).expanduser().resolve()),
        fmnist_epochs=a.fmnist_epochs,
        fmnist_samples=96 if a.quick else None,
        cifar_steps=a.cifar_steps or (2 if a.quick else 30),
        sweep_runs=sweep_runs,
        sweep_plain_runs=a.sweep_plain_runs if a.sweep_plain_runs is not None else sweep_runs,
        sweep_fraction=a.sweep_fraction,
        sweep_samples=64 if a.quick else None,
        fixed_epochs=a.fixed_epochs or (2 if a.quick else 3),
        fixed_samples=a.fixed_samples or (64 if a.quick else 2750),
        baseline_src=str(Path(a.baseline_src).resolve()) if a.baseline_src else None,
        repeat=a.repeat,
        fused=a.fused,
    )
    return o, a


def machine() -> dict[str, Any]:
    info = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0))
        if hasattr(os, "sched_getaffinity")
        else os.cpu_count(),
        "torch": torch.__version__,
        "lightning": L.__version__,
    }
    if torch.cuda.is_available():
        info["cuda_device"] = torch.cuda.get_device_name(0)
    return info


def main(argv: list[str] | None = None) -> int:
    o, a = parse_args(argv)
    _quiet()
    doc: dict[str, Any] = {
        "benchmark": "kdlight vs the machine's limit (a bare loop), an expert KD loop and a plain PyTorch KD loop",
        "quick": o.quick,
        "machine": machine(),
        "device": o.device,
        "torch_threads": torch.get_num_threads(),
        "batch_size": o.batch_size,
        "options": asdict(o),
        "loadavg_start": [_r(x, 2) for x in os.getloadavg()],
        "cases": {},
    }
    started = time.perf_counter()
    failed = []
    with contextlib.ExitStack() as stack:
        # absolute: the CLI runs (fixed_cost) start in other directories and get paths under it
        work = (
            Path(a.work_dir).resolve()
            if a.work_dir
            else Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="kdbench-")))
        )
        with _stdout_to_stderr():
            for name in o.cases:
                case_start = time.perf_counter()
                (work / name).mkdir(parents=True, exist_ok=True)
                try:
                    doc["cases"][name] = CASE_FUNCS[name](o, work / name)
                except Exception as exc:  # noqa: BLE001 - one failed case must not lose the others
                    _log(f"{name} failed: {type(exc).__name__}: {exc}")
                    doc["cases"][name] = {"error": f"{type(exc).__name__}: {exc}"[-2000:]}
                    failed.append(name)
                doc["cases"][name]["case_wall_s"] = _r(time.perf_counter() - case_start)
    doc["total_s"] = _r(time.perf_counter() - started)
    doc["loadavg_end"] = [_r(x, 2) for x in os.getloadavg()]
    if failed:
        doc["failed_cases"] = failed
    emit(doc, a.output)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
