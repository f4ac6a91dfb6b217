"""Payloads a safe reader must refuse without running them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


class RunsCode:
    """Pickles to the call ``func(*args)``: loading it with plain pickle would run that call.

    E.g. ``RunsCode(os.system, "touch marker")`` or ``RunsCode(Path.touch, marker)``: whether
    ``marker`` exists afterwards proves whether a reader ran code from the file.
    """

    def __init__(self, func: Callable[..., Any], *args: Any) -> None:
        self.func = func
        self.args = args

    def __reduce__(self):
        return (self.func, self.args)
