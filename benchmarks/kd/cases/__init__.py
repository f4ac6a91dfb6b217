"""The named cases: each a function ``(Options, work folder) -> the case's JSON``."""

from __future__ import annotations

import functools

from kd.cases.cifar import case_cifar
from kd.cases.fixed_cost import case_fixed_cost
from kd.cases.fmnist_mlp import case_fmnist_mlp
from kd.cases.sweep10 import SWEEP_GRID, case_sweep

CASES = ("fmnist_mlp", "cifar_resnet18_cnn", "sweep10", "fixed_cost")
#: cases run only when --cases names them (benchmarks/gpu.sh): a 34M-parameter teacher is slow on a CPU
GPU_CASES = ("cifar_resnext29_resnet18",)

CASE_FUNCS = {
    "fmnist_mlp": case_fmnist_mlp,
    "cifar_resnet18_cnn": case_cifar,
    "sweep10": case_sweep,
    "fixed_cost": case_fixed_cost,
    "cifar_resnext29_resnet18": functools.partial(case_cifar, name="cifar_resnext29_resnet18"),
}

__all__ = ["CASES", "CASE_FUNCS", "GPU_CASES", "SWEEP_GRID"]
