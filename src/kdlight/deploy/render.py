"""Presenting a deployment report: its table, ``deployment.md`` and the terminal summary."""

from __future__ import annotations

from typing import Any

from kdlight.deploy.convert import CHECK_BATCH


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
