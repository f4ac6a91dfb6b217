"""Helpers shared by the make_reference_values*.py scripts of this folder.

Each script reads the authors' files from a clone at a pinned commit (``git_show``), patches
their text as its docstring documents and executes them in a fresh namespace
(``load_source``), runs them on the inputs that a test module builds (``load_tests``) and
records values and gradients (``leaf``, ``grad_record``, ``rel_errs``). What differs between
the scripts (the lines dropped, the replacements, the namespace, the file name shown in a
traceback, the floor of a denominator) is an argument here, so that every script keeps the
exact values that the tests pin.
"""

from __future__ import annotations

import importlib.util
import math
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path
from types import ModuleType

import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parents[2]
PRELUDE = {"torch": torch, "nn": nn, "F": F, "math": math}
"""Names the authors' files import, for the namespace of a file whose imports are dropped."""
NO_CUDA = (".cuda()", "")
"""The replacement that runs the authors' code on a CPU."""


def load_tests(filename: str, name: str) -> ModuleType:
    """Import ``tests/unit/<filename>`` (by path, as module ``name``) for its inputs.

    The repository root goes first on ``sys.path``, for the test module's own ``tests.*``
    imports.
    """
    sys.path.insert(0, str(ROOT))
    spec = importlib.util.spec_from_file_location(name, ROOT / "tests" / "unit" / filename)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def git_show(clone: Path, commit: str, path: str) -> str:
    """The text of ``path`` at ``commit``, whatever is checked out.

    ``clone`` is a work tree (its ``.git`` is read) or a bare git directory (a mirror).
    """
    git_dir = clone / ".git" if (clone / ".git").exists() else clone
    return subprocess.run(
        ["git", "--git-dir", str(git_dir), "show", f"{commit}:{path}"],
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip


def load_source(
    clone: Path,
    commit: str,
    path: str,
    namespace: dict,
    *,
    filename: str,
    drop: tuple[str, ...] = (),
    drop_continued: bool = False,
    replace: Iterable[tuple[str, str]] = (),
    strict: bool = False,
) -> dict:
    """Execute ``path`` at ``commit`` in ``namespace`` (returned), after a textual patch.

    ``drop``: the lines that start with one of these prefixes (leading blanks ignored) are
    removed, and with ``drop_continued`` also the lines that continue one of them (a dropped
    line ending in a backslash drops the next one); the kept lines are joined with ``\\n``.
    Without ``drop`` the text is left as read. ``namespace`` supplies what the dropped lines
    imported (``PRELUDE`` and the package's own names).

    ``replace``: ``(old, new)`` pairs applied in order to the whole text (after ``drop``; none
    spans two lines); ``strict`` asserts that each ``old`` occurs. ``filename`` names the
    code in a traceback.
    """
    text = git_show(clone, commit, path)
    if drop:
        kept, dropping = [], False
        for line in text.splitlines():
            stripped = line.strip()
            if dropping or stripped.startswith(drop):
                dropping = drop_continued and stripped.endswith("\\")
                continue
            kept.append(line)
        text = "\n".join(kept)
    for old, new in replace:
        assert not strict or old in text, (path, old)
        text = text.replace(old, new)
    exec(compile(text, filename, "exec"), namespace)  # noqa: S102 - the pinned reference code
    return namespace


def leaf(x: torch.Tensor, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """A detached copy of ``x`` in ``dtype`` that records its gradient."""
    return x.detach().to(dtype).requires_grad_(True)


def grad_record(g: torch.Tensor, g32: torch.Tensor | None = None, *, eps: float = 1e-300) -> dict:
    """The norm and a few entries of a float64 gradient, and its float32 rounding.

    ``entries``: ``[index, value]`` of the flattened gradient at 0, n // 3, 2n // 3, n - 1 and
    the largest magnitude. With ``g32`` (the same gradient from the float32 run) also
    ``f32_err`` = max |g32 - g| / max(norm, ``eps``).
    """
    flat = g.detach().double().flatten()
    n = flat.numel()
    picks = sorted({0, n // 3, (2 * n) // 3, n - 1, int(flat.abs().argmax())})
    norm = float(flat.norm())
    record = {"norm": norm, "entries": [[i, float(flat[i])] for i in picks]}
    if g32 is not None:
        err = float((g32.detach().double().flatten() - flat).abs().max()) / max(norm, eps)
        record["f32_err"] = err
    return record


def rel_errs(a: dict, b: dict) -> dict:
    """Per term of ``b``, |a - b| / |b| (0 where |b| <= 1e-6: the test's absolute tolerance
    covers it); the values are tensors or floats."""
    out = {}
    for k in b:
        x, y = float(a[k]), float(b[k])
        out[k] = abs(x - y) / abs(y) if abs(y) > 1e-6 else 0.0
    return out
