"""Seeded, stratified index subsets: validation split and labeled fractions."""

from __future__ import annotations

import logging

import torch

from kdlight.errors import ConfigError

log = logging.getLogger(__name__)


def stratified_sample(labels: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """Return ``n`` sorted positions into ``labels``, class counts proportional to the classes'.

    Per-class quotas use the largest-remainder method so they sum to exactly ``n``; which
    samples of a class are taken depends only on ``seed``. Pure: same inputs, same output.
    """
    total = int(labels.numel())
    if not 0 <= n <= total:
        raise ConfigError(f"cannot take {n} samples out of {total}; n must be in [0, {total}].")
    classes, counts = torch.unique(labels, return_counts=True)
    exact = counts.double() * n / total
    quota = exact.floor().long()
    short = n - int(quota.sum())
    if short:
        # ties broken by class order so the result stays deterministic
        order = torch.argsort(exact - quota.double(), descending=True, stable=True)
        quota[order[:short]] += 1
    gen = torch.Generator().manual_seed(int(seed))
    chosen = []
    for cls, k in zip(classes.tolist(), quota.tolist(), strict=True):
        members = torch.nonzero(labels == cls, as_tuple=False).flatten()
        perm = torch.randperm(members.numel(), generator=gen)
        chosen.append(members[perm[:k]])
    return torch.sort(torch.cat(chosen)).values if chosen else torch.zeros(0, dtype=torch.long)


def split_train_val(
    labels: torch.Tensor, val_size: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Hold ``val_size`` samples out of the training set, stratified: ``(train_idx, val_idx)``."""
    n = int(labels.numel())
    if not 0 <= int(val_size) < n:
        raise ConfigError(
            f"data.val_size={val_size} is invalid; it must be in [0, {n - 1}] for {n} training samples."
        )
    val = stratified_sample(labels, int(val_size), seed)
    keep = torch.ones(n, dtype=torch.bool)
    keep[val] = False
    return torch.nonzero(keep, as_tuple=False).flatten(), val


def labeled_subset(
    indices: torch.Tensor, labels: torch.Tensor, fraction: float, seed: int
) -> torch.Tensor:
    """Keep ``round(fraction * len(indices))`` of ``indices`` (positions into ``labels``), stratified."""
    check_fraction(fraction)
    if fraction == 1.0:
        return indices
    n = max(1, round(float(fraction) * indices.numel()))
    pool = labels[indices]
    picked = stratified_sample(pool, n, seed + 1)
    missing = sorted(set(pool.unique().tolist()) - set(pool[picked].unique().tolist()))
    if missing:
        classes = int(pool.unique().numel())
        # a user may mean it (e.g. a tiny smoke-test set): one line, not an error
        log.warning(
            f"data.labeled_fraction={fraction} keeps {n} of {indices.numel()} training samples, "
            f"which leaves class {missing[0]}{f' and {len(missing) - 1} more' if len(missing) > 1 else ''} "
            "without any; raise it "
            f"to at least {classes / indices.numel():.3g} or use more data."
        )
    return indices[picked]


def class_interleaved(indices: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``indices`` reordered so that every prefix holds the classes in proportion (evaluation order).

    The k-th of a class's ``n_c`` members (in ``indices`` order) sits at ``(k + 0.5) / n_c``;
    ties go to the lower class. A limited evaluation (``trainer.limit_val_batches``) of a
    class-sorted split then still sees every class; the full set is the same set, so its
    metrics do not change. Pure: no seed, no state.
    """
    if indices.numel() == 0:
        return indices
    y = labels[indices]
    classes, inverse, counts = torch.unique(y, return_inverse=True, return_counts=True)
    by_class = torch.argsort(inverse, stable=True)
    rank = torch.empty_like(by_class)
    starts = torch.cumsum(counts, 0) - counts
    rank[by_class] = torch.arange(indices.numel()) - starts.repeat_interleave(counts)
    position = (rank.double() + 0.5) / counts[inverse].double()
    order = torch.argsort(inverse, stable=True)  # ties: lower class first
    order = order[torch.argsort(position[order], stable=True)]
    return indices[order]


def check_fraction(fraction: float) -> None:
    """Raise :class:`ConfigError` unless 0 < fraction <= 1."""
    if not 0.0 < float(fraction) <= 1.0:
        raise ConfigError(
            f"data.labeled_fraction={fraction} is invalid; it must be in (0, 1] (e.g. 0.05 for 5%)."
        )
