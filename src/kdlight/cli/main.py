"""``kdlight COMMAND [ARGS]``: one command for every entry point (``kdlight list methods``,
``kdlight train +experiment=NAME``, ``kdlight report DIR`` ...).

Each command is the matching ``kdlight-*`` console script (or ``python -m kdlight.X``) with the
same arguments; ``kdlight`` alone lists them.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

#: command -> (module:function, what it does). Hydra commands read sys.argv themselves.
COMMANDS: dict[str, tuple[str, str]] = {
    "list": ("kdlight.cli.listing:main", "list methods, models, experiments or data sets"),
    "train": ("kdlight.cli.train:cli", "train a teacher or distill a student (Hydra overrides)"),
    "eval": ("kdlight.cli.eval:main", "test a checkpoint or a finished run (Hydra overrides)"),
    "report": ("kdlight.cli.report:main", "a sweep's table, ranking and plots"),
    "analyze": (
        "kdlight.cli.analyze:main",
        "confusion matrix, temperature and test analysis of a run",
    ),
    "export": ("kdlight.cli.export:main", "ONNX / TorchScript export and a deployment table"),
    "shards": ("kdlight.cli.shards:main", "convert an image folder to LitData shards"),
}
HYDRA_COMMANDS = frozenset({"train", "eval"})


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: kdlight COMMAND [ARGS]", "", "commands:"]
    lines += [f"  {name:<{width}}  {text}" for name, (_, text) in COMMANDS.items()]
    lines += ["", "kdlight COMMAND --help shows a command's own arguments."]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(usage())
        return 0
    command, rest = args[0], args[1:]
    if command not in COMMANDS:
        print(
            f"error: kdlight has no command {command!r}; valid: {', '.join(COMMANDS)}.",
            file=sys.stderr,
        )
        return 2
    module, function = COMMANDS[command][0].split(":")
    entry = getattr(importlib.import_module(module), function)
    if command in HYDRA_COMMANDS:  # Hydra parses sys.argv itself
        sys.argv = [f"kdlight {command}", *rest]
        return entry() or 0
    return entry(rest) or 0


if __name__ == "__main__":
    sys.exit(main())
