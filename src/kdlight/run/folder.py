"""The run folder: claimed before any work, locked while a run trains in it, never overwritten.

Hydra creates the run (or sweep) folder itself, outside the task function; the Hydra callback
:class:`OutputDirCheck` (``conf/hydra/default.yaml``) stops there, in one sentence and exit 2,
when the folder cannot be written, already holds a run (and this is no resume), or another
process trains in it now (its lock ``.kdlight.lock`` is held until the process ends).
"""

from __future__ import annotations

import os
import socket
import sys
import tempfile
import time
from pathlib import Path

from omegaconf import OmegaConf

from kdlight.errors import DataError
from kdlight.io import UnsafeFileError, lock_note, try_lock
from kdlight.run.record import METRICS_FILE, read_record


def output_dir_problem(path: str) -> str | None:
    """Why the run folder ``path`` cannot be created and written, or None when it can."""
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

    return any(
        os.environ.get(v, "0") not in ("", "0") for v in ("RANK", "LOCAL_RANK", "SLURM_PROCID")
    )


def run_in_folder(folder) -> str | None:
    """What shows that ``folder`` already holds a run (a record or a checkpoint), or None."""
    folder = Path(folder)
    try:
        record = read_record(folder)
        status = None if record is None else record.status
    except DataError:
        status = "unreadable"
    if status is not None:
        return f"its {METRICS_FILE} says status {status}"
    ckpts = folder / "checkpoints"
    if ckpts.is_dir() and any(ckpts.glob("*.ckpt")):
        return "it has checkpoints"
    return None


def _claim_run_folder(config, key: str) -> None:
    """Stop (exit 2, one sentence) when the run folder holds another run and this is not a resume,
    or when another process trains in it now; else hold its lock until this process ends."""
    try:
        path = OmegaConf.select(config, key)
        resume = OmegaConf.select(config, "ckpt_path", default=None)
    except Exception:  # noqa: BLE001 - unresolvable here: Hydra reports it in its own words
        return
    if not path:
        return
    folder = Path(str(path)).absolute()
    lock = folder / RUN_LOCK
    note = (
        f"pid {os.getpid()} on {socket.gethostname()}, started {time.strftime('%Y-%m-%d %H:%M:%S')}"
    )
    try:
        held = try_lock(lock, note)
    except UnsafeFileError as exc:  # a planted link: opened O_NOFOLLOW, nothing truncated
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
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
    if found and resume:
        _refuse_bad_resume(config, folder)


def _refuse_bad_resume(config, folder: Path) -> None:
    """A resume the run would refuse (:func:`kdlight.run.resume.check_resume`: other
    hyper-parameters than the run's record, a checkpoint of another experiment or architecture,
    an unreadable one) is refused here, before Hydra rewrites the folder's ``.hydra/`` files
    with the new config (exit 2, one sentence)."""
    from kdlight.errors import KdlightError
    from kdlight.run.resume import check_resume

    try:
        check_resume(config, folder)
    except KdlightError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except Exception:  # noqa: BLE001 - not resolvable before the job starts: the run checks it
        return


def _refuse_finished_sweep(config) -> None:
    """Stop (exit 2) when the sweep folder already holds runs: a sweep never writes over results."""
    try:
        path = OmegaConf.select(config, "hydra.sweep.dir")
    except Exception:  # noqa: BLE001
        return
    folder = Path(str(path)).absolute() if path else None
    if folder is None or not folder.is_dir():
        return
    taken = sorted(p.parent.name for p in folder.glob(f"*/{METRICS_FILE}"))
    if taken:
        print(
            f"error: the sweep folder {folder} already holds runs ({', '.join(taken[:3])}"
            f"{', ...' if len(taken) > 3 else ''}) and their results are kept; choose a new "
            "hydra.sweep.dir.",
            file=sys.stderr,
        )
        sys.exit(2)
