"""kdlight.gpus: parallel sweep jobs claim distinct GPUs and give them back."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from kdlight.errors import ConfigError
from kdlight.gpus import exclusive_gpu, gpu_for_job


def test_concurrent_claims_get_distinct_gpus_and_release_them(tmp_path):
    with exclusive_gpu(2, tmp_path, start=1) as first:
        with exclusive_gpu(2, tmp_path, start=1) as second:
            assert (first, second) == (1, 0)  # the preferred one was taken: the next free one
            with pytest.raises(TimeoutError, match="all 2 GPUs"):
                with exclusive_gpu(2, tmp_path, poll_s=0.01, timeout_s=0.05):
                    pass
        with exclusive_gpu(2, tmp_path, start=1) as again:
            assert again == 0  # released when the block ended


def test_no_gpu_claims_nothing(tmp_path):
    with exclusive_gpu(0, tmp_path) as index:
        assert index is None
    assert not list(tmp_path.iterdir())


def _cfg(**kw):
    trainer = {"accelerator": "auto", "devices": 1, **kw.pop("trainer", {})}
    return OmegaConf.create({"gpu_per_job": True, "trainer": trainer, **kw})


def test_gpu_for_job_pins_the_trainer_to_the_claimed_gpu(tmp_path, monkeypatch):
    monkeypatch.setenv("KDLIGHT_GPU_LOCK_DIR", str(tmp_path))
    cfg = _cfg()
    with gpu_for_job(cfg, n_gpus=4) as index:
        assert index == 0 and list(cfg.trainer.devices) == [0]
        other = _cfg()
        with gpu_for_job(other, n_gpus=4) as index2:
            assert index2 == 1 and list(other.trainer.devices) == [1]


def test_gpu_for_job_is_a_no_op_unless_asked_or_on_cpu(tmp_path, monkeypatch):
    monkeypatch.setenv("KDLIGHT_GPU_LOCK_DIR", str(tmp_path))
    for cfg in (_cfg(gpu_per_job=False), _cfg(trainer={"accelerator": "cpu"})):
        with gpu_for_job(cfg, n_gpus=4) as index:
            assert index is None and cfg.trainer.devices == 1


def test_gpu_for_job_refuses_multi_device_trainers(tmp_path, monkeypatch):
    monkeypatch.setenv("KDLIGHT_GPU_LOCK_DIR", str(tmp_path))
    with pytest.raises(ConfigError, match="trainer.devices=4"):
        with gpu_for_job(_cfg(trainer={"devices": 4, "strategy": "ddp"}), n_gpus=4):
            pass
