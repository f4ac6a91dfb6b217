"""Resuming a run (``ckpt_path``): the checkpoint must be this run's, and the run keeps its settings.

Refused in one sentence before any work: a checkpoint that is not kdlight's, of another
experiment or architecture, or unreadable (naming the intact checkpoints beside it), and a
resume with other hyper-parameters than the run's record holds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from kdlight.errors import CheckpointError, DataError
from kdlight.run.record import read_record


def _value(cfg: DictConfig, key: str) -> Any:
    # before the job starts (the run-folder check) ${hydra:runtime...} does not resolve yet
    return OmegaConf.select(cfg, key, default=None, throw_on_resolution_failure=False)


def check_resume(cfg: DictConfig, out: Path) -> None:
    """``ckpt_path`` (resume) must name a weights-only Lightning checkpoint of this experiment
    and architecture; ``ckpt_path=last`` needs one in the run folder. One sentence, before any work."""
    ckpt = cfg.get("ckpt_path")
    if not ckpt:
        return
    from hydra.utils import to_absolute_path

    from kdlight.checkpoints import load_checkpoint_file

    if str(ckpt) == "last":
        # last.ckpt is written by callbacks.last_checkpoint (conf/callbacks/default.yaml)
        dirpath = (
            _value(cfg, "callbacks.last_checkpoint.dirpath")
            or _value(cfg, "callbacks.model_checkpoint.dirpath")
            or out / "checkpoints"
        )
        path = Path(str(dirpath)) / "last.ckpt"
        if not path.is_file():
            raise CheckpointError(
                f"ckpt_path=last but {path} does not exist, so there is nothing to resume; drop "
                "ckpt_path to start a new run (in a new hydra.run.dir)."
            )
    else:
        path = Path(to_absolute_path(str(ckpt)))
    try:
        blob = load_checkpoint_file(path)  # weights-only and bounded: refuses in one sentence
    except CheckpointError as exc:
        raise CheckpointError(_with_intact_checkpoints(str(exc), path)) from None
    state = blob.get("state_dict") if isinstance(blob, dict) else None
    if not isinstance(state, dict) or "pytorch-lightning_version" not in blob:
        raise CheckpointError(
            f"ckpt_path={ckpt} names {path}, which is not a checkpoint written by kdlight.train "
            "(no Lightning training state); give a teacher's weights as teacher_ckpt instead."
        )
    run_dir = path.parent.parent if path.parent.name == "checkpoints" else path.parent
    try:
        record = read_record(run_dir)
    except DataError:  # an unreadable record only costs this check
        record = None
    previous = record.hparams if record is not None else {}
    check_same_experiment(cfg, previous, path)
    if record is not None and run_dir.resolve() == Path(out).resolve():  # its record is rewritten
        check_same_hparams(cfg, previous, run_dir)
    roles = {"student": ("student.", "net.")}
    if cfg.get("distill") is not None:
        roles["teacher"] = ("teacher.",)
    for role, prefixes in roles.items():
        prefix = next((p for p in prefixes if any(k.startswith(p) for k in state)), None)
        if prefix is None or cfg.get(role) is None:
            continue
        theirs = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        net = instantiate(cfg[role])
        ours = net.state_dict()
        bad = sorted(set(theirs) ^ set(ours)) or [
            k for k in ours if tuple(ours[k].shape) != tuple(theirs[k].shape)
        ]
        if bad:
            raise CheckpointError(
                f"checkpoint {path} does not fit this run's {role} {type(net).__name__} "
                f"({len(bad)} keys differ, first: {bad[0]}); resume with the experiment and "
                "model that wrote it, or drop ckpt_path."
            )


def _with_intact_checkpoints(problem: str, path: Path) -> str:
    """``problem`` (a sentence about ``path``) extended with the checkpoints beside it that load."""
    from kdlight.checkpoints import load_checkpoint_file

    intact = []
    for other in sorted(path.parent.glob("*.ckpt"), key=lambda p: p.stat().st_mtime, reverse=True):
        if other.name == path.name or other.is_symlink():
            continue
        try:
            load_checkpoint_file(other)
        except CheckpointError:
            continue
        intact.append(other)
    problem = problem.rstrip(".")
    if not intact:
        return f"{problem}; no intact checkpoint is left in {path.parent}, so start a new run."
    names = ", ".join(p.name for p in intact)
    return (
        f"{problem}; {path.parent} still holds intact checkpoints ({names}), so resume from the "
        f"newest with ckpt_path={intact[0]}."
    )


#: Hyper-parameters a resume may change: more epochs, or the teacher served another way.
RESUME_MAY_CHANGE = ("max_epochs", "teacher_store")


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, int | float) and isinstance(b, int | float) and not isinstance(a, bool):
        return float(a) == float(b)
    return a == b or str(a) == str(b)


def check_same_experiment(cfg: DictConfig, previous: dict[str, Any], path: Path) -> None:
    """The checkpoint ``path`` of a run recorded with ``previous`` must be of this experiment."""
    name = cfg.get("name")
    if previous.get("experiment") not in (None, name):
        raise CheckpointError(
            f"checkpoint {path} belongs to experiment {previous['experiment']}, not {name}; "
            f"resume it with +experiment={previous['experiment']} or drop ckpt_path."
        )


def check_same_hparams(cfg: DictConfig, previous: dict[str, Any], run_dir: Path) -> None:
    """A resume (``ckpt_path=last``) keeps the hyper-parameters of the run it continues: its
    record describes one run, so a resume with others is refused, naming the keys (another
    experiment altogether is named as such, with the checkpoint)."""
    from kdlight.run.hparams import hparams_of

    ckpt = str(cfg.get("ckpt_path"))
    check_same_experiment(
        cfg, previous, run_dir / "checkpoints" / "last.ckpt" if ckpt == "last" else Path(ckpt)
    )

    try:
        ours = hparams_of(cfg)
    except Exception:  # noqa: BLE001 - the config's own checks report it
        return
    differ = [
        k
        for k, v in previous.items()
        if k in ours and k not in RESUME_MAY_CHANGE and not _same(v, ours[k])
    ]
    if differ:
        shown = ", ".join(f"{k}={previous[k]} (now {ours[k]})" for k in differ)
        raise CheckpointError(
            f"ckpt_path={cfg.get('ckpt_path')} resumes the run in {run_dir}, recorded with {shown}; resume it with "
            "its own settings (only trainer.max_epochs may change) or start a new run in a new "
            "hydra.run.dir."
        )
