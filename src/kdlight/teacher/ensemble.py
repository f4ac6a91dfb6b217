"""A teacher ensemble: several frozen teachers that teach as one.

``teacher_ckpt=[a.pt,b.pt]`` loads each checkpoint into the ``teacher`` model config (or into
the matching entry of ``teachers``, a list or mapping of model configs, for mixed
architectures). The ensemble's output is the log of the members' averaged probabilities,

    z_ens = log( (1/M) sum_m softmax(z_m) ),

so softmax(z_ens) is exactly the averaged soft target at T = 1 (and the ensemble's prediction
is the usual probability-averaging one); at T != 1 the student sees softmax(z_ens / T), the
averaged distribution sharpened or softened as a whole. Being one logit vector per sample, it
is stored once in the teacher store like a single teacher's logits.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict
from torch import nn

from kdlight.errors import ConfigError


class TeacherEnsemble(nn.Module):
    """``forward(x) = log(mean_m softmax(member_m(x)))``; see the module docstring."""

    def __init__(self, members: Sequence[nn.Module]) -> None:
        super().__init__()
        if len(members) < 2:
            raise ConfigError("a teacher ensemble needs at least two teachers.")
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        log_probs = torch.stack([torch.log_softmax(m(x).float(), dim=1) for m in self.members])
        return torch.logsumexp(log_probs, dim=0) - math.log(len(self.members))


def ckpt_list(cfg: DictConfig) -> list[str] | None:
    """``teacher_ckpt`` as a list when it names several files, else None."""
    ckpt = cfg.get("teacher_ckpt")
    if isinstance(ckpt, ListConfig | list | tuple) and len(ckpt) > 1:
        return [str(c) for c in ckpt]
    return None


def member_configs(cfg: DictConfig) -> list[DictConfig]:
    """One model config per checkpoint: the entries of ``teachers``, or ``teacher`` for each."""
    paths = ckpt_list(cfg) or []
    teachers = cfg.get("teachers")
    if teachers is None:
        return [cfg.teacher] * len(paths)
    nodes = list(teachers.values()) if isinstance(teachers, DictConfig) else list(teachers)
    if len(nodes) != len(paths):
        raise ConfigError(
            f"teachers names {len(nodes)} model configs but teacher_ckpt names {len(paths)} "
            "checkpoints; give one checkpoint per teacher, in the same order."
        )
    return nodes


def build_ensemble(
    cfg: DictConfig, datamodule, build_one: Callable[[DictConfig, Any], tuple[nn.Module, dict]]
) -> tuple[TeacherEnsemble, dict[str, Any]]:
    """Build each member with ``build_one`` (the single-teacher loader, with all its checks)."""
    members, sources = [], []
    for node, path in zip(member_configs(cfg), ckpt_list(cfg) or [], strict=True):
        sub = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
        with open_dict(sub):
            sub.teacher = OmegaConf.create(OmegaConf.to_container(node, resolve=True))
            sub.teacher_ckpt = path
            sub.teachers = None
        net, info = build_one(sub, datamodule)
        members.append(net)
        sources.append(str(info["source"]))
    ensemble = TeacherEnsemble(members).eval().requires_grad_(False)
    return ensemble, {"source": " + ".join(sources), "members": len(members)}


def ensemble_name(cfg: DictConfig, name_of: Callable[[DictConfig], str]) -> str | None:
    """A readable name for hparams and reports, e.g. ``ensemble(ResNet-56,WRN-40-2)``."""
    if ckpt_list(cfg) is None:
        return None
    return "ensemble(" + ",".join(name_of(n) for n in member_configs(cfg)) + ")"
