"""User-facing errors: one sentence, no traceback, non-zero exit."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import TypeVar

F = TypeVar("F", bound=Callable)


class KdlightError(Exception):
    """An error the user caused (config, data, checkpoint); its message is one clear sentence."""


class ConfigError(KdlightError, ValueError):
    """A configuration value is out of range or inconsistent."""


class DataError(KdlightError):
    """Data files are missing, truncated or corrupt."""


class CheckpointError(KdlightError):
    """A checkpoint is missing, unsafe, or does not fit the chosen architecture."""


def user_errors_exit(fn: F) -> F:
    """Run ``fn``; turn a :class:`KdlightError` (also when Hydra wraps it) into ``error: ...`` and exit 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - we re-raise anything that is not a user error
            user = find_user_error(exc)
            if user is None:
                raise
            print(f"error: {user}", file=sys.stderr)
            if in_multirun():  # let Hydra record this job as failed and run the sweep's others
                raise
            sys.exit(2)

    return wrapper  # type: ignore[return-value]


def in_multirun() -> bool:
    """True inside a job of a Hydra multirun (sweep), where exiting would end every other job."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
    except Exception:  # noqa: BLE001 - no Hydra, no sweep
        return False


def find_user_error(exc: BaseException | None) -> KdlightError | None:
    """Return the first :class:`KdlightError` in ``exc``'s cause/context chain, if any."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, KdlightError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


class TrainingDiverged(KdlightError):
    """The loss became NaN or infinite."""
