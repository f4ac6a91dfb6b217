"""The one place that opens a run folder: its config, metrics and checkpoints, and what may be built from them.

A run folder (``python -m kdlight.train``'s output: ``.hydra/config.yaml``, its record,
``checkpoints/``) may come from someone else, so it is trusted for data, never for code:

- networks are built from its saved config only when every ``_target_`` in the node (nested
  ones included) is one of kdlight's networks (``kdlight.models.*``) or a well-known model
  factory (``torchvision.models.*``, ``timm.create_model``); data modules only from
  ``kdlight.data.*`` (:func:`safe_instantiate`). Anything else stops in one sentence before
  anything is imported from it or called;
- its YAML is read bounded (size, aliases expanded: :func:`kdlight.io.load_yaml_bounded`);
- every checkpoint is read with ``torch.load(..., weights_only=True)``, bounded
  (:func:`kdlight.checkpoints.load_checkpoint_file`);
- the paths it records (``best_checkpoint`` in its record, the files under
  ``checkpoints/``) are resolved inside the folder (a moved folder still works); one that
  leads outside it, e.g. to another run's checkpoint, is refused. The teacher's weights are
  the one file a run names outside itself (the teacher store or the user's ``teacher_ckpt``);
  they are read weights-only like every checkpoint.

``eval``, ``export`` and ``analyze`` open runs through :func:`open_run` and write only into
their own output folder (by default inside the run they were given). The run's record is read
by :func:`kdlight.run.record.read_record` (an unreadable one is ignored with a warning).
"""

from __future__ import annotations

import importlib
import inspect
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from kdlight.errors import CheckpointError, ConfigError, DataError
from kdlight.io import load_yaml_bounded
from kdlight.run.record import METRICS_FILE, RunRecord, read_record

log = logging.getLogger(__name__)

#: What a saved config may build: module prefixes (ending in ".") or exact callables.
NETWORK_TARGETS: tuple[str, ...] = ("kdlight.models.", "torchvision.models.", "timm.create_model")
DATA_TARGETS: tuple[str, ...] = ("kdlight.data.",)
METHOD_TARGETS: tuple[str, ...] = ("kdlight.methods.",)
#: data modules of runs written before kdlight.data was split by role -> where they live now
MOVED_DATA_TARGETS = {
    f"kdlight.data.{old}": f"kdlight.data.{new}"
    for old, new in {
        "mnist.MNISTDataModule": "datasets.mnist.MNISTDataModule",
        "cifar10.CIFAR10DataModule": "datasets.cifar10.CIFAR10DataModule",
        "cifar100.CIFAR100DataModule": "datasets.cifar100.CIFAR100DataModule",
        "imagenet.ImageNetDataModule": "datasets.imagenet.ImageNetDataModule",
        "tiny_imagenet.TinyImageNetDataModule": "datasets.tiny_imagenet.TinyImageNetDataModule",
        "image_folder.ImageFolderDataModule": "modules.image_folder.ImageFolderDataModule",
    }.items()
}
#: Arguments of an allowed factory that would load a file with its own (unchecked) loader.
_BLOCKED_ARGUMENTS = {
    "timm.create_model": ("checkpoint_path", "pretrained_cfg", "pretrained_cfg_overlay"),
}


class RunFolderError(ConfigError):
    """A run folder asks for something it is not trusted with (code, a path outside itself)."""


# ---- building only what a saved config may build ---------------------------------------------


def _allowed_callable(target: str, allowed: Sequence[str]) -> bool:
    """True when ``target`` names a class or function defined in an allowed module.

    The name must be ``<module>.<attribute>`` with ``<module>`` importable as a module under an
    allowed prefix (not an attribute walk such as ``kdlight.models.mlp.torch.load``), and the
    object must be defined there (not imported from elsewhere).
    """
    if not isinstance(target, str) or not target.replace(".", "").replace("_", "").isalnum():
        return False
    entry = next(
        (a for a in allowed if target == a or (a.endswith(".") and target.startswith(a))), None
    )
    if entry is None:
        return False
    # where the object must be defined: the allowed package, or the factory's package
    home = entry[:-1] if entry.endswith(".") else entry.split(".", 1)[0]
    module_name, _, name = target.rpartition(".")
    if not module_name or name.startswith("_"):
        return False
    try:
        module = importlib.import_module(module_name)
        obj = getattr(module, name)
    except (ImportError, AttributeError):
        return False
    if not (inspect.isclass(obj) or inspect.isfunction(obj)):
        return False
    defined_in = str(getattr(obj, "__module__", ""))
    return defined_in == home or defined_in.startswith(home + ".")


def check_targets(node: Any, allowed: Sequence[str], where: str, source: str) -> None:
    """Raise :class:`RunFolderError` unless every ``_target_`` in ``node`` (a plain container) is allowed."""
    if isinstance(node, Mapping):
        target = node.get("_target_")
        if target is not None:
            if not _allowed_callable(target, allowed):
                shown = ", ".join(a + "*" if a.endswith(".") else a for a in allowed)
                raise RunFolderError(
                    f"{source} asks to build {where}._target_={target!r}, which is not one of the "
                    f"networks or data modules a saved config may build ({shown}); it was refused "
                    "and nothing from it was run."
                )
            for arg in _BLOCKED_ARGUMENTS.get(target, ()):
                if arg in node:
                    raise RunFolderError(
                        f"{source} passes {where}.{arg} to {target}, which would load a file "
                        "without kdlight's weights-only check; it was refused."
                    )
        for key, value in node.items():
            check_targets(value, allowed, f"{where}.{key}", source)
    elif isinstance(node, list | tuple):
        for i, value in enumerate(node):
            check_targets(value, allowed, f"{where}[{i}]", source)


def safe_instantiate(
    node: DictConfig | Mapping,
    allowed: Sequence[str] = NETWORK_TARGETS,
    where: str = "student",
    source: str = "the config",
    **kwargs: Any,
) -> Any:
    """``hydra.utils.instantiate(node, **kwargs)`` after :func:`check_targets` on the resolved node."""
    from hydra.utils import instantiate

    if isinstance(node, DictConfig | ListConfig):
        node = OmegaConf.to_container(node, resolve=True)
    check_targets(node, allowed, where, source)
    return instantiate(node, **kwargs)


# ---- the run folder ----------------------------------------------------------------------------


def is_run(folder: str | os.PathLike) -> bool:
    """True when ``folder`` holds a run's ``.hydra/config.yaml``."""
    return (Path(folder) / ".hydra" / "config.yaml").is_file()


def _read_record(folder: Path) -> RunRecord | None:
    try:
        return read_record(folder)
    except DataError as exc:  # the config and checkpoints may still serve
        log.warning("ignoring an unreadable run record: %s", exc)
        return None


def _read_yaml(path: Path) -> DictConfig:
    try:
        cfg = load_yaml_bounded(path) if path.is_file() else OmegaConf.create()
    except Exception as exc:  # noqa: BLE001 - hydra.yaml only helps resolve paths
        log.warning("ignoring %s: %s", path, exc)
        return OmegaConf.create()
    return cfg if isinstance(cfg, DictConfig) else OmegaConf.create()


@dataclass
class Run:
    """A run folder opened for reading: its config, record (metrics) and launch directory."""

    dir: Path
    cfg: DictConfig
    metrics: dict[str, Any] = field(default_factory=dict)  # the record's flat metrics
    record: RunRecord | None = None
    cwd: Path | None = None  # the directory the run was started from (relative paths)
    recorded_dir: Path | None = None  # where the run was written (it may have moved since)

    @property
    def config_path(self) -> Path:
        return self.dir / ".hydra" / "config.yaml"

    # -- paths ------------------------------------------------------------------------------

    def inside(self, recorded: str | os.PathLike, what: str) -> Path:
        """The file ``recorded`` (as the record names it) inside this folder; refuse one outside.

        An absolute path under the folder the run was written to is moved to where the folder
        is now; a relative one is relative to the folder. Symlinks are followed before the check.
        """
        p = Path(os.path.expanduser(str(recorded)))
        if p.is_absolute() and self.recorded_dir is not None:
            try:
                p = self.dir / p.relative_to(self.recorded_dir)
            except ValueError:
                pass
        if not p.is_absolute():
            p = self.dir / p
        real = p.resolve()
        if not real.is_relative_to(self.dir.resolve()):
            shown = f"{recorded}, a link to {real}," if real != p.absolute() else f"{recorded},"
            raise RunFolderError(
                f"{what} of run {self.dir} is {shown} which lies outside the run folder "
                f"(another run's file?); it was refused, so name the checkpoint file itself."
            )
        return real

    def checkpoint(self, which: str = "best") -> Path:
        """The validation-best checkpoint (the record's ``best_checkpoint``, else the
        newest ``checkpoints/best*.ckpt``, else ``last.ckpt``), or ``last.ckpt`` for ``"last"``."""
        folder = self.dir / "checkpoints"
        last = folder / "last.ckpt"
        if which == "last":
            if not last.is_file():
                raise CheckpointError(
                    f"{folder} has no last.ckpt; use --which best or name a .ckpt file."
                )
            return self.inside(last, "last.ckpt")
        best = self.metrics.get("best_checkpoint")
        if best:
            path = self.inside(best, f"{METRICS_FILE}'s best_checkpoint")
            if path.is_file():
                return path
        found = sorted(folder.glob("best*.ckpt"), key=lambda p: p.stat().st_mtime)
        ckpt = found[-1] if found else last
        if not ckpt.is_file():
            raise CheckpointError(
                f"{folder} holds no checkpoint (best*.ckpt or last.ckpt); name a run folder of "
                "python -m kdlight.train or a checkpoint file."
            )
        return self.inside(ckpt, f"checkpoint {ckpt.name}")

    def resolve_path(self, path: str | os.PathLike) -> Path:
        """A path from the run's config: relative ones are relative to the launch directory."""
        p = Path(os.path.expanduser(str(path)))
        if p.is_absolute():
            return p
        if self.cwd is not None and (self.cwd / p).exists():
            return self.cwd / p
        return p.resolve()

    def teacher_sources(self) -> list[tuple[str, Path]]:
        """Where the run's teacher weights may be: ``teacher_ckpt``, then the record's ``teacher/source``."""
        out = []
        if self.cfg.get("teacher_ckpt"):
            out.append(("teacher_ckpt", self.resolve_path(str(self.cfg.teacher_ckpt))))
        if self.metrics.get("teacher/source"):
            out.append(
                (
                    f"{METRICS_FILE} teacher/source",
                    self.resolve_path(self.metrics["teacher/source"]),
                )
            )
        return out

    @property
    def is_distillation(self) -> bool:
        return self.cfg.get("distill") is not None and self.cfg.get("teacher") is not None

    # -- building --------------------------------------------------------------------------

    def build(self, role: str = "student") -> Any:
        """The run's ``student`` or ``teacher`` network, built from its config (allowed targets only)."""
        if role not in self.cfg or self.cfg.get(role) is None:
            raise ConfigError(f"{self.config_path} has no '{role}' model; is it a kdlight run?")
        return safe_instantiate(
            self.cfg[role], NETWORK_TARGETS, where=role, source=str(self.config_path)
        )

    def build_data(self, **kwargs: Any) -> Any:
        """The run's data module, built from its config (``kdlight.data.*`` only; a run of an
        earlier kdlight names its module where it lived then, :data:`MOVED_DATA_TARGETS`)."""
        node = OmegaConf.to_container(self.cfg.data, resolve=True)
        if isinstance(node, dict) and node.get("_target_") in MOVED_DATA_TARGETS:
            node["_target_"] = MOVED_DATA_TARGETS[node["_target_"]]
        return safe_instantiate(
            node, DATA_TARGETS, where="data", source=str(self.config_path), **kwargs
        )


def read_run(folder: str | os.PathLike) -> Run:
    """Open the run folder ``folder`` (it must hold ``.hydra/config.yaml``)."""
    folder = Path(folder).absolute()
    config = folder / ".hydra" / "config.yaml"
    if not config.is_file():
        raise ConfigError(
            f"no run config at {config}; name a run folder written by python -m kdlight.train."
        )
    try:
        # bounded: someone else's config may be an alias bomb or a huge file (kdlight.io)
        cfg = load_yaml_bounded(config)
    except DataError as exc:
        raise ConfigError(f"the run config {exc}") from None
    except Exception as exc:  # noqa: BLE001 - yaml errors: one sentence
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"the run config {config} is not readable YAML ({first}).") from None
    if not isinstance(cfg, DictConfig):
        raise ConfigError(f"the run config {config} is not a mapping; is it a kdlight run?")
    hydra_cfg = _read_yaml(folder / ".hydra" / "hydra.yaml")
    cwd = OmegaConf.select(hydra_cfg, "hydra.runtime.cwd", default=None)
    recorded = OmegaConf.select(hydra_cfg, "hydra.runtime.output_dir", default=None)
    record = _read_record(folder)
    return Run(
        dir=folder,
        cfg=cfg,
        metrics=dict(record.metrics) if record is not None else {},
        record=record,
        cwd=Path(str(cwd)) if cwd else None,
        recorded_dir=Path(str(recorded)) if recorded else None,
    )


def find_run(path: str | os.PathLike, which: str = "best") -> tuple[Run | None, Path]:
    """Resolve a run folder, its ``checkpoints/`` folder or a ``.ckpt`` file to (run or None, checkpoint).

    For a folder the checkpoint is :meth:`Run.checkpoint` (``which``: ``"best"`` or ``"last"``);
    the run is None for a checkpoint outside a run (no ``.hydra/config.yaml`` beside it).
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint or run directory {path} does not exist.")
    if path.is_file():
        folder = path.parent.parent if path.parent.name == "checkpoints" else path.parent
        if not is_run(folder):
            return None, path
        run = read_run(folder)
        return run, run.inside(path, f"checkpoint {path.name}")
    folder = path.parent if path.name == "checkpoints" else path
    if is_run(folder):
        run = read_run(folder)
        return run, run.checkpoint(which)
    bare = Run(dir=folder.absolute(), cfg=OmegaConf.create())
    return None, bare.checkpoint(which)


def open_run(path: str | os.PathLike, which: str = "best") -> tuple[Run, Path]:
    """Like :func:`find_run`, but ``path`` must belong to a run."""
    run, ckpt = find_run(path, which)
    if run is None:
        folder = ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent
        raise ConfigError(
            f"no run config at {folder / '.hydra' / 'config.yaml'}; the checkpoint must sit in "
            "<run>/checkpoints/ of a run written by python -m kdlight.train."
        )
    return run, ckpt


def build_method(distill: Any, source: str = "the config"):
    """The ``distill`` node's method (``kdlight.methods.*`` only), or None for no node."""
    if distill is None:
        return None
    from kdlight.methods.base import Method

    target = distill.get("_target_") if isinstance(distill, Mapping | DictConfig) else None
    module_name, _, name = str(target).rpartition(".")
    if _allowed_callable(str(target), METHOD_TARGETS):
        cls = getattr(importlib.import_module(module_name), name)
        if inspect.isclass(cls) and issubclass(cls, Method):
            return safe_instantiate(
                distill, METHOD_TARGETS, where="distill", source=source, _convert_="all"
            )
    raise RunFolderError(
        f"{source} asks to build distill._target_={target!r}, which is not a kdlight method "
        "class (kdlight.methods.*); it was refused and nothing from it was run."
    )


def deployed_network(method, net, weights: str | os.PathLike):
    """``net`` (its weights already loaded from ``weights``) as ``method`` deploys it.

    A method that predicts through more than the student (:meth:`Method.deployed`) gets its
    checkpoint entries (``method.*`` of the Lightning checkpoint ``weights``) through
    :meth:`Method.restore`; every other method (or None) deploys the student itself.
    """
    from kdlight.checkpoints import load_checkpoint_file
    from kdlight.methods.base import Method

    if method is None or type(method).deployed is Method.deployed:
        return net
    obj = load_checkpoint_file(weights)
    state = obj.get("state_dict") if isinstance(obj, Mapping) else None
    own = {k[7:]: v for k, v in (state or {}).items() if k.startswith("method.")}
    if not own:
        raise CheckpointError(
            f"checkpoint {weights} holds no 'method.' weights, which distill="
            f"{type(method).__name__.lower()} predicts with; give the run's own Lightning "
            "checkpoint (checkpoints/last.ckpt or the validation-best one)."
        )
    method.restore(own, net)
    deployed = method.deployed(net)
    return (net if deployed is None else deployed).eval()


__all__ = [
    "DATA_TARGETS",
    "METHOD_TARGETS",
    "build_method",
    "deployed_network",
    "NETWORK_TARGETS",
    "Run",
    "RunFolderError",
    "check_targets",
    "find_run",
    "is_run",
    "open_run",
    "read_run",
    "safe_instantiate",
]
