import pytest
import torch

from kdlight.data.subsets import labeled_subset, split_train_val, stratified_sample
from kdlight.errors import ConfigError


def _labels(per_class=(100, 100, 50, 250)):
    return torch.cat([torch.full((n,), c) for c, n in enumerate(per_class)])[
        torch.randperm(sum(per_class), generator=torch.Generator().manual_seed(0))
    ]


def test_stratified_sample_exact_count_and_proportions():
    y = _labels()
    idx = stratified_sample(y, 50, seed=3)
    assert idx.numel() == 50 and idx.unique().numel() == 50
    counts = torch.bincount(y[idx], minlength=4).tolist()
    assert counts == [10, 10, 5, 25]


def test_reproducible_and_seed_dependent():
    y = _labels()
    assert torch.equal(stratified_sample(y, 40, 1), stratified_sample(y, 40, 1))
    assert not torch.equal(stratified_sample(y, 40, 1), stratified_sample(y, 40, 2))


def test_split_train_val_disjoint_and_complete():
    y = _labels()
    train, val = split_train_val(y, 100, seed=0)
    assert val.numel() == 100 and train.numel() == 400
    assert set(train.tolist()).isdisjoint(val.tolist())
    assert sorted(train.tolist() + val.tolist()) == list(range(500))


def test_labeled_fraction_five_percent_is_class_balanced():
    y = torch.arange(10).repeat_interleave(450)  # 4,500 samples, 450 per class
    pool = torch.arange(y.numel())
    sub = labeled_subset(pool, y, 0.05, seed=0)
    assert sub.numel() == 225
    # 22.5 per class: the largest-remainder quotas give five classes 22 and five 23
    assert sorted(torch.bincount(y[sub], minlength=10).tolist()) == [22] * 5 + [23] * 5
    assert torch.equal(sub, labeled_subset(pool, y, 0.05, seed=0))


def test_fraction_one_keeps_everything():
    y = _labels()
    pool = torch.arange(300)
    assert torch.equal(labeled_subset(pool, y, 1.0, 0), pool)


@pytest.mark.parametrize("fraction", [0.0, -0.1, 1.5])
def test_bad_fraction(fraction):
    with pytest.raises(ConfigError, match=f"labeled_fraction={fraction}"):
        labeled_subset(torch.arange(10), torch.zeros(10, dtype=torch.long), fraction, 0)


def test_bad_val_size():
    with pytest.raises(ConfigError, match="val_size=600"):
        split_train_val(_labels(), 600, 0)
