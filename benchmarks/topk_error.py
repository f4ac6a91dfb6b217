"""Top-k teacher store vs the exact store: bytes per view, soft-target and KD-loss error (JSON).

For each K the teacher's logits of one view (no augmentation) go through a real
:class:`kdlight.teacher.store.TeacherLogitStore` with ``top_k=K`` (float16 values, as the default
store) and are served back rebuilt (:func:`kdlight.teacher.topk.topk_expand`); they are compared with
the exact float16 store's logits (what runs read by default):

- ``bytes_per_view``: the view's ``.npy`` files (data + npy headers; the small JSON metas not
  counted), ``vs_exact_float16``: that over the exact float16 store's;
- ``soft_targets``: at each T, total variation 0.5 * sum_c |p_k - p_exact| per sample (mean,
  max) and the largest absolute probability error of any class;
- ``kd_loss``: T^2 KL(p_teacher || p_student) (kdlight's ``soft_kl``, batchmean) against a
  synthetic student whose logits are the teacher's (float32) plus Gaussian noise of standard
  deviation ``--noise-std`` x the std of the teacher's logits (seeded); relative error of the
  mean over the set, and the largest per-sample error relative to that mean.

K >= the number of classes stores the exact logits (the same files as the exact store), so
its errors are 0 by construction. Usage (CIFAR-10 test set, the stored ResNet-20 teacher):

    python benchmarks/topk_error.py --teacher store/teachers/997eae5b79f1afa9/teacher.pt \
        --archive ../shared/data/cifar10-jpeg.tar.gz --split test
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

from kdlight.checkpoints import load_weights
from kdlight.data.datasets.cifar10 import CIFAR10DataModule
from kdlight.methods.kd import soft_kl
from kdlight.models.resnet import ResNet
from kdlight.teacher.store import TeacherLogitStore


def _args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--teacher", default="store/teachers/997eae5b79f1afa9/teacher.pt")
    p.add_argument("--depth", type=int, default=20, help="ResNet depth of the teacher (6n+2)")
    p.add_argument("--archive", default="../shared/data/cifar10-jpeg.tar.gz")
    p.add_argument("--data-dir", default="data")
    p.add_argument("--split", choices=("train", "test"), default="test")
    p.add_argument("--ks", default="1,2,3,5,10,20,50")
    p.add_argument("--temperatures", default="4,20")
    p.add_argument("--noise-std", type=float, default=1.0)
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


@torch.inference_mode()
def teacher_logits(o: argparse.Namespace) -> tuple[torch.Tensor, dict]:
    """(N, C) float32 logits of the teacher on one view of ``o.split`` (no augmentation)."""
    dm = CIFAR10DataModule(
        archive=o.archive, data_dir=o.data_dir, download=False, augment=False, val_size=5000
    )
    dm.setup("fit")
    n = dm.arrays.test_y.numel() if o.split == "test" else dm.train_idx.numel()
    rows = torch.arange(n) if o.split == "test" else dm.train_idx
    net = ResNet(depth=o.depth, num_classes=dm.num_classes)
    load_weights(net, o.teacher)
    net.eval()
    t0 = time.perf_counter()
    out = [
        net(dm.view_batch(rows[a : a + o.batch_size], None, split=o.split)).float()
        for a in range(0, n, o.batch_size)
    ]
    labels = dm.arrays.test_y if o.split == "test" else dm.arrays.train_y[rows]
    logits = torch.cat(out)
    info = {
        "samples": int(n),
        "classes": int(dm.num_classes),
        "teacher_accuracy": float((logits.argmax(1) == labels).float().mean()),
        "teacher_pass_s": round(time.perf_counter() - t0, 1),
    }
    return logits, info


def stored(logits: torch.Tensor, root: Path, k: int | None) -> tuple[torch.Tensor, int]:
    """The view served back by a float16 store with ``top_k=k``, and its data files' bytes."""
    store = TeacherLogitStore(root, {"bench": "topk_error"}, len(logits), logits.shape[1], top_k=k)
    served = store.get(0, lambda idx: logits[idx], progress=False).float().clone()
    size = sum(p.stat().st_size for p in store.path.glob("view_0*.npy"))
    return served, size


def errors(served: torch.Tensor, exact: torch.Tensor, student: torch.Tensor, ts) -> dict:
    out: dict = {"soft_targets": {}, "kd_loss": {}}
    for t in ts:
        p, q = torch.softmax(served / t, 1), torch.softmax(exact / t, 1)
        tv = 0.5 * (p - q).abs().sum(1)
        out["soft_targets"][f"T={t:g}"] = {
            "tv_mean": float(tv.mean()),
            "tv_max": float(tv.max()),
            "max_abs_prob_err": float((p - q).abs().max()),
        }
        per_k = _kd_per_sample(student, served, t)
        per_x = _kd_per_sample(student, exact, t)
        mean_x = float(per_x.mean())
        out["kd_loss"][f"T={t:g}"] = {
            "exact": mean_x,
            "rel_err_of_mean": abs(float(per_k.mean()) - mean_x) / mean_x,
            "max_per_sample_err_rel_to_mean": float((per_k - per_x).abs().max()) / mean_x,
            "kdlight_soft_kl_rel_diff": abs(float(soft_kl(student, exact, t)) - mean_x) / mean_x,
        }
    return out


def _kd_per_sample(student: torch.Tensor, teacher: torch.Tensor, t: float) -> torch.Tensor:
    """T^2 KL(softmax(z_t / T) || softmax(z_s / T)) per sample (float64)."""
    log_p = torch.log_softmax(teacher.double() / t, 1)
    log_q = torch.log_softmax(student.double() / t, 1)
    return t * t * (log_p.exp() * (log_p - log_q)).sum(1)


def main(argv: list[str] | None = None) -> dict:
    o = _args(argv)
    ks = [int(k) for k in o.ks.split(",")]
    ts = [float(t) for t in o.temperatures.split(",")]
    logits, info = teacher_logits(o)
    gen = torch.Generator().manual_seed(o.seed)
    student = logits + o.noise_std * logits.std() * torch.randn(logits.shape, generator=gen)
    result: dict = {
        "benchmark": "topk_error",
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": {
            "platform": platform.platform(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        },
        "data": {"dataset": "cifar10", "split": o.split, "view": "no augmentation", **info},
        "student": {
            "logits": f"teacher float32 logits + N(0, ({o.noise_std:g} x std of the teacher's logits)^2), seed {o.seed}",
            "top1_agreement_with_teacher": float(
                (student.argmax(1) == logits.argmax(1)).float().mean()
            ),
        },
        "reference": "exact store, float16",
        "rows": [],
        "classes_100": None,
        "classes_100_note": (
            "no trained 100-class teacher or CIFAR-100 data is reachable on this machine, so no "
            "100-class logits were measured"
        ),
    }
    with tempfile.TemporaryDirectory() as tmp:
        exact, exact_bytes = stored(logits, Path(tmp) / "exact", None)
        f32 = TeacherLogitStore(
            Path(tmp) / "f32", {"bench": "f32"}, len(logits), logits.shape[1], dtype="float32"
        )
        f32.get(0, lambda idx: logits[idx], progress=False)
        f32_bytes = sum(p.stat().st_size for p in f32.path.glob("view_0*.npy"))
        result["exact_float16_bytes_per_view"] = exact_bytes
        result["exact_float32_bytes_per_view"] = f32_bytes
        result["exact_float16_vs_float32"] = errors(exact, logits, student, ts)
        for k in ks:
            served, size = stored(logits, Path(tmp) / f"k{k}", k)
            row = {
                "k": k,
                "exact_by_construction": k >= logits.shape[1],
                "bytes_per_view": size,
                "vs_exact_float16": round(size / exact_bytes, 4),
                **errors(served, exact, student, ts),
            }
            result["rows"].append(row)
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
