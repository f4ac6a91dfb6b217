"""Measuring a network for deployment: parameters, MACs, batch-1 CPU latency, the environment.

MACs are counted as FLOPs / 2 with ``torch.utils.flop_counter.FlopCounterMode``, which counts
matrix multiplications and convolutions only (BatchNorm, activations, pooling and additions
are not counted): a ``Linear(784, 800)`` is 784 * 800 = 627,200 MACs per image.
"""

from __future__ import annotations

import contextlib
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from kdlight.errors import ConfigError

MACS_NOTE = (
    "MACs = FLOPs / 2 as counted by torch.utils.flop_counter.FlopCounterMode at batch 1 "
    "(matrix multiplications and convolutions; BatchNorm, activations, pooling and "
    "additions are not counted)."
)


def count_parameters(net: nn.Module) -> int:
    """Number of parameters (trainable or not; buffers such as BatchNorm statistics excluded)."""
    return sum(p.numel() for p in net.parameters())


def count_macs(net: nn.Module, input_shape: Sequence[int]) -> int:
    """Multiply-accumulates for one image: FLOPs / 2 from ``FlopCounterMode`` (matmul + conv only)."""
    from torch.utils.flop_counter import FlopCounterMode

    # On the network's device: a network built on the "meta" device is counted without compute.
    device = next((p.device for p in net.parameters()), torch.device("cpu"))
    x = torch.zeros(1, *input_shape, device=device)
    counter = FlopCounterMode(display=False)
    with eval_mode(net), torch.no_grad(), counter:
        net(x)
    return int(counter.get_total_flops()) // 2


@contextlib.contextmanager
def eval_mode(net: nn.Module) -> Iterator[nn.Module]:
    """``net`` in eval mode inside the block, its previous mode restored after."""
    was = net.training
    try:
        yield net.eval()
    finally:
        net.train(was)


def check_forward(net: nn.Module, input_shape: Sequence[int], name: str) -> None:
    """Raise :class:`ConfigError` if ``net`` cannot take a batch of ``input_shape`` images."""
    try:
        with eval_mode(net), torch.no_grad():
            net(torch.zeros(2, *input_shape))
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(
            f"the {name} cannot take inputs of shape {tuple(input_shape)} ({first}); pass the "
            "right --input-shape, e.g. 3,32,32 or 1,28,28."
        ) from None


def random_batch(n: int, input_shape: Sequence[int], seed: int = 0) -> torch.Tensor:
    """``n`` standard-normal inputs of ``input_shape``, the same for the same ``seed``."""
    return torch.randn(n, *input_shape, generator=torch.Generator().manual_seed(seed))


def onnx_session(path: Path, threads: int = 1):
    """An onnxruntime CPU inference session on ``path`` using ``threads`` intra-op threads."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def latency_ms(fn: Callable[[], object], warmup: int = 50, runs: int = 200) -> dict[str, float]:
    """Median and 90th percentile of ``runs`` timed calls of ``fn`` after ``warmup`` untimed ones, in ms."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(max(1, runs)):
        start = time.perf_counter_ns()
        fn()
        times.append((time.perf_counter_ns() - start) / 1e6)
    return {
        "median": statistics.median(times),
        "p90": float(np.percentile(times, 90)),
        "runs": len(times),
    }


def time_torch(
    net: nn.Module, input_shape: Sequence[int], threads: int = 1, warmup: int = 50, runs: int = 200
) -> dict[str, float]:
    """Batch-1 CPU latency of ``net`` in PyTorch eager (``inference_mode``, ``threads`` threads)."""
    x = random_batch(1, input_shape, seed=3)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with eval_mode(net), torch.inference_mode():
            return latency_ms(lambda: net(x), warmup, runs)
    finally:
        torch.set_num_threads(previous)


def time_onnxruntime(
    path: Path, input_shape: Sequence[int], threads: int = 1, warmup: int = 50, runs: int = 200
) -> dict[str, float]:
    """Batch-1 CPU latency of the ONNX model at ``path`` in onnxruntime (``threads`` intra-op threads)."""
    session = onnx_session(path, threads)
    feed = {"input": random_batch(1, input_shape, seed=3).numpy()}
    return latency_ms(lambda: session.run(["logits"], feed), warmup, runs)


def environment() -> dict[str, Any]:
    """Versions and CPU the numbers were measured with."""
    import onnxruntime

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
    }
