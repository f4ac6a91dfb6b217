"""Training speed of kdlight against the machine's limit (a bare loop), an expert's KD loop and a
plain PyTorch KD loop; prints one JSON document on stdout.

Usage: ``.venv/bin/python benchmarks/bench_kd.py [--cases fmnist_mlp,cifar_resnet18_cnn,sweep10,fixed_cost] [--quick]``
(see benchmarks/README.md for what each case measures). Progress goes to stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from kd.cases import CASE_FUNCS, CASES, GPU_CASES, SWEEP_GRID
from kd.harness import Options, emit, log, machine, quiet, rounded, stdout_to_stderr


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


def main(argv: list[str] | None = None) -> int:
    o, a = parse_args(argv)
    quiet()
    doc: dict[str, Any] = {
        "benchmark": "kdlight vs the machine's limit (a bare loop), an expert KD loop and a plain PyTorch KD loop",
        "quick": o.quick,
        "machine": machine(),
        "device": o.device,
        "torch_threads": torch.get_num_threads(),
        "batch_size": o.batch_size,
        "options": asdict(o),
        "loadavg_start": [rounded(x, 2) for x in os.getloadavg()],
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
        with stdout_to_stderr():
            for name in o.cases:
                case_start = time.perf_counter()
                (work / name).mkdir(parents=True, exist_ok=True)
                try:
                    doc["cases"][name] = CASE_FUNCS[name](o, work / name)
                except Exception as exc:  # noqa: BLE001 - one failed case must not lose the others
                    log(f"{name} failed: {type(exc).__name__}: {exc}")
                    doc["cases"][name] = {"error": f"{type(exc).__name__}: {exc}"[-2000:]}
                    failed.append(name)
                doc["cases"][name]["case_wall_s"] = rounded(time.perf_counter() - case_start)
    doc["total_s"] = rounded(time.perf_counter() - started)
    doc["loadavg_end"] = [rounded(x, 2) for x in os.getloadavg()]
    if failed:
        doc["failed_cases"] = failed
    emit(doc, a.output)
    return 1 if failed else 0
