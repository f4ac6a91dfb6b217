"""Export and measure a :class:`~kdlight.deploy.plan.Plan`'s networks; write the deployment report.

The output folder receives ``student.onnx`` (dynamic batch axis; checked against PyTorch with
onnxruntime), ``student.ts`` (TorchScript, checked the same way), ``teacher.onnx`` when there
is a teacher, and ``deployment.md`` / ``deployment.json``: parameters, MACs per image, ONNX size
and batch-1 CPU latency (PyTorch eager and onnxruntime) of each network and the
student-vs-teacher compression ratios. An export whose logits differ from PyTorch's by more
than the tolerance is still written; the report marks it FAILED (``checks_passed`` False).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kdlight.deploy.convert import (
    DEFAULT_OPSET,
    check_onnx,
    export_onnx,
    export_torchscript,
    require_export_packages,
)
from kdlight.deploy.measure import (
    MACS_NOTE,
    check_forward,
    count_macs,
    count_parameters,
    environment,
    time_onnxruntime,
    time_torch,
)
from kdlight.deploy.plan import Network, Plan
from kdlight.deploy.render import render_markdown
from kdlight.errors import ConfigError
from kdlight.io import atomic_write_json, atomic_write_text, own_folder

log = logging.getLogger(__name__)

TOLERANCE = 1e-4  # max abs difference allowed between exported and PyTorch logits


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
    require_export_packages()
    out = own_folder(plan.out, "export folder")  # a link planted there is refused, not followed
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
