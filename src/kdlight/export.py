"""Export a trained student for the edge and write a deployment report: ``python -m kdlight.export``.

Two ways to name the network:

- a kdlight run: ``python -m kdlight.export <run_dir | <run>/checkpoints/X.ckpt>``. The student
  (and, for a distillation run, the teacher) is built from the run's ``.hydra/config.yaml``;
  the student's weights come from the validation-best checkpoint (``--which last`` for
  ``last.ckpt``), the teacher's from ``teacher_ckpt`` or the ``teacher/source`` file recorded
  in the run's ``metrics.json``. The input shape follows the data config.
- a model config and a weights file: ``python -m kdlight.export --model resnet20 --weights
  model_best.pth.tar [--num-classes 10] [--teacher-model resnet110 --teacher-weights F]``;
  every format :func:`kdlight.checkpoints.load_weights` reads is accepted.

The output folder (``--out``, default ``<run>/export/``) receives ``student.onnx`` (dynamic
batch axis; checked against PyTorch with onnxruntime), ``student.ts`` (TorchScript, checked
the same way), ``teacher.onnx`` when there is a teacher, and ``deployment.md`` /
``deployment.json``: parameters, MACs per image, ONNX size and batch-1 CPU latency (PyTorch
eager and onnxruntime) of each network and the student-vs-teacher compression ratios.

MACs are counted as FLOPs / 2 with ``torch.utils.flop_counter.FlopCounterMode``, which counts
matrix multiplications and convolutions only (BatchNorm, activations, pooling and additions
are not counted): a ``Linear(784, 800)`` is 784 * 800 = 627,200 MACs per image.

``--random-init`` (with ``--model``) measures untrained networks: size, MACs and latency do not
depend on the weights. TorchScript is deprecated upstream (torch >= 2.9 warns); the ONNX file is
the primary artefact. Exit status: 0; 1 when an export's logits differ from PyTorch's by more
than ``--tolerance`` (files and report are still written, marked FAILED); 2 with one sentence
for a user error (missing checkpoint, unknown model, bad ``--input-shape``, ...).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from kdlight import runs
from kdlight.checkpoints import load_weights
from kdlight.errors import CheckpointError, ConfigError, KdlightError, user_errors_exit
from kdlight.io import atomic_write_json, atomic_write_text
from kdlight.train import CONFIG_DIR

log = logging.getLogger("kdlight.export")  # also under python -m

DEFAULT_OPSET = 18
TOLERANCE = 1e-4  # max abs difference allowed between exported and PyTorch logits
CHECK_BATCH = 8  # rows of the random batch the exports are checked on (not the traced size)
MACS_NOTE = (
    "MACs = FLOPs / 2 as counted by torch.utils.flop_counter.FlopCounterMode at batch 1 "
    "(matrix multiplications and convolutions; BatchNorm, activations, pooling and "
    "additions are not counted)."
)
# Input shape (C, H, W) per dataset, matched against the data config's ``_target_``.
_DATA_SHAPES = (("mnist", (1, 28, 28)), ("cifar", (3, 32, 32)))


class ExportCheckError(RuntimeError):
    """An exported model's outputs differ from PyTorch's by more than the tolerance."""


@dataclass
class Network:
    """A network to export: its role (``student``/``teacher``), a display name and where its weights came from."""

    role: str
    name: str
    net: nn.Module
    source: dict[str, Any] = field(default_factory=dict)


@dataclass
class Plan:
    """Everything :func:`export` needs: the networks, their input shape and the output folder."""

    student: Network
    teacher: Network | None
    input_shape: tuple[int, ...]
    out: Path
    run_dir: Path | None = None
    notes: list[str] = field(default_factory=list)
    accuracy: dict[str, float] = field(default_factory=dict)


# ---- building the networks ----------------------------------------------------------------


def model_names() -> list[str]:
    """The model configs in ``conf/model/`` (the names ``--model`` accepts)."""
    return sorted(p.stem for p in Path(CONFIG_DIR, "model").glob("*.yaml"))


def parse_input_shape(text: str) -> tuple[int, ...]:
    """Parse ``"3,32,32"`` into ``(3, 32, 32)``: positive integers, no batch dimension."""
    try:
        shape = tuple(int(p) for p in str(text).replace(" ", "").split(","))
    except ValueError:
        shape = ()
    if not shape or any(d <= 0 for d in shape):
        raise ConfigError(
            f"--input-shape {text!r} is invalid; give the per-image shape as positive integers "
            "separated by commas, without the batch dimension, e.g. 3,32,32 or 1,28,28."
        )
    return shape


def data_input_shape(data_cfg: DictConfig | dict | None) -> tuple[int, ...] | None:
    """The per-image input shape of a data config (MNIST family (1, 28, 28), CIFAR (3, 32, 32)), or None."""
    target = str((data_cfg or {}).get("_target_", "")).lower()
    for key, shape in _DATA_SHAPES:
        if key in target:
            return shape
    return None


def model_input_shape(model_cfg: DictConfig) -> tuple[int, ...]:
    """A zoo model's natural input: an MLP on 784 features takes MNIST images, conv nets CIFAR ones."""
    if "in_features" in model_cfg:
        n = int(model_cfg.in_features)
        return (1, 28, 28) if n == 784 else (n,)
    return (3, 32, 32)


def display_name(model_cfg: DictConfig | dict) -> str:
    """A short architecture name from a model config, e.g. ``MLP-800-800``, ``ResNet-20``."""
    name = str(model_cfg["_target_"]).rsplit(".", 1)[-1]
    if "depth" in model_cfg:
        name += f"-{model_cfg['depth']}"
    if "hidden" in model_cfg:
        name += "-" + "-".join(str(h) for h in model_cfg["hidden"])
    return name


def compose_model(name: str, num_classes: int) -> DictConfig:
    """Compose ``conf/model/<name>.yaml`` with ``data.num_classes=num_classes``; return the model node."""
    names = model_names()
    if name not in names:
        raise ConfigError(f"unknown model {name!r}; valid names are: {', '.join(names)}.")
    if num_classes < 1:
        raise ConfigError(f"--num-classes {num_classes} is invalid; it must be >= 1.")
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(overrides=[f"+model={name}", f"+data.num_classes={num_classes}"])
    return cfg.model


def build_named(
    role: str, name: str, weights: str | os.PathLike | None, num_classes: int
) -> tuple[Network, DictConfig]:
    """Build zoo model ``name`` and load ``weights`` (any checkpoint format); ``None`` keeps the random initialisation."""
    model_cfg = compose_model(name, num_classes)
    net = instantiate(model_cfg)
    if weights is None:
        source: dict[str, Any] = {"config": name, "weights": "random initialisation"}
    else:
        meta = load_weights(net, weights)
        source = {
            "config": name,
            "weights": str(Path(weights).resolve()),
            "format": meta.get("format"),
        }
        source.update({k: meta[k] for k in ("epoch", "best_acc") if k in meta})
    return Network(role, display_name(model_cfg), net.eval(), source), model_cfg


def find_run(path: str | os.PathLike, which: str = "best") -> tuple[Path | None, Path]:
    """Resolve a run directory, its ``checkpoints/`` folder or a ``.ckpt`` file to (run dir or None, checkpoint).

    See :func:`kdlight.runs.find_run`: the validation-best checkpoint of a folder (``which="last"``:
    ``last.ckpt``), resolved inside the run folder; None for a checkpoint outside a run.
    """
    run, ckpt = runs.find_run(path, which)
    return (run.dir if run is not None else None), ckpt


def plan_from_run(
    run_dir: Path,
    ckpt: Path,
    *,
    out: Path | None = None,
    input_shape: tuple[int, ...] | None = None,
    with_teacher: bool = True,
) -> Plan:
    """Build the student of a kdlight run from its resolved config and ``ckpt``, and its teacher if it had one.

    The run folder is opened by :mod:`kdlight.runs`: only allowed networks are built from its
    config, and every checkpoint is read weights-only.
    """
    run = runs.read_run(run_dir)
    cfg = run.cfg
    shape = input_shape or data_input_shape(cfg.get("data"))
    if shape is None:
        raise ConfigError(
            f"cannot tell the input shape of data {cfg.data.get('_target_')!r}; pass --input-shape, "
            "e.g. --input-shape 3,32,32."
        )
    net = run.build("student")
    meta = load_weights(net, ckpt)
    source = {"weights": str(ckpt.resolve()), "format": meta.get("format")}
    source.update({k: meta[k] for k in ("epoch", "global_step") if k in meta})
    student = Network("student", display_name(cfg.student), net.eval(), source)
    metrics = run.metrics
    plan = Plan(student, None, shape, out or run.dir / "export", run_dir=run.dir)
    best = metrics.get("best_checkpoint")
    if ckpt.name == "last.ckpt" and "test/acc_last" in metrics:
        plan.accuracy["student"] = float(metrics["test/acc_last"])
    elif best and Path(best).name == ckpt.name and "test/acc_best" in metrics:
        plan.accuracy["student"] = float(metrics["test/acc_best"])
    if with_teacher and run.is_distillation:
        plan.teacher = _run_teacher(run, plan.notes)
        if plan.teacher is not None and "teacher/test_acc" in metrics:
            plan.accuracy["teacher"] = float(metrics["teacher/test_acc"])
    return plan


def _run_teacher(run: runs.Run, notes: list[str]) -> Network | None:
    """The run's teacher from ``teacher_ckpt`` or ``metrics.json``'s ``teacher/source``; None (with a note) if absent."""
    candidates = run.teacher_sources()
    for origin, path in candidates:
        if path.is_file():
            net = run.build("teacher")
            meta = load_weights(net, path)
            source = {"weights": str(path.resolve()), "format": meta.get("format"), "from": origin}
            return Network("teacher", display_name(run.cfg.teacher), net.eval(), source)
    what = (
        ", ".join(f"{o} = {p}" for o, p in candidates)
        or "no teacher_ckpt and no teacher/source in metrics.json"
    )
    note = f"teacher not reported: its weights were not found ({what})."
    log.warning(note)
    notes.append(note)
    return None


def _resolve_from_run(path: str, run_dir: Path) -> Path:
    """A relative ``teacher_ckpt`` is relative to the directory the run was launched from."""
    run = runs.Run(dir=Path(run_dir), cfg=OmegaConf.create())
    cwd = OmegaConf.select(
        runs._read_yaml(Path(run_dir) / ".hydra" / "hydra.yaml"), "hydra.runtime.cwd", default=None
    )
    run.cwd = Path(str(cwd)) if cwd else None
    return run.resolve_path(path)


# ---- measuring and exporting --------------------------------------------------------------


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
    with _eval(net), torch.no_grad(), counter:
        net(x)
    return int(counter.get_total_flops()) // 2


@contextlib.contextmanager
def _eval(net: nn.Module) -> Iterator[nn.Module]:
    """``net`` in eval mode inside the block, its previous mode restored after."""
    was = net.training
    try:
        yield net.eval()
    finally:
        net.train(was)


def check_forward(net: nn.Module, input_shape: Sequence[int], name: str) -> None:
    """Raise :class:`ConfigError` if ``net`` cannot take a batch of ``input_shape`` images."""
    try:
        with _eval(net), torch.no_grad():
            net(torch.zeros(2, *input_shape))
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(
            f"the {name} cannot take inputs of shape {tuple(input_shape)} ({first}); pass the "
            "right --input-shape, e.g. 3,32,32 or 1,28,28."
        ) from None


def _random_batch(n: int, input_shape: Sequence[int], seed: int = 0) -> torch.Tensor:
    return torch.randn(n, *input_shape, generator=torch.Generator().manual_seed(seed))


def export_onnx(
    net: nn.Module, path: Path, input_shape: Sequence[int], opset: int = DEFAULT_OPSET
) -> Path:
    """Write ``net`` (eval mode) to ``path`` as ONNX: input ``input`` [batch, *shape], output ``logits``, batch dynamic."""
    import onnx

    path.parent.mkdir(parents=True, exist_ok=True)
    example = (_random_batch(2, input_shape),)  # batch 2: a size-1 example would be specialised
    with _eval(net), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            program = torch.onnx.export(
                net,
                example,
                None,
                input_names=["input"],
                output_names=["logits"],
                dynamic_shapes=({0: torch.export.Dim("batch")},),
                opset_version=opset,
                dynamo=True,
                verbose=False,
            )
            program.save(str(path))
        except Exception as exc:  # noqa: BLE001 - some graphs only the TorchScript-based exporter takes
            log.warning(
                "torch.export-based ONNX export failed (%s); retrying with dynamo=False", exc
            )
            torch.onnx.export(
                net,
                example,
                str(path),
                input_names=["input"],
                output_names=["logits"],
                dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
                opset_version=opset,
                dynamo=False,
            )
    onnx.checker.check_model(str(path))
    return path


def onnx_session(path: Path, threads: int = 1):
    """An onnxruntime CPU inference session on ``path`` using ``threads`` intra-op threads."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def check_onnx(
    net: nn.Module, path: Path, input_shape: Sequence[int], batch: int = CHECK_BATCH
) -> float:
    """Max abs difference between onnxruntime's and PyTorch's (eval) logits on a random batch."""
    x = _random_batch(batch, input_shape, seed=1)
    with _eval(net), torch.inference_mode():
        ref = net(x).numpy()
    got = onnx_session(path).run(["logits"], {"input": x.numpy()})[0]
    return float(np.abs(got - ref).max())


def export_torchscript(
    net: nn.Module, path: Path, input_shape: Sequence[int], batch: int = CHECK_BATCH
) -> float:
    """Trace ``net`` to TorchScript at ``path``; reload it and return the max abs difference to eager on a random batch."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with _eval(net), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.trace's deprecation notice
        traced = torch.jit.trace(net, (_random_batch(2, input_shape),), check_trace=False)
        torch.jit.save(traced, str(path))
        loaded = torch.jit.load(str(path), map_location="cpu")
        x = _random_batch(batch, input_shape, seed=2)
        return float((loaded(x) - net(x)).abs().max())


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
    x = _random_batch(1, input_shape, seed=3)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with _eval(net), torch.inference_mode():
            return latency_ms(lambda: net(x), warmup, runs)
    finally:
        torch.set_num_threads(previous)


def time_onnxruntime(
    path: Path, input_shape: Sequence[int], threads: int = 1, warmup: int = 50, runs: int = 200
) -> dict[str, float]:
    """Batch-1 CPU latency of the ONNX model at ``path`` in onnxruntime (``threads`` intra-op threads)."""
    session = onnx_session(path, threads)
    feed = {"input": _random_batch(1, input_shape, seed=3).numpy()}
    return latency_ms(lambda: session.run(["logits"], feed), warmup, runs)


def profile(
    network: Network,
    out: Path,
    input_shape: Sequence[int],
    *,
    opset: int = DEFAULT_OPSET,
    threads: int = 1,
    warmup: int = 50,
    runs: int = 200,
    torchscript: bool = False,
) -> dict[str, Any]:
    """Export one network to ``out/<role>.onnx`` (and ``.ts``), check the files and measure it."""
    net = network.net.eval()
    check_forward(net, input_shape, f"{network.role} {network.name}")
    log.info(
        "exporting the %s %s and timing it (%d + %d runs per runtime)",
        network.role,
        network.name,
        warmup,
        runs,
    )
    onnx_path = export_onnx(net, out / f"{network.role}.onnx", input_shape, opset)
    entry: dict[str, Any] = {
        "name": network.name,
        "target": f"{type(net).__module__}.{type(net).__qualname__}",
        "source": network.source,
        "parameters": count_parameters(net),
        "macs": count_macs(net, input_shape),
        "onnx_file": onnx_path.name,
        "onnx_bytes": onnx_path.stat().st_size,
        "onnx_max_abs_diff": check_onnx(net, onnx_path, input_shape),
    }
    if torchscript:
        ts_path = out / f"{network.role}.ts"
        entry["torchscript_max_abs_diff"] = export_torchscript(net, ts_path, input_shape)
        entry["torchscript_file"] = ts_path.name
        entry["torchscript_bytes"] = ts_path.stat().st_size
    entry["latency_ms"] = {
        "torch": time_torch(net, input_shape, threads, warmup, runs),
        "onnxruntime": time_onnxruntime(onnx_path, input_shape, threads, warmup, runs),
    }
    return entry


def compression(student: dict[str, Any], teacher: dict[str, Any]) -> dict[str, float]:
    """Teacher / student ratios: parameters, MACs, ONNX bytes, and the latency speed-up per runtime."""
    ratio: dict[str, float] = {
        key: teacher[key] / student[key]
        for key in ("parameters", "macs", "onnx_bytes")
        if student[key]
    }
    for runtime in ("torch", "onnxruntime"):
        s, t = student["latency_ms"][runtime]["median"], teacher["latency_ms"][runtime]["median"]
        if s > 0:
            ratio[f"speedup_{runtime}"] = t / s
    return ratio


def export(
    plan: Plan,
    *,
    opset: int = DEFAULT_OPSET,
    threads: int = 1,
    warmup: int = 50,
    runs: int = 200,
    tolerance: float = TOLERANCE,
    command: str | None = None,
) -> dict[str, Any]:
    """Export and measure ``plan``'s networks; write ``deployment.json`` / ``.md`` into ``plan.out``; return the report.

    The exports are written and the report records the check even when a difference
    exceeds ``tolerance``; ``report["checks_passed"]`` is then False.
    """
    if threads < 1:
        raise ConfigError(f"--threads {threads} is invalid; it must be >= 1.")
    if warmup < 0 or runs < 1:
        raise ConfigError(
            f"--warmup {warmup} / --runs {runs} are invalid; need warmup >= 0 and runs >= 1."
        )
    if opset < 17:
        raise ConfigError(f"--opset {opset} is invalid; kdlight exports with opset 17 or newer.")
    _require_export_packages()
    out = plan.out
    out.mkdir(parents=True, exist_ok=True)
    kw = dict(opset=opset, threads=threads, warmup=warmup, runs=runs)
    models = {"student": profile(plan.student, out, plan.input_shape, torchscript=True, **kw)}
    if plan.teacher is not None:
        models["teacher"] = profile(plan.teacher, out, plan.input_shape, **kw)
    for role, acc in plan.accuracy.items():
        if role in models:
            models[role]["test_acc"] = acc
    diffs = [
        m[k]
        for m in models.values()
        for k in ("onnx_max_abs_diff", "torchscript_max_abs_diff")
        if k in m
    ]
    report: dict[str, Any] = {
        "input_shape": list(plan.input_shape),
        "run_dir": str(plan.run_dir.resolve()) if plan.run_dir else None,
        "command": command,
        "opset": opset,
        "tolerance": tolerance,
        "checks_passed": all(d < tolerance for d in diffs),
        "timing": {"batch": 1, "threads": threads, "warmup": warmup, "runs": runs},
        "macs_note": MACS_NOTE,
        "environment": environment(),
        "models": models,
        "notes": list(plan.notes),
    }
    if "teacher" in models:
        report["compression"] = compression(models["student"], models["teacher"])
    atomic_write_json(out / "deployment.json", report)
    atomic_write_text(out / "deployment.md", render_markdown(report))
    return report


def _require_export_packages() -> None:
    """Raise :class:`KdlightError` naming the optional packages the export needs, if any is missing."""
    import importlib.util

    missing = [
        m for m in ("onnx", "onnxruntime", "onnxscript") if importlib.util.find_spec(m) is None
    ]
    if missing:
        raise KdlightError(
            f"exporting needs the packages {', '.join(missing)}, which are not installed; "
            "install them with pip install 'kdlight[export]'."
        )


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


# ---- presenting -----------------------------------------------------------------------------


def table_rows(report: dict[str, Any], compact: bool = False) -> tuple[list[str], list[list[str]]]:
    """The report's table: a header and one row per network (plus a teacher / student ratio row).

    ``compact`` (the terminal) gives counts in millions and p50 / p90 latency in one column;
    otherwise (``deployment.md``) counts are exact and each statistic has its own column.
    """
    if compact:
        header = [
            "model",
            "network",
            "params",
            "MACs/img",
            "ONNX MB",
            "torch ms p50/p90",
            "ORT ms p50/p90",
        ]
    else:
        header = [
            "model",
            "network",
            "params",
            "MACs/img",
            "ONNX MB",
            "torch p50 ms",
            "torch p90 ms",
            "ORT p50 ms",
            "ORT p90 ms",
            "ONNX max abs diff",
        ]
    has_acc = any("test_acc" in m for m in report["models"].values())
    if has_acc:
        header.insert(2, "test acc")
    count = (lambda n: f"{n / 1e6:.3f} M") if compact else (lambda n: f"{n:,}")
    rows = []
    for role, m in report["models"].items():
        lt, lo = m["latency_ms"]["torch"], m["latency_ms"]["onnxruntime"]
        row = [
            role,
            m["name"],
            count(m["parameters"]),
            count(m["macs"]),
            f"{m['onnx_bytes'] / 1e6:.2f}",
        ]
        if compact:
            row += [
                f"{lt['median']:.3f} / {lt['p90']:.3f}",
                f"{lo['median']:.3f} / {lo['p90']:.3f}",
            ]
        else:
            row += [
                f"{lt['median']:.3f}",
                f"{lt['p90']:.3f}",
                f"{lo['median']:.3f}",
                f"{lo['p90']:.3f}",
                f"{m['onnx_max_abs_diff']:.1e}",
            ]
        if has_acc:
            row.insert(2, f"{m['test_acc']:.4f}" if "test_acc" in m else "-")
        rows.append(row)
    c = report.get("compression")
    if c:
        row = [
            "ratio",
            "teacher / student",
            f"{c['parameters']:.2f}x",
            f"{c['macs']:.2f}x",
            f"{c['onnx_bytes']:.2f}x",
            f"{c['speedup_torch']:.2f}x",
            f"{c['speedup_onnxruntime']:.2f}x",
        ]
        if not compact:
            row[6:6] = [""]
            row += ["", ""]
        if has_acc:
            row.insert(2, "")
        rows.append(row)
    return header, rows


def render_markdown(report: dict[str, Any]) -> str:
    """``deployment.md``: the table, how it was measured, and how to run the exported files."""
    header, rows = table_rows(report)
    t = report["timing"]
    env = report["environment"]
    student = report["models"]["student"]
    lines = ["# Deployment report", ""]
    if report.get("run_dir"):
        lines += [f"Run: `{report['run_dir']}`", ""]
    lines += [
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" if i < 2 else "---:" for i in range(len(header))) + "|",
        *("| " + " | ".join(r) + " |" for r in rows),
        "",
        f"- Input: batch x {' x '.join(map(str, report['input_shape']))} (float32, normalised as in training); "
        "output `logits` [batch, classes]. ONNX opset "
        f"{report['opset']}, dynamic batch axis.",
        f"- {report['macs_note']}",
        f"- Latency: batch 1 on CPU, {t['threads']} thread(s), median and 90th percentile of "
        f"{t['runs']} timed runs after {t['warmup']} warm-up runs; PyTorch eager under "
        "`torch.inference_mode`, onnxruntime `CPUExecutionProvider`. "
        f"{env['cpu']} ({env['cpu_count']} logical CPUs), torch {env['torch']}, "
        f"onnxruntime {env['onnxruntime']}.",
        "- ONNX size: the file on disk (MB = 10^6 bytes). Ratio row: teacher / student "
        "(for latency, the speed-up of the student).",
        f"- Checks (max abs difference to PyTorch eval-mode logits on a random batch of "
        f"{CHECK_BATCH}, tolerance {report['tolerance']:g}): "
        + ", ".join(
            f"{role} ONNX {m['onnx_max_abs_diff']:.1e}"
            + (
                f", {role} TorchScript {m['torchscript_max_abs_diff']:.1e}"
                if "torchscript_max_abs_diff" in m
                else ""
            )
            for role, m in report["models"].items()
        )
        + (" - passed." if report["checks_passed"] else " - FAILED."),
    ]
    for role, m in report["models"].items():
        src = m["source"]
        lines.append(
            f"- {role} weights: {src.get('weights')}"
            + (f" ({src['format']})" if src.get("format") else "")
        )
    lines += [f"- Note: {n}" for n in report.get("notes", [])]
    if report.get("command"):
        lines += ["", "Produced by:", "", "```", report["command"], "```"]
    lines += [
        "",
        "## Using the files",
        "",
        "```python",
        "import numpy as np, onnxruntime as ort, torch",
        f"session = ort.InferenceSession('{student['onnx_file']}', providers=['CPUExecutionProvider'])",
        f"x = np.random.randn(4, {', '.join(map(str, report['input_shape']))}).astype(np.float32)",
        "logits = session.run(['logits'], {'input': x})[0]",
        f"ts = torch.jit.load('{student.get('torchscript_file', 'student.ts')}')  # TorchScript, same logits",
        "```",
        "",
    ]
    return "\n".join(lines)


def print_table(report: dict[str, Any]) -> None:
    """Print the report's table to the terminal with ``rich``."""
    from rich import box
    from rich.console import Console
    from rich.table import Table

    header, rows = table_rows(report, compact=True)
    title = f"deployment: CPU latency at batch 1, {report['timing']['threads']} thread(s); MACs = FLOPs / 2"
    table = Table(title=title, box=box.SIMPLE_HEAD, pad_edge=False)
    for i, h in enumerate(header):
        table.add_column(h, justify="left" if i < 2 else "right", no_wrap=i < 2)
    for r in rows:
        table.add_row(*r)
    console = Console()
    if not console.is_terminal:  # logs and pipes: don't wrap to rich's 80-column default
        console = Console(width=120)
    console.print(table)


# ---- command line ---------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m kdlight.export",
        description="Export a student to ONNX and TorchScript and write a deployment report "
        "(parameters, MACs, ONNX size, CPU latency; teacher vs student).",
    )
    p.add_argument(
        "source",
        nargs="?",
        help="a kdlight run directory or a .ckpt file in its checkpoints/ "
        "(with --model: the weights file)",
    )
    p.add_argument(
        "--which",
        choices=("best", "last"),
        default="best",
        help="checkpoint of a run directory (default: best)",
    )
    p.add_argument("--model", help="a config name in conf/model/ (instead of a run)")
    p.add_argument("--weights", help="weights for --model (any format kdlight reads)")
    p.add_argument(
        "--random-init",
        action="store_true",
        help="with --model and no --weights: keep random weights (size/speed only)",
    )
    p.add_argument("--teacher-model", help="with --model: a teacher config name to compare against")
    p.add_argument("--teacher-weights", help="weights for --teacher-model")
    p.add_argument("--no-teacher", action="store_true", help="skip the run's teacher")
    p.add_argument(
        "--num-classes", type=int, default=10, help="with --model: number of classes (default 10)"
    )
    p.add_argument(
        "--input-shape", help="per-image input shape, e.g. 3,32,32 (default: from the data config)"
    )
    p.add_argument(
        "--out", help="output folder (default: <run>/export, or export/ beside the weights)"
    )
    p.add_argument(
        "--opset",
        type=int,
        default=DEFAULT_OPSET,
        help=f"ONNX opset, >= 17 (default {DEFAULT_OPSET})",
    )
    p.add_argument(
        "--threads", type=int, default=1, help="CPU threads for the latency runs (default 1)"
    )
    p.add_argument("--warmup", type=int, default=50, help="untimed warm-up runs (default 50)")
    p.add_argument("--runs", type=int, default=200, help="timed runs (default 200)")
    p.add_argument(
        "--tolerance",
        type=float,
        default=TOLERANCE,
        help=f"max abs logit difference allowed (default {TOLERANCE:g})",
    )
    return p.parse_args(argv)


def plan_from_args(args: argparse.Namespace) -> Plan:
    """Turn the command line into a :class:`Plan`, raising :class:`KdlightError` on bad input."""
    shape = parse_input_shape(args.input_shape) if args.input_shape else None
    if args.model is None:
        if args.teacher_model or args.teacher_weights:
            raise ConfigError(
                "--teacher-model/--teacher-weights need --model; a run's teacher comes from its config."
            )
        if args.source is None:
            raise ConfigError(
                "nothing to export; name a run directory or checkpoint, or pass --model NAME --weights FILE."
            )
        run_dir, ckpt = find_run(args.source, args.which)
        if run_dir is None:
            raise ConfigError(
                f"{args.source} is not inside a kdlight run (no .hydra/config.yaml found next to "
                "it); pass --model NAME to say which architecture the weights are for."
            )
        out = Path(args.out) if args.out else None
        return plan_from_run(
            run_dir, ckpt, out=out, input_shape=shape, with_teacher=not args.no_teacher
        )
    weights = args.weights or args.source
    if weights is None and not args.random_init:
        raise ConfigError(
            f"--model {args.model} needs --weights FILE (or --random-init to measure random weights)."
        )
    if weights is not None and not Path(weights).is_file():
        raise CheckpointError(f"checkpoint {weights} does not exist.")
    student, student_cfg = build_named("student", args.model, weights, args.num_classes)
    shape = shape or model_input_shape(student_cfg)
    teacher = None
    if args.teacher_model:
        tw = args.teacher_weights
        if tw is None and not args.random_init:
            raise ConfigError(
                f"--teacher-model {args.teacher_model} needs --teacher-weights FILE (or --random-init)."
            )
        teacher, _ = build_named("teacher", args.teacher_model, tw, args.num_classes)
    out = (
        Path(args.out)
        if args.out
        else (Path(weights).resolve().parent / "export" if weights else Path("export"))
    )
    notes = (
        []
        if weights
        else ["randomly initialised weights: sizes, MACs and latency only, no accuracy."]
    )
    return Plan(student, teacher, shape, out, notes=notes)


@user_errors_exit
def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns 0, or 1 when an exported model's outputs fail the check."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("kdlight").setLevel(logging.INFO)
    args = parse_args(argv)
    plan = plan_from_args(args)
    command = "python -m kdlight.export " + " ".join(sys.argv[1:] if argv is None else argv)
    report = export(
        plan,
        opset=args.opset,
        threads=args.threads,
        warmup=args.warmup,
        runs=args.runs,
        tolerance=args.tolerance,
        command=command,
    )
    print_table(report)
    print(
        f"wrote {plan.out}/: "
        + ", ".join(sorted(p.name for p in plan.out.iterdir() if p.is_file()))
    )
    if not report["checks_passed"]:
        print(
            f"error: an exported model differs from PyTorch by more than {args.tolerance:g}; "
            f"see {plan.out / 'deployment.md'}.",
            file=sys.stderr,
        )
        return 1
    return 0


__all__ = [
    "KdlightError",
    "Network",
    "Plan",
    "count_macs",
    "export",
    "main",
    "model_names",
    "parse_input_shape",
]

if __name__ == "__main__":
    sys.exit(main())
