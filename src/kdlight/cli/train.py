"""``kdlight-train`` / ``python -m kdlight.train +experiment=NAME [overrides]``: parse, run, exit code.

A misspelled override is one sentence and exit 2 before Hydra starts; a user error during the
run (:class:`~kdlight.errors.KdlightError`) is ``error: <sentence>`` and exit 2
(:func:`~kdlight.errors.user_errors_exit`); in a sweep it is that one line and the sweep goes
on (its end prints the ranking and exits 1, :class:`~kdlight.cli.console.SweepSummary`). The
console is quiet unless ``verbose=true`` (:mod:`kdlight.cli.console`); a run ends with its
rounded result and folder. The run itself is :func:`kdlight.run.train.run`.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from kdlight.config import CONFIG_DIR, compose
from kdlight.errors import user_errors_exit

log = logging.getLogger(__name__)


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
@user_errors_exit
def main(cfg: DictConfig) -> float | None:
    """Hydra entry point; returns the validation-best accuracy (for Hydra sweepers; NaN: failed)."""
    from kdlight.cli.console import failed_job_line, quiet_console, run_summary
    from kdlight.errors import find_user_error, in_multirun

    quiet_console(cfg)
    if cfg.get("print_config", False):
        log.info("config:\n%s", OmegaConf.to_yaml(cfg, resolve=True))
    from kdlight.gpus import gpu_for_job
    from kdlight.run.train import objective, run

    try:
        with gpu_for_job(cfg):  # gpu_per_job=true: a parallel sweep job claims a free GPU
            record = run(cfg)
    except Exception as exc:
        user = find_user_error(exc)
        if user is None or not in_multirun():
            raise
        # one line, not Hydra's traceback, and the sweep's other jobs run; the run's record says
        # "failed" (the report lists it), a sweeper reads NaN as a failed trial
        from hydra.core.hydra_config import HydraConfig

        print(failed_job_line(user, HydraConfig.get().job.num), file=sys.stderr, flush=True)
        return float("nan")
    for line in run_summary(record, cfg.paths.output_dir):
        log.info(line)
    return objective(record)


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
        cfg = compose(rest, config_name)
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


#: ways of writing "no distillation method" on the command line
NO_METHOD = ("distill=null", "distill=none", "distill=None")


def without_method(args: list[str]) -> list[str]:
    """``args`` with ``distill=null`` written as Hydra's ``~distill`` (the student alone).

    Hydra refuses null as a config group's choice, and an experiment that picks a method
    (``override /distill: kd``) can only lose it by deletion; both spellings mean the same.
    """
    return ["~distill" if a in NO_METHOD else a for a in args]


def cli() -> None:
    """``kdlight-train`` / ``python -m kdlight.train``: a misspelled key is one sentence, exit 2."""
    sys.argv[1:] = without_method(sys.argv[1:])
    problem = misspelled_override(sys.argv[1:])
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        sys.exit(2)
    main()


__all__ = ["cli", "main", "misspelled_override", "without_method"]
