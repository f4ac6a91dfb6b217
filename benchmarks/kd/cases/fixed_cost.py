"""Case ``fixed_cost``: what a run costs besides its steps, start-up to the first step and per epoch."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from kd.harness import Options, case_header, log, ratio, rounded
from kd.runs import compose, kdlight, save_teacher, subset

BENCH_DIR = (
    Path(__file__).resolve().parents[2]
)  # on the CLI's path: it instantiates kd.harness.FirstStep
FDR_OVER_BASELINE_TARGET = 0.5


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
    return {"wall_s": rounded(wall), "to_first_step_s": None if first is None else rounded(first)}


def case_fixed_cost(o: Options, work: Path) -> dict[str, Any]:
    """What a run costs besides its steps: start-up to the first step (``+debug=fdr``) and per epoch."""
    from kdlight.data.datasets.mnist import load_mnist_family

    arrays = load_mnist_family("fashion_mnist", o.data_dir)  # decoded and cached outside the timing
    cfg = compose("fmnist_mlp_kd", [], work / "runs" / "compose", work / "unused", o)
    teacher = save_teacher(cfg, work / "teacher_mlp1200.pt")
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
        "+callbacks.first_step._target_=kd.harness.FirstStep",
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
        log(f"  {tag}: {res['wall_s']} s wall, first step after {res['to_first_step_s']} s")
        return res

    runs: dict[str, Any] = {"fdr": fdr("fdr", None)}
    if o.baseline_src:
        runs["fdr_baseline"] = fdr("fdr_baseline", o.baseline_src)
    idx, fraction = subset(arrays.train_y, o, o.fixed_samples)
    epochs = kdlight(
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
        "fdr_wall_over_import_floor": ratio(runs["fdr"]["wall_s"], import_floor),
        "outside_steps_over_steps_per_epoch": ratio(
            sum(outside) / max(1, len(outside)), epochs["steps_s"] / max(1, epochs["epochs"])
        )
        if outside and epochs.get("steps_s")
        else None,
    }
    if "fdr_baseline" in runs:
        ratios["fdr_wall_over_baseline"] = ratio(
            runs["fdr"]["wall_s"], runs["fdr_baseline"]["wall_s"]
        )
        ratios["fdr_wall_over_baseline_target_max"] = FDR_OVER_BASELINE_TARGET
    return {
        "what": "fixed cost: python -m kdlight.train +experiment=fmnist_mlp_kd +debug=fdr (a trained teacher "
        "given), and the per-epoch cost outside the steps of a small run with validation, checkpoints and logger",
        **case_header(o),
        "import_floor_s": rounded(import_floor),
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
