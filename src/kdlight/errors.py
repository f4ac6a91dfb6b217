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
            if _in_multirun():  # let Hydra record this job as failed and run the sweep's others
                raise
            sys.exit(2)

    return wrapper  # type: ignore[return-value]


def _in_multirun() -> bool:
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


def output_dir_problem(path: str) -> str | None:
    """Why the run folder ``path`` cannot be created and written, or None when it can."""
    import os
    import tempfile
    from pathlib import Path

    folder = Path(path).absolute()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        blocker = next((p for p in (folder, *folder.parents) if os.path.lexists(p)), None)
        if blocker is not None and not blocker.is_dir():
            return f"{blocker} is a file, not a folder"
        return exc.strerror or type(exc).__name__
    return None


def _hydra_callback_base():
    try:
        from hydra.experimental.callback import Callback
    except ImportError:  # pragma: no cover - Hydra is a dependency
        return object
    return Callback


class OutputDirCheck(_hydra_callback_base()):
    """Hydra callback: stop with one sentence, before any work, when the run (or sweep) folder
    cannot be written. Hydra creates that folder itself, outside the task function, and would
    report a failure there as a traceback."""

    def on_run_start(self, config, **kwargs) -> None:
        self._check(config, "hydra.run.dir")

    def on_multirun_start(self, config, **kwargs) -> None:
        self._check(config, "hydra.sweep.dir")

    @staticmethod
    def _check(config, key: str) -> None:
        from omegaconf import OmegaConf

        try:
            path = OmegaConf.select(config, key)
        except Exception:  # noqa: BLE001 - unresolvable here: Hydra reports it in its own words
            return
        problem = output_dir_problem(str(path)) if path else None
        if problem:
            # SystemExit, not an exception: Hydra turns a callback's exception into a warning
            print(
                f"error: the output folder {path} cannot be written ({problem}); set {key} "
                "(or paths.log_dir) to a folder you can write.",
                file=sys.stderr,
            )
            sys.exit(2)
