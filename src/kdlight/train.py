"""Train a classifier or distill a student: ``python -m kdlight.train +experiment=NAME [overrides]``.

With ``distill: null`` the student is trained alone with cross-entropy (teachers, baselines);
with ``distill=kd`` (or any other method) it learns from a frozen teacher, loaded from
``teacher_ckpt`` or trained once into the teacher store. Each run writes its resolved config,
checkpoints (``last.ckpt`` and the validation-best), TensorBoard events and ``metrics.json``
(test accuracy of the last and of the validation-best checkpoint) into its own directory.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from kdlight.engine import check_outputs, fused_optimizer_setting
from kdlight.errors import ConfigError, KdlightError, find_user_error, user_errors_exit
from kdlight.io import atomic_write_json

log = logging.getLogger(__name__)

# configs ship inside the package, so an installed wheel finds them from any directory
CONFIG_DIR = str(Path(__file__).resolve().parent / "conf")


def hparams_of(cfg: DictConfig) -> dict[str, Any]:
    """The hyper-parameters that tell runs apart, flat (for metrics.json, reports, TensorBoard).

    Every scalar of the ``distill`` node is one (``alpha``, ``beta``, ``temperature``, ...),
    under its own name unless a general key already has it (``distill.lr``, ``distill.seed``).
    """
    distill = cfg.get("distill")
    opt = cfg.module.optimizer
    hp: dict[str, Any] = {
        "experiment": cfg.get("name"),
        "seed": cfg.get("seed"),
        "data": cfg.data.get("name", cfg.data._target_.rsplit(".", 1)[-1]),
        "labeled_fraction": cfg.data.get("labeled_fraction", 1.0),
        "unlabeled": cfg.data.get("unlabeled", False),
        "augment": cfg.data.get("augment", False),
        "batch_size": cfg.data.get("batch_size"),
        "student": _model_name(cfg.student),
        "optimizer": opt._target_.rsplit(".", 1)[-1],
        "lr": opt.get("lr"),
        "max_epochs": cfg.trainer.get("max_epochs"),
        "method": "none" if distill is None else method_name(distill._target_),
    }
    if distill is not None:
        from kdlight.ensemble import ensemble_name

        hp["teacher"] = ensemble_name(cfg, _model_name) or _model_name(cfg.teacher)
        store = cfg.get("teacher_store")
        # served from the store or run online: same results, different wall time
        hp["teacher_store"] = bool(store is not None and store.get("enabled", True))
        general = set(hp)
        for k, v in distill.items():
            if not k.startswith("_") and isinstance(v, int | float | str | bool):
                hp[f"distill.{k}" if k in general else k] = v
    return hp


def method_name(target: str) -> str:
    """``kdlight.methods.dkd.DKD`` -> ``dkd`` (the file, as users type it); else the class name."""
    parts = target.split(".")
    if len(parts) == 4 and parts[:2] == ["kdlight", "methods"]:
        return parts[2]
    return parts[-1]


def _model_name(node: DictConfig) -> str:
    if "name" in node:  # a library network (kdlight.models.external): torchvision:resnet34
        return f"{node._target_.rsplit('.', 1)[-1].removesuffix('_model')}:{node.name}"
    name = node._target_.rsplit(".", 1)[-1]
    if "depth" in node:
        name += f"-{node.depth}"
    if "hidden" in node:
        name += "-" + "-".join(str(h) for h in node.hidden)
    return name


def check_config(cfg: DictConfig):
    """Fail early, before any work, on inconsistent settings; return the built method (or None).

    The method's constructor checks its own settings, so it is built here once and the run
    uses this instance.
    """
    check_keys(cfg)
    check_values(cfg)
    distill = cfg.get("distill")
    unlabeled = bool(cfg.data.get("unlabeled", False))
    method = None
    if distill is None and unlabeled:
        raise ConfigError(
            "data.unlabeled=true but no distillation is configured; cross-entropy training needs "
            "labels, so add distill=kd distill.alpha=1.0 or set data.unlabeled=false."
        )
    if distill is not None:
        method = instantiate_method(distill)
        if unlabeled and method.needs_labels:
            alpha = f" distill.alpha={distill.alpha}" if "alpha" in distill else ""
            raise ConfigError(
                f"data.unlabeled=true with distill={method_name(distill._target_)}{alpha}, whose "
                "loss needs labels; set distill.alpha=1.0 (or use a method that learns from the "
                "teacher alone)."
            )
    store_options = _store_options(cfg)
    if distill is not None and store_options is not None:
        from kdlight.store import check_store_options

        check_store_options(**store_options)
    strategy = str(cfg.trainer.get("strategy", "auto"))
    if strategy.startswith("ddp") and not any(s in strategy for s in ("spawn", "fork", "notebook")):
        from kdlight.errors import _in_multirun

        # Lightning starts each extra rank by re-running sys.argv: the whole sweep
        if _in_multirun():
            raise ConfigError(
                f"trainer.strategy={strategy} cannot run inside a Hydra multirun (each extra process "
                "would start the whole sweep again); use trainer.strategy=ddp_spawn for sweeps."
            )
    return method


def run(cfg: DictConfig) -> dict[str, Any]:
    """Run one experiment described by ``cfg``; return the metrics written to ``metrics.json``."""
    out = Path(cfg.paths.output_dir)
    metrics_path = out / "metrics.json"
    try:
        method = check_config(cfg)
    except KdlightError as exc:
        # a sweep's report lists the job as failed; a folder that holds a run is never touched
        if out.is_dir() and not metrics_path.exists() and rank_zero_only.rank == 0:
            try:
                hp_seen = hparams_of(cfg)
            except Exception:  # noqa: BLE001 - the config is what failed
                hp_seen = {"experiment": cfg.get("name"), "seed": cfg.get("seed")}
            atomic_write_json(
                metrics_path, {"status": "failed", "hparams": hp_seen, "error": str(exc)}
            )
        raise
    check_resume(cfg, out)
    hp = hparams_of(cfg)
    started = time.time()

    def write(path: Path, obj: dict[str, Any]) -> None:
        if rank_zero_only.rank == 0:  # under DDP every rank runs this; one writes
            atomic_write_json(path, obj)

    write(metrics_path, {"status": "running", "hparams": hp})
    try:
        metrics = _run(cfg, out, hp, method)
    except BaseException as exc:
        user = find_user_error(exc)
        write(
            metrics_path,
            {
                "status": "failed",
                "hparams": hp,
                "error": str(user or exc) or type(exc).__name__,
                "wall_s": round(time.time() - started, 2),
            },
        )
        raise
    metrics.update(status="finished", hparams=hp, wall_s=round(time.time() - started, 2))
    write(metrics_path, metrics)
    log.info("metrics: %s", {k: v for k, v in metrics.items() if k.startswith("test/")})
    return metrics


def _run(cfg: DictConfig, out: Path, hp: dict[str, Any], method=None) -> dict[str, Any]:
    if cfg.get("seed") is not None:
        L.seed_everything(int(cfg.seed), workers=True)
    torch.set_float32_matmul_precision(cfg.get("matmul_precision", "high"))
    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()
    datamodule.setup("fit")
    student = _memory_format(instantiate(cfg.student), datamodule)
    num_classes = datamodule.num_classes
    metrics: dict[str, Any] = {}
    module_cfg = cfg.module
    optimizer = instantiate(module_cfg.optimizer)
    scheduler = instantiate(module_cfg.scheduler) if module_cfg.get("scheduler") else None
    example = datamodule.view_batch(
        datamodule.val_idx[:2] if datamodule.val_idx.numel() else datamodule.train_idx[:2], None
    )
    if cfg.get("distill") is None:
        from kdlight.engine import ClassifierModule

        check_outputs(student, example, num_classes, "student")
        module = ClassifierModule(
            student,
            num_classes,
            optimizer,
            scheduler,
            compile=module_cfg.get("compile", False),
            fused_optimizer=module_cfg.get("fused_optimizer", "auto"),
        )
    else:
        from kdlight.engine import DistillationModule
        from kdlight.teacher import build_teacher

        teacher, info = build_teacher(cfg, datamodule)
        teacher = _memory_format(teacher, datamodule)
        if cfg.get("seed") is not None:  # teacher training must not shift the student's seed
            L.seed_everything(int(cfg.seed), workers=True, verbose=False)
            student = _memory_format(instantiate(cfg.student), datamodule)
        check_outputs(student, example, num_classes, "student")
        metrics.update({f"teacher/{k}": v for k, v in info.items()})
        store = _teacher_store(cfg, teacher, datamodule) if method.uses_store else None
        module = DistillationModule(
            student,
            teacher,
            method,
            num_classes,
            optimizer,
            scheduler,
            compile=module_cfg.get("compile", False),
            teacher_store=store,
            log_agreement=module_cfg.get("log_agreement", True),
            fused_optimizer=module_cfg.get("fused_optimizer", "auto"),
        )
        datamodule = module.fit_datamodule(datamodule)  # data-free KD trains on a transfer set
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c is not None]
    logger = instantiate(cfg.logger) if cfg.get("logger") else False
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=logger)
    trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    # the validation-best checkpoint's callback, not callbacks.last_checkpoint (last.ckpt)
    ckpt_cb = next(
        (
            c
            for c in trainer.callbacks
            if isinstance(c, ModelCheckpoint) and c.filename != ModelCheckpoint.CHECKPOINT_NAME_LAST
        ),
        None,
    )
    last = trainer.test(module, datamodule=datamodule, verbose=False)
    metrics["test/acc_last"] = float(last[0]["test/acc"])
    if "test/agreement" in last[0]:
        metrics["test/agreement_last"] = float(last[0]["test/agreement"])
    if ckpt_cb is not None and ckpt_cb.best_model_path and ckpt_cb.best_model_score is not None:
        best = trainer.test(
            module, datamodule=datamodule, ckpt_path=ckpt_cb.best_model_path, verbose=False
        )
        metrics["test/acc_best"] = float(best[0]["test/acc"])
        if "test/agreement" in best[0]:
            metrics["test/agreement_best"] = float(best[0]["test/agreement"])
        metrics["val/acc_best"] = float(ckpt_cb.best_model_score)
        metrics["best_checkpoint"] = str(ckpt_cb.best_model_path)
        metrics["best_epoch"] = int(
            torch.load(ckpt_cb.best_model_path, map_location="cpu", weights_only=True)["epoch"]
        )
    else:  # no checkpoint written (e.g. fast_dev_run): the last weights are all there is
        metrics["test/acc_best"] = metrics["test/acc_last"]
    metrics["epochs"] = int(trainer.current_epoch)
    log_final(trainer, hp, metrics)
    return metrics


def log_final(trainer: L.Trainer, hp: dict[str, Any], metrics: dict[str, Any]) -> None:
    """Give every logger the run's hparams and final test metrics, then close it."""
    from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger

    final = {
        "hp_metric": metrics["test/acc_best"],
        "test/acc_best": metrics["test/acc_best"],
        "test/acc_last": metrics["test/acc_last"],
    }
    for lg in trainer.loggers:
        if isinstance(lg, TensorBoardLogger):  # the HPARAMS tab pairs them with these metrics
            lg.log_hyperparams(
                hp, {"hp_metric": final["hp_metric"], "test/acc_last": final["test/acc_last"]}
            )
        else:  # CSV, W&B, MLflow: hparams once, final metrics as the last logged values
            lg.log_hyperparams(hp)
            lg.log_metrics(final, step=trainer.global_step)
        lg.finalize("success")
        if isinstance(lg, WandbLogger):  # one W&B run per job, also in a multirun's process
            lg.experiment.finish()


def instantiate_method(node: DictConfig):
    """Build the ``distill`` node's method, whose constructor checks its own settings."""
    from kdlight.methods.base import Method

    try:
        method = instantiate(node, _convert_="all")
    except Exception as exc:  # Hydra wraps the method's own ConfigError: raise that one
        user = find_user_error(exc)
        if user is None:
            raise
        raise user from None
    if not isinstance(method, Method):
        raise ConfigError(
            f"distill._target_={node._target_} is not a kdlight method (a subclass of "
            "kdlight.methods.base.Method)."
        )
    return method


def _store_options(cfg: DictConfig) -> dict[str, Any] | None:
    """``teacher_store``'s options (see :class:`kdlight.store.TeacherLogitStore`), or None when off."""
    store_cfg = cfg.get("teacher_store")
    if not store_cfg or not store_cfg.get("enabled", False):
        return None
    from kdlight.store import DEFAULT_MAX_GB, DEFAULT_SHARD_ROWS

    return {
        "dtype": store_cfg.get("dtype", "float16"),
        "batch_size": store_cfg.get("batch_size", 256),
        "top_k": store_cfg.get("top_k", None),
        "shard_rows": store_cfg.get("shard_rows", DEFAULT_SHARD_ROWS),
        "max_gb": store_cfg.get("max_gb", DEFAULT_MAX_GB),
    }


def _memory_format(net: torch.nn.Module, datamodule) -> torch.nn.Module:
    """Convolution weights channels-last when the batches are (``data.channels_last``).

    NHWC batches into NCHW weights make every convolution convert layouts, forward and
    backward: on one core the 5-layer CNN's training step is about 1.4x faster with both
    channels-last (README, "Fast distillation"). Only 4-d tensors change, so MLPs are untouched;
    state dicts load either way.
    """
    if getattr(datamodule, "channels_last", False):
        net.to(memory_format=torch.channels_last)
    return net


def _teacher_store(cfg: DictConfig, teacher, datamodule):
    options = _store_options(cfg)
    if options is None:
        return None
    from kdlight.checkpoints import weights_hash
    from kdlight.data.augment import AUGMENT_VERSION
    from kdlight.io import key_hash
    from kdlight.store import TeacherLogitStore

    idx = datamodule.train_idx
    key = {
        "teacher": weights_hash(teacher),
        "data": datamodule.name,
        "fingerprint": datamodule.fingerprint(),
        "indices": key_hash({"idx": idx.tolist()}),
        "transform": datamodule.transform_key(),
        "augment_version": AUGMENT_VERSION,
        # float16 logits of one image can differ in the last bit with the batch that computed
        # them (batched kernels): what decides the bytes is part of the key
        "fill": {
            "dtype": options["dtype"],
            "batch_size": options["batch_size"],
            "channels_last": bool(getattr(datamodule, "channels_last", False)),
        },
    }
    root = Path(hydra.utils.to_absolute_path(cfg.paths.store_dir)) / "logits"
    return TeacherLogitStore(
        root,
        key,
        num_samples=int(idx.numel()),
        num_classes=datamodule.num_classes,
        **options,
    )


# ---- checks before any work: values that cannot train, misspelled keys, resume mistakes ------


def _value(cfg: DictConfig, key: str) -> Any:
    return OmegaConf.select(cfg, key, default=None)


def _check_int(cfg: DictConfig, key: str, low: int, what: str, allow_none: bool = False) -> None:
    v = _value(cfg, key)
    if v is None and allow_none:
        return
    if isinstance(v, bool) or not isinstance(v, int) or v < low:
        raise ConfigError(f"{key}={v} is invalid; it must be {what}.")


def _check_lr(cfg: DictConfig, key: str) -> None:
    v = _value(cfg, key)
    if v is None:
        return
    if isinstance(v, bool) or not isinstance(v, int | float) or not v > 0:
        raise ConfigError(f"{key}={v} is invalid; the learning rate must be a number > 0.")


def _check_max_epochs(cfg: DictConfig, key: str) -> None:
    v = _value(cfg, key)
    if v is None:
        return
    if isinstance(v, bool) or not isinstance(v, int) or v == 0 or v < -1:
        raise ConfigError(
            f"{key}={v} is invalid; it must be an integer >= 1 (or -1: no limit), since 0 epochs "
            "would store an untrained network."
        )


def _trains_teacher(cfg: DictConfig) -> bool:
    return (
        cfg.get("distill") is not None
        and not cfg.get("teacher_ckpt")
        and cfg.get("teacher_train") is not None
    )


def check_values(cfg: DictConfig) -> None:
    """Refuse values that cannot train (wrong types too), in one sentence, before any work."""
    _check_int(cfg, "seed", 0, "an integer >= 0 (or null)", allow_none=True)
    _check_int(cfg, "data.batch_size", 1, "a positive integer")
    _check_int(cfg, "data.eval_batch_size", 1, "a positive integer", allow_none=True)
    _check_int(cfg, "data.val_size", 0, "an integer >= 0", allow_none=True)
    _check_int(cfg, "data.views", 1, "null (a fresh view per epoch) or an integer K >= 1", True)
    fraction = _value(cfg, "data.labeled_fraction")
    if fraction is not None and (
        isinstance(fraction, bool) or not isinstance(fraction, int | float)
    ):
        raise ConfigError(
            f"data.labeled_fraction={fraction} is invalid; it must be in (0, 1] (e.g. 0.05 for 5%)."
        )
    _check_lr(cfg, "module.optimizer.lr")
    fused_optimizer_setting(_value(cfg, "module.fused_optimizer"))
    _check_max_epochs(cfg, "trainer.max_epochs")
    if _trains_teacher(cfg):
        _check_max_epochs(cfg, "teacher_train.max_epochs")
        _check_lr(cfg, "teacher_train.optimizer.lr")
        _check_int(cfg, "teacher_train.seed", 0, "an integer >= 0")
    store_dir = _value(cfg, "paths.store_dir")
    if cfg.get("distill") is not None and store_dir:
        from hydra.utils import to_absolute_path

        folder = Path(to_absolute_path(str(store_dir)))
        blocker = next((p for p in (folder, *folder.parents) if p.exists()), None)
        if blocker is not None and not blocker.is_dir():
            raise ConfigError(
                f"paths.store_dir={store_dir} cannot hold the teacher store: {blocker} is a file, "
                "not a folder; set paths.store_dir (or KDLIGHT_STORE) to a folder."
            )
    if _value(cfg, "data.val_size") == 0:
        monitor = _value(cfg, "callbacks.model_checkpoint.monitor")
        if monitor and str(monitor).startswith("val/"):
            raise ConfigError(
                f"data.val_size=0 leaves no validation split, but the best checkpoint is chosen on "
                f"{monitor}; set data.val_size > 0 or callbacks.model_checkpoint.monitor=null."
            )
        if _trains_teacher(cfg):
            raise ConfigError(
                "data.val_size=0 leaves no validation split to choose the teacher's best epoch on; "
                "set data.val_size > 0 or give a trained teacher with teacher_ckpt."
            )


#: Nodes whose keys are the arguments of their ``_target_`` (misspellings are caught here).
_TARGET_NODES = (
    "data",
    "student",
    "teacher",
    "distill",
    "module.optimizer",
    "module.scheduler",
    "teacher_train.optimizer",
    "teacher_train.scheduler",
    "trainer",
)


def check_keys(cfg: DictConfig) -> None:
    """Refuse a key its node's ``_target_`` does not take (e.g. ``+data.bach_size=64``), naming the nearest valid one."""
    import difflib

    from hydra.utils import get_object

    for path in _TARGET_NODES:
        node = _value(cfg, path)
        if not isinstance(node, DictConfig) or not isinstance(node.get("_target_"), str):
            continue
        try:
            params = _accepted_arguments(get_object(node._target_))
        except Exception:  # noqa: BLE001 - an unknown target is reported where it is built
            continue
        if params is None:  # takes any **kwargs: nothing to check against
            continue
        valid = [n for n in params if n not in ("self", "args", "kwargs")]
        for key in node:
            if str(key).startswith("_") or key in params:
                continue
            near = difflib.get_close_matches(str(key), valid, n=1)
            hint = f"did you mean {path}.{near[0]}" if near else f"valid keys: {', '.join(valid)}"
            raise ConfigError(
                f"{path}.{key} is not a setting of {node._target_.rsplit('.', 1)[-1]} ({hint}?); "
                "remove it or fix its spelling."
            )


def _accepted_arguments(target) -> dict[str, Any] | None:
    """The keyword arguments ``target`` takes, following ``**kwargs`` up a class's bases; None
    when it takes any."""
    import inspect

    if not inspect.isclass(target):
        params = inspect.signature(target).parameters
        kinds = {p.kind for p in params.values()}
        return None if inspect.Parameter.VAR_KEYWORD in kinds else dict(params)
    found: dict[str, Any] = {}
    for cls in target.__mro__:
        init = cls.__dict__.get("__init__")
        if init is None:
            continue
        if cls is object:
            return None
        params = inspect.signature(init).parameters
        found.update({k: v for k, v in params.items() if v.kind is not v.VAR_KEYWORD})
        if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
            return found
    return None


def check_resume(cfg: DictConfig, out: Path) -> None:
    """``ckpt_path`` (resume) must name a weights-only Lightning checkpoint of this experiment
    and architecture; ``ckpt_path=last`` needs one in the run folder. One sentence, before any work."""
    ckpt = cfg.get("ckpt_path")
    if not ckpt:
        return
    from hydra.utils import to_absolute_path

    from kdlight.checkpoints import load_checkpoint_file
    from kdlight.errors import CheckpointError

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
    blob = load_checkpoint_file(path)  # weights-only and bounded: refuses in one sentence
    state = blob.get("state_dict") if isinstance(blob, dict) else None
    if not isinstance(state, dict) or "pytorch-lightning_version" not in blob:
        raise CheckpointError(
            f"ckpt_path={ckpt} names {path}, which is not a checkpoint written by kdlight.train "
            "(no Lightning training state); give a teacher's weights as teacher_ckpt instead."
        )
    import json

    run_dir = path.parent.parent if path.parent.name == "checkpoints" else path.parent
    try:
        previous = json.loads((run_dir / "metrics.json").read_text()).get("hparams", {})
    except (OSError, ValueError, AttributeError):
        previous = {}
    name = cfg.get("name")
    if previous.get("experiment") not in (None, name):
        raise CheckpointError(
            f"checkpoint {path} belongs to experiment {previous['experiment']}, not {name}; "
            f"resume it with +experiment={previous['experiment']} or drop ckpt_path."
        )
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


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
@user_errors_exit
def main(cfg: DictConfig) -> float | None:
    """Hydra entry point; returns the validation-best accuracy (for Hydra sweepers)."""
    if cfg.get("print_config", False):
        log.info("config:\n%s", OmegaConf.to_yaml(cfg, resolve=True))
    from kdlight.gpus import gpu_for_job

    with gpu_for_job(cfg):  # gpu_per_job=true: a parallel sweep job claims a free GPU
        metrics = run(cfg)
    return metrics.get("val/acc_best", metrics.get("test/acc_best"))


def misspelled_override(args: list[str], config_name: str = "train") -> str | None:
    """One sentence when a ``key=value`` override names a key the config does not have, else None.

    Hydra itself answers ``data.bach_size=3`` with a multi-line message suggesting
    ``+data.bach_size=3`` (which then fails inside the data module); this names the nearest
    valid key instead. Only dotted keys without ``+``/``~`` are checked, on the config composed
    from the other overrides (experiment, group choices); anything this cannot compose is left
    to Hydra's own report.
    """
    import difflib

    if any(a.startswith("-") and a not in ("-m", "--multirun") for a in args):
        return None  # --help, --cfg, --info, ...: Hydra's business
    overrides = [a for a in args if not a.startswith("-")]
    plain = [
        o
        for o in overrides
        if "=" in o
        and o[0] not in "+~"
        and "." in o.split("=", 1)[0]
        and not o.startswith("hydra.")
    ]
    if not plain:
        return None
    rest = [o for o in overrides if o not in plain and not o.startswith("hydra.")]
    # a sweep's choices (distill=kd,dkd): the first decides which keys exist well enough
    rest = [o.split(",", 1)[0] if "[" not in o else o for o in rest]
    try:
        from hydra import compose, initialize_config_dir

        with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
            cfg = compose(config_name=config_name, overrides=rest)
    except Exception:  # noqa: BLE001 - e.g. a user's searchpath: Hydra reports it
        return None
    for o in plain:
        key = o.split("=", 1)[0].lstrip("@")
        parts = key.split(".")
        node: Any = cfg
        for i, part in enumerate(parts):
            if not isinstance(node, DictConfig):
                break
            # keys(), not `in`: a mandatory value (???) is a setting too, though `in` says no
            if part not in node.keys():
                where = ".".join(parts[:i])
                near = difflib.get_close_matches(part, [str(k) for k in node.keys()], n=1)
                hint = (
                    f"did you mean {where + '.' if where else ''}{near[0]}?"
                    if near
                    else (
                        f"{where or 'the config'} has {', '.join(str(k) for k in list(node.keys())[:12])}"
                    )
                )
                return (
                    f"{key} is not a setting of this config ({hint}); fix its spelling, or add a "
                    f"new key with +{key}=..."
                )
            node = node._get_node(part)  # no value read: ??? raises on node[part]
    return None


def cli() -> None:
    """``kdlight-train`` / ``python -m kdlight.train``: a misspelled key is one sentence, exit 2."""
    import sys

    problem = misspelled_override(sys.argv[1:])
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        sys.exit(2)
    main()


__all__ = ["main", "cli", "run", "hparams_of", "check_config", "KdlightError"]

if __name__ == "__main__":
    cli()
