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
        if not _is_extra_rank():
            _claim_run_folder(config, "hydra.run.dir")

    def on_multirun_start(self, config, **kwargs) -> None:
        self._check(config, "hydra.sweep.dir")
        if not _is_extra_rank():
            _refuse_finished_sweep(config)

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


# ---- a run folder holds one run: never overwritten, never trained in by two processes --------

RUN_LOCK = ".kdlight.lock"
_HELD_LOCKS: list = []  # open files holding run-folder locks until this process ends


def _is_extra_rank() -> bool:
    """True in a distributed job's processes other than the first (they share rank 0's folder)."""
    import os

    return any(
        os.environ.get(v, "0") not in ("", "0") for v in ("RANK", "LOCAL_RANK", "SLURM_PROCID")
    )


def run_in_folder(folder) -> str | None:
    """What shows that ``folder`` already holds a run (``metrics.json`` or a checkpoint), or None."""
    import json
    from pathlib import Path

    folder = Path(folder)
    metrics = folder / "metrics.json"
    if metrics.is_file():
        try:
            status = json.loads(metrics.read_text()).get("status", "unknown")
        except (OSError, ValueError, AttributeError):
            status = "unreadable"
        return f"its metrics.json says status {status}"
    ckpts = folder / "checkpoints"
    if ckpts.is_dir() and any(ckpts.glob("*.ckpt")):
        return "it has checkpoints"
    return None


def _claim_run_folder(config, key: str) -> None:
    """Stop (exit 2, one sentence) when the run folder holds another run and this is not a resume,
    or when another process trains in it now; else hold its lock until this process ends."""
    import os
    import socket
    import time
    from pathlib import Path

    from omegaconf import OmegaConf

    try:
        path = OmegaConf.select(config, key)
        resume = OmegaConf.select(config, "ckpt_path", default=None)
    except Exception:  # noqa: BLE001 - unresolvable here: Hydra reports it in its own words
        return
    if not path:
        return
    folder = Path(str(path)).absolute()
    from kdlight.io import lock_note, try_lock

    lock = folder / RUN_LOCK
    note = (
        f"pid {os.getpid()} on {socket.gethostname()}, started {time.strftime('%Y-%m-%d %H:%M:%S')}"
    )
    try:
        held = try_lock(lock, note)
    except OSError:  # a read-only folder: OutputDirCheck has already said what is wrong
        return
    if held is None:
        print(
            f"error: another process ({lock_note(lock) or 'unknown'}) is running in the run folder "
            f"{folder}; wait for it to end or choose another hydra.run.dir.",
            file=sys.stderr,
        )
        sys.exit(2)
    _HELD_LOCKS.append(held)  # held until this process ends (a check below exits: released)
    found = run_in_folder(folder)
    if found and not resume:
        print(
            f"error: the run folder {folder} already holds a run ({found}) and its results are "
            "kept; choose a new hydra.run.dir, or add ckpt_path=last to resume that run.",
            file=sys.stderr,
        )
        sys.exit(2)


def _refuse_finished_sweep(config) -> None:
    """Stop (exit 2) when the sweep folder already holds runs: a sweep never writes over results."""
    from pathlib import Path

    from omegaconf import OmegaConf

    try:
        path = OmegaConf.select(config, "hydra.sweep.dir")
    except Exception:  # noqa: BLE001
        return
    folder = Path(str(path)).absolute() if path else None
    if folder is None or not folder.is_dir():
        return
    taken = sorted(p.parent.name for p in folder.glob("*/metrics.json"))
    if taken:
        print(
            f"error: the sweep folder {folder} already holds runs ({', '.join(taken[:3])}"
            f"{', ...' if len(taken) > 3 else ''}) and their results are kept; choose a new "
            "hydra.sweep.dir.",
            file=sys.stderr,
        )
        sys.exit(2)
