"""kdlight's configs: where they ship (package data) and one way to compose them in Python.

``CONFIG_DIR`` is ``src/kdlight/conf`` inside the installed package, so an installed wheel
finds its configs from any directory; :func:`compose` gives the config ``python -m
kdlight.train`` would run (without Hydra's run folder).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

CONFIG_DIR = str(Path(__file__).resolve().parent / "conf")


def compose(overrides: Sequence[str] = (), config_name: str = "train") -> DictConfig:
    """The config ``config_name`` with ``overrides`` (``+experiment=NAME``, ``data.batch_size=64``, ...)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return hydra_compose(config_name=config_name, overrides=list(overrides))


def method_from_name(name: str, **hparams: Any):
    """The method ``distill=name`` builds, with ``hparams`` over its config's defaults.

    ``method_from_name("kd", alpha=0.5)`` is what ``distill=kd distill.alpha=0.5`` trains with:
    the defaults are those of ``conf/distill/<name>.yaml``.
    """
    from kdlight.errors import ConfigError
    from kdlight.run.checks import instantiate_method

    group = Path(CONFIG_DIR) / "distill"
    names = sorted(p.stem for p in group.glob("*.yaml"))
    if name not in names:
        raise ConfigError(
            f"method={name!r} is not a kdlight method; valid names are {', '.join(names)}."
        )
    node = _load_with_defaults(group, name)
    unknown = sorted(set(hparams) - set(node.keys()))
    if unknown:
        valid = ", ".join(k for k in node if k != "_target_")
        raise ConfigError(
            f"method={name!r} has no setting {unknown[0]!r}; its settings are {valid}."
        )
    return instantiate_method(OmegaConf.merge(node, hparams))


def _load_with_defaults(group: Path, name: str, seen: tuple[str, ...] = ()):
    """``group/<name>.yaml`` with its ``defaults`` list (other files of the group) merged in as
    Hydra composes it: each default in order, then the file itself where ``_self_`` stands
    (last when it is not listed)."""
    if name in seen:
        raise ValueError(f"{group}/{name}.yaml: its defaults list includes itself")
    node = OmegaConf.load(group / f"{name}.yaml")
    defaults = node.pop("defaults", None) if "defaults" in node else None
    if not defaults:
        return node
    entries = [str(d) for d in defaults]
    if "_self_" not in entries:
        entries.append("_self_")
    merged = OmegaConf.create({})
    for entry in entries:
        part = node if entry == "_self_" else _load_with_defaults(group, entry, (*seen, name))
        merged = OmegaConf.merge(merged, part)
    return merged


__all__ = ["CONFIG_DIR", "compose", "method_from_name"]
