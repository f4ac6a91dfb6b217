"""``kdlight list methods|models|experiments|data``: what a config group offers, one line each.

Each choice's description is the first comment line of its YAML file (the line every config in
``conf/`` opens with), so listing imports nothing but the standard library and reads only the
package's own files. ``--markdown`` prints a Markdown table (the README's method list is made
with it).
"""

from __future__ import annotations

import argparse
import re
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from kdlight.config import CONFIG_DIR

#: what the user types -> the config group (folder under conf/) it lists, and its override
KINDS: dict[str, tuple[str, str]] = {
    "methods": ("distill", "distill={name}"),
    "models": ("model", "model@student={name}"),
    "experiments": ("experiment", "+experiment={name}"),
    "data": ("data", "data={name}"),
}


def describe(path: Path) -> str:
    """The first sentence of a config file's opening comment (Hydra directives skipped)."""
    block: list[str] = []
    with path.open(encoding="utf-8", errors="replace") as fh:
        for line in fh:
            text = line.strip()
            if not text.startswith("#"):
                if block or text:
                    break
                continue
            text = text.lstrip("#").strip()
            if text and not text.startswith("@package"):
                block.append(text)
    if block and block[0].endswith(":"):  # a title line, then a formula
        return first_sentence(block[0][:-1])
    return first_sentence(" ".join(block))


def first_sentence(text: str) -> str:
    """``text`` up to its first ``". "`` (not the one of "et al."), or a ``": "`` that ends a
    clause of 30 characters or more (a short title such as "CIFAR-100 KD: a -> b" stays whole)."""
    match = re.search(r"(?<! al)\.(\s|$)|(?<=.{30}):\s", text)
    return text[: match.start()].strip() if match else text.strip()


def choices(kind: str, conf_dir: str | Path = CONFIG_DIR) -> list[tuple[str, str]]:
    """``(name, description)`` of every choice of ``kind`` (a key of :data:`KINDS`), sorted by name."""
    group = Path(conf_dir) / KINDS[kind][0]
    return [(p.stem, describe(p)) for p in sorted(group.glob("*.yaml"))]


def markdown_table(kind: str, rows: Sequence[tuple[str, str]]) -> str:
    """A Markdown table of ``rows``: the override that picks each choice, and its description."""
    override = KINDS[kind][1]
    lines = ["| choice | description |", "|---|---|"]
    for name, text in rows:
        lines.append(f"| `{override.format(name=name)}` | {text.replace('|', '/')} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="kdlight list", description="List the choices of a config group, one line each."
    )
    parser.add_argument("kind", choices=sorted(KINDS), help="what to list")
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # `kdlight list ... | head` ends quietly
    rows = choices(args.kind)
    if args.markdown:
        print(markdown_table(args.kind, rows))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(box=None, show_header=False, pad_edge=False)
    table.add_column(style="bold cyan", no_wrap=True)
    table.add_column()
    for name, text in rows:
        table.add_row(name, text)
    console = Console()
    console.print(table)
    console.print(
        f"{len(rows)} {args.kind}; pick one with {KINDS[args.kind][1].format(name='NAME')}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
