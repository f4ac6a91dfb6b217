"""One GPU per job when a sweep runs several jobs at once on one multi-GPU machine.

``gpu_per_job=true`` with a parallel launcher (``hydra/launcher=parallel hydra.launcher.n_jobs=4``
on a 4-GPU machine): each job claims a free GPU with an exclusive file lock and trains on it
(``trainer.devices=[i]``); the lock is released when the job ends or its process dies, so a
worker that starts the next job takes whichever GPU is free. Picking ``job num % n_gpus``
instead would put two jobs on one GPU as soon as jobs finish out of order, and setting
``CUDA_VISIBLE_DEVICES`` is ignored by a (reused) worker that has already initialised CUDA.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from omegaconf import DictConfig, open_dict

from kdlight.errors import ConfigError
from kdlight.io import try_lock

log = logging.getLogger(__name__)

LOCK_DIR_ENV = "KDLIGHT_GPU_LOCK_DIR"


def default_lock_dir() -> Path:
    """``$KDLIGHT_GPU_LOCK_DIR``, else a per-user folder in the machine's temp dir (GPUs are per machine)."""
    env = os.environ.get(LOCK_DIR_ENV)
    return Path(env) if env else Path(tempfile.gettempdir()) / f"kdlight-gpu-locks-{os.getuid()}"


@contextlib.contextmanager
def exclusive_gpu(
    n_gpus: int,
    lock_dir: str | os.PathLike | None = None,
    start: int = 0,
    poll_s: float = 1.0,
    timeout_s: float | None = None,
) -> Iterator[int | None]:
    """Hold an exclusive claim on one GPU index in ``range(n_gpus)`` while the block runs.

    Tries ``start % n_gpus`` first, then the next ones, and polls every ``poll_s`` seconds
    while all are claimed; after ``timeout_s`` (``None``: wait forever) raises ``TimeoutError``.
    A claim is an ``flock`` on ``<lock_dir>/gpu<i>.lock``: exclusive between processes and
    between separate claims in one process. ``n_gpus <= 0`` claims nothing and yields ``None``.
    """
    if n_gpus <= 0:
        yield None
        return
    folder = Path(lock_dir) if lock_dir is not None else default_lock_dir()
    folder.mkdir(parents=True, exist_ok=True)
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while True:
        for k in range(n_gpus):
            index = (start + k) % n_gpus
            held = try_lock(folder / f"gpu{index}.lock", f"pid {os.getpid()}")
            if held is None:
                continue
            try:
                yield index
            finally:
                held.close()  # releases the flock
            return
        if deadline is not None and time.monotonic() >= deadline:
            raise TimeoutError(
                f"all {n_gpus} GPUs stayed claimed by other jobs for {timeout_s} s (locks in {folder})."
            )
        time.sleep(poll_s)


@contextlib.contextmanager
def gpu_for_job(cfg: DictConfig, n_gpus: int | None = None) -> Iterator[int | None]:
    """With ``cfg.gpu_per_job``, pin this job to a free GPU (``cfg.trainer.devices=[i]``) while it runs.

    A no-op (yields ``None``) when ``gpu_per_job`` is false or unset, the trainer is set to
    CPU, or no GPU is visible. The first GPU tried is ``hydra.job.num % n_gpus``, so jobs that
    start together spread out without waiting on each other's locks.
    """
    if not cfg.get("gpu_per_job", False):
        yield None
        return
    trainer = cfg.get("trainer") or {}
    if str(trainer.get("accelerator", "auto")) == "cpu":
        yield None
        return
    if trainer.get("strategy") not in (None, "auto") or str(trainer.get("devices", 1)) not in (
        "1",
        "auto",
    ):
        raise ConfigError(
            f"gpu_per_job=true runs each job on one GPU but trainer.devices={trainer.get('devices')} / "
            f"trainer.strategy={trainer.get('strategy')}; use trainer.devices=1 or gpu_per_job=false."
        )
    if n_gpus is None:
        import torch

        n_gpus = torch.cuda.device_count()
    with exclusive_gpu(n_gpus, start=_job_num()) as index:
        if index is not None:
            with open_dict(cfg):
                cfg.trainer.devices = [index]
            log.info("gpu_per_job: this job runs on GPU %d of %d", index, n_gpus)
        yield index


def _job_num() -> int:
    try:
        from hydra.core.hydra_config import HydraConfig

        return int(HydraConfig.get().job.num) if HydraConfig.initialized() else 0
    except Exception:  # noqa: BLE001 - single runs have no job number
        return 0
