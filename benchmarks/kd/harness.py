"""Timing, rounds, ratios, targets and the JSON document of the KD benchmark.

Nothing here knows a case or a loop; it imports torch and Lightning only, so the
``kd.harness.FirstStep`` callback costs a fresh ``python -m kdlight.train`` nothing more.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch

STEP_MEDIAN_NOTE = (
    "targets.*.step_median_ratio: the same ratio from each run's median step interval (start to next "
    "start, the next batch's fetch included; step_ms_median) instead of throughput: it leaves out the "
    "rare slow steps (logging steps, host bursts) and the work between epochs, so it is the steadier "
    "figure for per-step overhead; ratio (throughput) is what the targets are judged on. CPU only: "
    "a CUDA bare-loop step is not synchronised"
)


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


# ---- timing ---------------------------------------------------------------------------------


def step_intervals(starts: Sequence[float], end: float) -> list[float]:
    """Seconds from each step's start to the next one's (the last one's to ``end``)."""
    return [b - a for a, b in zip(starts, [*starts[1:], end], strict=True)]


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


# ---- output ---------------------------------------------------------------------------------


def log(msg: str) -> None:
    """Progress, on stderr (stdout holds the JSON document only)."""
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def rounded(x: float, nd: int = 4) -> float:
    return round(float(x), nd)


def ratio(a: float, b: float) -> float | None:
    """``a / b`` to 4 places, or None where it is not a finite number."""
    return rounded(a / b) if b > 0 and math.isfinite(a / b) else None


def emit(doc: dict[str, Any], output: str | Path | None) -> None:
    """Print the benchmark's JSON document on stdout, and write it to ``output`` when given."""
    text = json.dumps(doc, indent=2)
    if output:
        Path(output).write_text(text + "\n")
    print(text, flush=True)


@contextlib.contextmanager
def stdout_to_stderr() -> Iterator[None]:
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


def quiet() -> None:
    """Lightning's and kdlight's info messages and known warnings off: they would bury the progress."""
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "kdlight"):
        logging.getLogger(name).setLevel(logging.WARNING)
    for pattern in (
        ".*does not have many workers.*",
        ".*module\\(s\\) in eval mode.*",
        ".*isinstance\\(treespec.*",
    ):
        warnings.filterwarnings("ignore", message=pattern)
    warnings.filterwarnings("ignore", category=DeprecationWarning)


def machine() -> dict[str, Any]:
    """Platform, CPUs, Python, torch and Lightning versions (and the GPU's name where there is one)."""
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


def case_header(o: Options) -> dict[str, Any]:
    """What every case records about how it ran."""
    return {
        "device": o.device,
        "torch_threads": torch.get_num_threads(),
        "batch_size": o.batch_size,
        "dataloader_workers_plain": o.num_workers,
        "dataloader_workers_kdlight": 0,
    }


# ---- a run's numbers, rounds and ratios -----------------------------------------------------


def epochs_summary(epochs: list[dict[str, Any]], wall_s: float | None = None) -> dict[str, Any]:
    """One run's numbers from its epochs: samples, seconds, samples/s, store time, median step."""
    samples = sum(e["samples"] for e in epochs)
    seconds = sum(e["seconds"] for e in epochs)
    store_s = sum(e.get("store_s", 0.0) for e in epochs)
    train_s = seconds - store_s
    out: dict[str, Any] = {
        "epochs": len(epochs),
        "steps": sum(e["steps"] for e in epochs),
        "samples": samples,
        "samples_per_epoch": [e["samples"] for e in epochs],
        "seconds": rounded(seconds),
        "epoch_s": [rounded(e["seconds"]) for e in epochs],
        "samples_per_s": rounded(samples / seconds, 1) if seconds > 0 else None,
    }
    if any("store_s" in e for e in epochs):
        out.update(
            store_s=rounded(store_s),
            store_s_per_epoch=[rounded(e["store_s"]) for e in epochs],
            store_views_computed=sum(e["store_views_computed"] for e in epochs),
            train_s=rounded(train_s),
            samples_per_s_excl_store=rounded(samples / train_s, 1) if train_s > 0 else None,
        )
    if all("steps_s" in e for e in epochs):
        out["steps_s"] = rounded(sum(e["steps_s"] for e in epochs))
    intervals = [i for e in epochs for i in e.get("step_intervals", [])]
    if intervals:  # the typical step, start to next start: a burst of host noise moves it little
        out["step_ms_median"] = rounded(1000 * statistics.median(intervals))
    walls = [e["wall_s"] - e["steps_s"] for e in epochs if "wall_s" in e and "steps_s" in e]
    if walls:  # epoch start to next epoch start, minus the steps: validation, checkpoints, store
        out["outside_steps_s_per_epoch"] = [rounded(w) for w in walls]
    if wall_s is not None:
        out["run_wall_s"] = rounded(wall_s)
    return out


def repeated(
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


def per_round(runs: dict[str, dict[str, Any]], num: str, den: str) -> list[float | None] | None:
    """``num / den`` samples/s in each round (the same round's runs, minutes apart), when repeated."""
    a, b = runs[num].get("repeats_samples_per_s"), runs[den].get("repeats_samples_per_s")
    if not a or not b:
        return None
    return [ratio(x or 0.0, y or 0.0) for x, y in zip(a, b, strict=True)]


def step_median_ratio(num: dict[str, Any], den: dict[str, Any]) -> dict[str, Any]:
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
    out: dict[str, Any] = {"step_median_ratio": ratio(statistics.median(b), statistics.median(a))}
    if len(a) > 1 and len(a) == len(b):
        out["step_median_per_round"] = [ratio(y, x) for x, y in zip(a, b, strict=True)]
    return out


def to_limit(runs: dict[str, dict[str, Any]], limit: str = "bare_limit") -> dict[str, float | None]:
    """Every run's samples/s over the limit's (the bare loop): the machine's share each one gets."""
    base = runs[limit]["samples_per_s"] or 0.0
    return {
        f"{name}_over_{limit}": ratio(r["samples_per_s"] or 0.0, base)
        for name, r in runs.items()
        if name != limit
    }


def judge_targets(
    runs: dict[str, dict[str, Any]], targets: dict[str, tuple[str, str, float]]
) -> dict[str, Any]:
    """Issue 15's targets: each ratio, its floor and whether it is met (printed, never asserted)."""
    out: dict[str, Any] = {}
    for name, (num, den, floor) in targets.items():
        value = ratio(runs[num]["samples_per_s"] or 0.0, runs[den]["samples_per_s"] or 0.0)
        out[name] = {
            "ratio": value,
            "at_least": floor,
            "met": None if value is None else value >= floor,
        }
        rounds = per_round(runs, num, den)
        if rounds is not None:  # --repeat: ratio is of the medians; these are each round's
            out[name]["per_round"] = rounds
        out[name].update(step_median_ratio(runs[num], runs[den]))
    return out
