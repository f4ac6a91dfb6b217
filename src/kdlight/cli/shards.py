"""``kdlight-shards convert SRC OUT``: write an image folder as LitData shards (read with ``data.shards=OUT``).

The samples, order and labels are those ``data=image_folder`` (or ``tiny_imagenet``) reads
(:mod:`kdlight.data.shards.convert`). Exit status: 0; 2 with one sentence for a user error.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from kdlight.data.shards.convert import LAYOUTS, convert
from kdlight.errors import user_errors_exit


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="kdlight-shards",
        description="Image folders as LitData shards (read with data.shards=OUT).",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser(
        "convert",
        help="write the image folder SRC (train/<class>/*, val/<class>/*) as shards in OUT",
        description="Write the image folder SRC as shards in OUT (a new or empty folder); "
        "the samples, order and labels are those data=image_folder reads.",
    )
    c.add_argument(
        "src", type=Path, help="train/<class>/* and val/<class>/* (or Tiny-ImageNet's zip layout)"
    )
    c.add_argument("out", type=Path, help="a new or empty folder for the shards")
    c.add_argument("--layout", default="auto", choices=LAYOUTS, help="SRC's layout (default: auto)")
    c.add_argument("--chunk-bytes", default="128MB", help="largest shard file (default: 128MB)")
    c.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser.parse_args(argv)


@user_errors_exit
def main(argv: Sequence[str] | None = None) -> int:
    """``kdlight-shards convert SRC OUT``; exits 2 with one sentence on a user error."""
    args = parse_args(argv)
    m = convert(args.src, args.out, args.layout, args.chunk_bytes, progress=not args.quiet)
    n = {s: len(v["files"]) for s, v in m["splits"].items()}
    print(
        f"wrote {n['train']} train/ and {n['test']} val/ images of {len(m['classes'])} classes "
        f"({m['layout']} layout) to {Path(args.out).expanduser()}; train with "
        f"data.shards={Path(args.out).expanduser()}",
        file=sys.stdout,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
