"""``kdlight-report DIR [--out OUT] [--axes Y,X]``: a folder of runs as a table and plots.

What it writes: :mod:`kdlight.reporting.report`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from kdlight.errors import KdlightError, user_errors_exit
from kdlight.reporting.collect import FAILED, FINISHED
from kdlight.reporting.report import build_report


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="kdlight-report",
        description="Summarise the runs under DIR (e.g. a multirun folder) into report.md, results.csv and plots.",
    )
    parser.add_argument(
        "dir", type=Path, help="a run, multirun or log folder; searched recursively"
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="where to write the report (default: DIR)"
    )
    parser.add_argument(
        "--axes",
        default=None,
        help="the swept hparams to plot, Y,X (e.g. alpha,beta); default: the method's swept ones",
    )
    parser.add_argument(
        "--versus",
        action="append",
        default=[],
        metavar="KEY=VALUE[,KEY=VALUE]",
        help="add a delta column against the one configuration matching these hparams "
        "(e.g. method=kd); repeatable. The student alone (method=none) gets one by itself",
    )
    return parser.parse_args(argv)


@user_errors_exit
def main(argv: Sequence[str] | None = None) -> int:
    """``kdlight-report DIR [--out OUT]``; returns 0, exits 2 with one sentence on a user error."""
    args = parse_args(argv)
    if args.out is not None and Path(args.out).exists() and not Path(args.out).is_dir():
        raise KdlightError(
            f"--out {args.out} is a file, not a folder; name a folder for report.md, results.csv "
            "and the figures."
        )
    axes = [a.strip() for a in args.axes.split(",") if a.strip()] if args.axes else None
    report = build_report(args.dir, args.out, axes, args.versus)
    statuses = {s: len(report.by_status(s)) for s in (FINISHED, FAILED)}
    print(
        f"{len(report.runs)} runs ({statuses[FINISHED]} finished, {statuses[FAILED]} failed), "
        f"{len(report.rows)} configurations -> {report.out / 'report.md'}, {report.out / 'results.csv'}"
        + (f", {len(report.figures)} figures" if report.figures else "")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
