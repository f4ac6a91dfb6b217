import torch

from kdlight.data.datasets.mnist import MNISTDataModule


def _dm(data_dir, **kw):
    dm = MNISTDataModule(
        name="fashion_mnist",
        data_dir=str(data_dir),
        download=False,
        val_size=50,
        batch_size=32,
        **kw,
    )
    dm.setup()
    return dm


def test_splits_are_disjoint_and_fraction_applies(tiny_data_dir):
    dm = _dm(tiny_data_dir, labeled_fraction=0.5)
    assert dm.val_idx.numel() == 50
    assert dm.train_idx.numel() == 125  # half of the 250 left after validation
    assert set(dm.train_idx.tolist()).isdisjoint(dm.val_idx.tolist())


def test_batches_are_normalised_floats_with_labels(tiny_data_dir):
    dm = _dm(tiny_data_dir)
    batch = next(iter(dm.train_dataloader()))
    assert batch["x"].dtype == torch.uint8 and batch["x"].shape == (32, 1, 28, 28)
    out = dm.on_after_batch_transfer(batch, 0)
    assert out["x"].dtype == torch.float32
    assert torch.equal(out["y"], dm.arrays.train_y[out["idx"]])


def test_unlabeled_training_batches_carry_no_labels(tiny_data_dir):
    dm = _dm(tiny_data_dir, unlabeled=True)
    for batch in dm.train_dataloader():
        assert "y" not in batch
    assert "y" in next(iter(dm.val_dataloader()))
    assert "y" in next(iter(dm.test_dataloader()))


def test_cifar_channels_last_is_the_default_and_changes_only_the_layout(tiny_data_dir, make_cfg):
    from hydra.utils import instantiate

    cfg = make_cfg("+experiment=cifar_cnn")
    # faster convolutions on CPU and GPU (conf/data/cifar10.yaml)
    assert cfg.data.channels_last is True
    nhwc = instantiate(cfg.data)
    nchw = instantiate(cfg.data, channels_last=False)
    for dm in (nhwc, nchw):
        dm.setup()
    idx = nhwc.train_idx[:8]
    a = nhwc.view_batch(idx, view=3)
    b = nchw.view_batch(idx, view=3)
    assert a.is_contiguous(memory_format=torch.channels_last) and not b.is_contiguous(
        memory_format=torch.channels_last
    )
    assert torch.equal(a, b)


def test_a_batch_holds_the_rows_of_its_indices_and_moves_as_one_dict(tiny_data_dir):
    dm = _dm(tiny_data_dir)
    batch = next(iter(dm.train_dataloader()))
    for i, row in enumerate(batch["idx"].tolist()):
        assert torch.equal(batch["x"][i], dm.arrays.train_x[row])
        assert int(batch["y"][i]) == int(dm.arrays.train_y[row])
    moved = dm.transfer_batch_to_device(batch, torch.device("cpu"), 0)
    assert moved.keys() == batch.keys() and moved["split"] == "train"
    assert all(moved[k] is batch[k] for k in ("idx", "x", "y"))  # already there: not copied
    other = dm.transfer_batch_to_device([batch["x"], "a"], torch.device("cpu"), 0)
    assert torch.equal(other[0], batch["x"]) and other[1] == "a"  # any other batch: Lightning's way
    nested = dict(batch, extra=[batch["x"]])  # not flat: Lightning's walk moves what it holds
    assert torch.equal(
        dm.transfer_batch_to_device(nested, torch.device("cpu"), 0)["extra"][0], batch["x"]
    )


def test_drop_last_drops_only_the_last_smaller_training_batch(tiny_data_dir):
    # 250 training samples, batch 32: 7 full batches + 26
    keep, drop = _dm(tiny_data_dir), _dm(tiny_data_dir, drop_last=True)
    assert [len(b["idx"]) for b in keep.train_dataloader()][-1] == 26
    sizes = [len(b["idx"]) for b in drop.train_dataloader()]
    assert sizes == [32] * 7
    # evaluation keeps every sample
    assert sum(len(b["idx"]) for b in drop.val_dataloader()) == 50


def test_drop_last_that_would_drop_everything_is_one_sentence(tiny_data_dir):
    import pytest

    from kdlight.errors import DataError

    dm = _dm(tiny_data_dir, drop_last=True, labeled_fraction=0.1)  # 25 samples < batch 32
    with pytest.raises(DataError, match=r"data.drop_last=true would drop every training batch.*25"):
        dm.train_dataloader()


def test_every_data_config_takes_drop_last(make_cfg):
    for data in (
        "cifar10",
        "cifar100",
        "fmnist",
        "mnist",
        "image_folder",
        "imagenet",
        "tiny_imagenet",
    ):
        cfg = make_cfg("+experiment=cifar_cnn", f"data={data}")
        assert cfg.data.drop_last is False, data
