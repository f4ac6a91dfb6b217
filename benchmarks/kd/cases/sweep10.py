"""Case ``sweep10``: a sweep of KD runs (alpha x T) sharing one teacher store, against plain loops and its bound."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from kd.harness import Options, case_header, log, ratio, rounded
from kd.runs import (
    bare,
    compose,
    kdlight,
    load_teacher,
    normalised_train,
    plain,
    save_teacher,
    subset,
)

SWEEP_GRID = [(alpha, t) for t in (5.0, 20.0) for alpha in (0.3, 0.5, 0.7, 0.9, 0.95)]
SWEEP_BOUND_TARGET = 1.2  # kdlight's sweep wall time / its bound, at most


def case_sweep(o: Options, work: Path) -> dict[str, Any]:
    """Wall time of a sweep of KD runs (alpha x T) sharing one teacher-logit store vs the same runs as plain loops."""
    from kd.loops import cifar10_dataset, inference_seconds, normalised
    from kdlight.data.datasets.cifar10 import load_cifar10

    arrays = load_cifar10(o.data_dir)
    pool = arrays.train_y.numel() - o.val_size
    samples = o.sweep_samples if o.sweep_samples is not None else round(o.sweep_fraction * pool)
    idx, fraction = subset(arrays.train_y, o, samples)
    common = [f"data.labeled_fraction={fraction}", "trainer.max_epochs=1"]
    cfg0 = compose("cifar_cnn_kd", common, work / "runs" / "compose", work / "unused", o)
    teacher = save_teacher(cfg0, work / "teacher_resnet18_sweep.pt")
    grid = SWEEP_GRID[: o.sweep_runs]
    store = work / "store_sweep"
    log(f"sweep10: {len(grid)} runs x 1 epoch of {idx.numel()} samples")

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
                **kdlight(f"sweep_kd_{i}", "cifar_cnn_kd", over, work, store, o),
            }
        )
    kd_total = time.perf_counter() - start

    plain_grid = grid[: max(1, min(o.sweep_plain_runs, len(grid)))]
    plain_cfgs = [
        compose(
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
            {"alpha": alpha, "T": t, **plain(cfg, teacher, cifar10_dataset(arrays, idx), o, 1)}
        )
    plain_measured = time.perf_counter() - start
    extrapolated = len(plain_runs) < len(grid)
    plain_total = plain_measured / len(plain_runs) * len(grid)

    kd_samples = sum(r["samples"] for r in kd_runs)
    plain_samples = sum(r["samples"] for r in plain_runs) / len(plain_runs) * len(grid)

    # the bound: one teacher pass at its inference speed + every run's student at the bare loop's
    pad = int(cfg0.data.pad)
    x, y = normalised_train(arrays, idx, cfg0, pad=pad, channels_last=True)
    bare_run = bare(cfg0, x, y, o, 1, tag="bare", pad=pad, channels_last=True)
    net = load_teacher(cfg0, teacher)
    x_view = normalised(
        arrays.train_x[idx], list(cfg0.data.mean), list(cfg0.data.std), channels_last=True
    )
    teacher_pass = inference_seconds(
        net, x_view, int(cfg0.teacher_store.batch_size), o.device, True
    )
    bound = teacher_pass + len(grid) * bare_run["seconds"]
    return {
        "what": f"{len(grid)} KD runs ResNet-18 -> 5-layer CNN (alpha x T grid), one epoch each, sharing one store",
        **case_header(o),
        "runs": len(grid),
        "train_samples_per_run": int(idx.numel()),
        "grid": [{"alpha": a, "T": t} for a, t in grid],
        "kdlight": {
            "seconds": rounded(kd_total),
            "samples": kd_samples,
            "samples_per_s": rounded(kd_samples / kd_total, 1),
            "first_run_wall_s": kd_runs[0]["run_wall_s"],
            "store_fill_s": kd_runs[0].get("store_s"),
            "store_views_computed": sum(r.get("store_views_computed", 0) for r in kd_runs),
            "per_run": kd_runs,
        },
        "plain_loop": {
            "seconds": rounded(plain_total),
            "samples": int(plain_samples),
            "samples_per_s": rounded(plain_samples / plain_total, 1),
            "extrapolated": extrapolated,
            "measured_runs": len(plain_runs),
            "measured_seconds": rounded(plain_measured),
            "per_run": plain_runs,
        },
        "bound": {
            "seconds": rounded(bound),
            "teacher_pass_s": rounded(teacher_pass),
            "bare_student_run_s": bare_run["seconds"],
            "bare_student_run": bare_run,
        },
        "targets": {
            "kdlight_seconds_over_bound": {
                "ratio": ratio(kd_total, bound),
                "at_most": SWEEP_BOUND_TARGET,
                "met": None if bound <= 0 else kd_total / bound <= SWEEP_BOUND_TARGET,
            }
        },
        "ratios": {
            "kdlight_seconds_over_bound": ratio(kd_total, bound),
            "plain_seconds_over_kdlight_seconds": ratio(plain_total, kd_total),
            "kdlight_samples_per_s_over_plain": ratio(
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
            "augmentation) + runs x one bare-loop epoch of the student (benchmarks/kd/loops.py); "
            "kdlight_seconds_over_bound includes every run's fixed cost (config, data set-up, models, the "
            "one-batch test), which the bound does not",
        ],
    }
