"""``kdlight-analyze CKPT [--out DIR] [--data-dir DIR]``: the test analysis of a run's checkpoint.

What it writes: :mod:`kdlight.analysis.write`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from kdlight.analysis.metrics import N_BINS, TEMPERATURES
from kdlight.analysis.write import analyze
from kdlight.errors import KdlightError, user_errors_exit


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m kdlight.analyze",
        description="Confusion matrix, per-class accuracy, calibration, teacher agreement and the "
        "temperature study of a run's checkpoint on its test set.",
    )
    parser.add_argument(
        "checkpoint",
        type=Path,
        help="<run>/checkpoints/*.ckpt, or a run folder (its val-best checkpoint)",
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="output folder (default: <run>/analysis)"
    )
    parser.add_argument(
        "--data-dir",
        "--data",
        dest="data_dir",
        default=None,
        help="replace the run's data.data_dir",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a value of the run's config, e.g. --set data.eval_batch_size=256 (repeatable)",
    )
    parser.add_argument("--device", default="cpu", help="torch device for inference (default: cpu)")
    parser.add_argument(
        "--top-k", type=int, default=5, help="most-confused class pairs to list (default: 5)"
    )
    parser.add_argument(
        "--bins", type=int, default=N_BINS, help=f"calibration bins (default: {N_BINS})"
    )
    parser.add_argument(
        "--temperatures",
        type=float,
        nargs="+",
        default=list(TEMPERATURES),
        help="temperatures of the softened distributions (default: 1 2 5 10 20)",
    )
    parser.add_argument(
        "--examples", type=int, default=3, help="example distributions to draw (default: 3)"
    )
    parser.add_argument(
        "--no-teacher", action="store_true", help="skip the teacher even if the run had one"
    )
    return parser.parse_args(argv)


@user_errors_exit
def main(argv: Sequence[str] | None = None) -> int:
    """``python -m kdlight.analyze CKPT [...]``; returns 0, exits 2 with one sentence on a user error."""
    args = parse_args(argv)
    if (
        args.top_k < 0
        or args.bins < 1
        or args.examples < 0
        or any(t <= 0 for t in args.temperatures)
    ):
        raise KdlightError(
            "--top-k and --examples must be >= 0, --bins >= 1 and every temperature > 0."
        )
    summary = analyze(
        args.checkpoint,
        args.out,
        data_dir=args.data_dir,
        overrides=args.overrides,
        device=args.device,
        top_k=args.top_k,
        n_bins=args.bins,
        temperatures=args.temperatures,
        n_examples=args.examples,
        with_teacher=not args.no_teacher,
    )
    line = f"test acc {100 * summary['test/acc']:.2f}%, ECE {100 * summary['test/ece']:.2f}%"
    if "test/agreement" in summary:
        line += f", teacher agreement {100 * summary['test/agreement']:.2f}%"
    print(f"{line} -> {Path(summary['out']) / 'analysis.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
