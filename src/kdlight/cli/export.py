"""``kdlight-export``: export a student for the edge and write a deployment report.

``kdlight-export <run_dir | <run>/checkpoints/X.ckpt> [--which last]`` exports a kdlight run;
``kdlight-export --model resnet20 --weights model_best.pth.tar [--num-classes 10]
[--teacher-model resnet110 --teacher-weights F]`` a zoo model with weights in any format
kdlight reads (:mod:`kdlight.deploy.plan`). ``--random-init`` (with ``--model``) measures
untrained networks: size, MACs and latency do not depend on the weights. What is written:
:mod:`kdlight.deploy.export`. Exit status: 0; 1 when an export's logits differ from PyTorch's
by more than ``--tolerance`` (files and report are still written, marked FAILED); 2 with one
sentence for a user error (missing checkpoint, unknown model, bad ``--input-shape``, ...).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from kdlight.deploy.convert import DEFAULT_OPSET
from kdlight.deploy.export import TOLERANCE, export
from kdlight.deploy.plan import plan_from_args
from kdlight.deploy.render import print_table
from kdlight.errors import user_errors_exit


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


if __name__ == "__main__":
    sys.exit(main())
