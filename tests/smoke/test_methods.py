"""Every ``distill=`` choice end to end on tiny CPU data: it runs, and the store changes nothing."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from kdlight.run.train import run
from tests.helpers.overrides import CONF_DIR
from tests.smoke import recorder

#: (experiment, overrides) per method; default: the Fashion-MNIST MLP KD experiment. Methods
#: on spatial maps run the CPU CIFAR experiment (ResNet-20 teacher, 5-layer CNN student).
CNN = "+experiment=cifar_cnn_kd_5pct_cpu"
MLP = "+experiment=fmnist_mlp_kd"
VIT_S = ("student.embed_dim=32", "student.depth=2")  # the smallest ViT students
VIT_T = ("teacher.embed_dim=48", "teacher.depth=2")
SETUP = {
    "data_free": (MLP, "distill.alpha=1.0"),  # its transfer set has no labels
    "at": (CNN,),
    "nst": (CNN,),
    "vid": (CNN,),
    "reviewkd": (CNN,),
    "crd": (MLP, "distill.nce_k=64"),  # a tiny bank: the tiny training set has ~250 rows
    "ab": (CNN,),
    "ft": (CNN,),
    "ofd": (CNN,),
    "fsp": (CNN, "model@student=resnet8"),  # FSP matrices need equal channels: ResNet-8 vs -20
    "kdsvd": (CNN, "model@student=resnet8"),  # equal channels, as FSP
    "sdd": (CNN, "model@student=resnet8"),  # its classifier must read the pooled last map
    "simkd": (CNN,),  # the projector on the final feature maps (an MLP's flat ones run too)
    # ViT methods (tests/unit/test_methods3_vit.py): width-32, depth-2 ViTs keep them fast
    "deit": ("+experiment=cifar_resnet20_vit_kd_cpu", *VIT_S),
    "ofa": ("+experiment=cifar_resnet20_vit_kd_cpu", *VIT_S),
    "vitkd": ("+experiment=cifar_vit_kd_cpu", *VIT_S, *VIT_T),
}


def setup_of(method: str) -> tuple[str, ...]:
    """The overrides that run ``method``: its experiment, the method, then its settings."""
    experiment, *settings = SETUP.get(method, (MLP,))
    return (experiment, f"distill={method}", *settings)


METHODS = sorted(p.stem for p in (Path(CONF_DIR) / "distill").glob("*.yaml"))
RECORD = [
    "+callbacks.recorder._target_=tests.smoke.recorder.LossRecorder",
    "trainer.log_every_n_steps=1",
]


@pytest.mark.parametrize("method", METHODS)
def test_every_method_runs(method, make_cfg):
    metrics = run(
        make_cfg(
            *setup_of(method),
            "+trainer.fast_dev_run=true",
        )
    )
    assert metrics["status"] == "finished"
    assert metrics["hparams"]["method"] == method
    assert 0.0 <= metrics["test/acc_last"] <= 1.0


def _losses(make_cfg, *overrides, store_dir):
    recorder.RECORDS.clear()
    run(
        make_cfg(
            *overrides, *RECORD, "+trainer.max_steps=4", "trainer.max_epochs=4", store_dir=store_dir
        )
    )
    return [{k: v for k, v in r.items() if k != "train/acc"} for r in recorder.RECORDS]


@pytest.mark.parametrize("method", [m for m in METHODS if m != "data_free"])
def test_store_served_runs_equal_online_runs_step_by_step(method, make_cfg, tmp_path):
    store = tmp_path / "shared-store"
    common = (
        *setup_of(method),
        "seed=3",
        "teacher_store.dtype=float32",
    )
    online = _losses(make_cfg, *common, "teacher_store.enabled=false", store_dir=store)
    served = _losses(make_cfg, *common, "teacher_store.enabled=true", store_dir=store)
    assert len(online) == len(served) == 4
    # The store promises the teacher's outputs on the same inputs to float32 rounding of the
    # teacher forward (tests/unit/test_store_exactness.py), not bit-identical ones: eval-sized
    # and training-sized batches may round differently (AVX-512: logits ~1e-6 apart). A loss term
    # is smooth in the teacher logits, with a gradient of order T * |log p_t - log p_s| <= ~1e2
    # here, so a 1e-6 logit difference moves a term by <~1e-4 relatively or a few 1e-6 absolutely
    # (small KD terms are differences of nearly equal numbers, so only the absolute part holds
    # for them; seen on AVX-512: 0.0025678 vs 0.0025671), compounded over 4 steps. A row served
    # from another sample changes a term by its own size (>= 1e-3 here).
    for a, b in zip(online, served, strict=True):
        assert a.keys() == b.keys() and "train/loss" in a
        assert b == pytest.approx(a, rel=1e-4, abs=2e-5)
    # the feature methods were served their teacher forms from the store, not online
    forms = {t for t in stored_tables(store) if t != "logits"}
    if method in FORMS:
        assert forms and all(t.split("/")[1].startswith(FORMS[method]) for t in forms), forms
    else:
        assert not forms


#: what the teacher store keeps of each feature method's teacher layers (form name, or its start)
FORMS = {
    "at": "attention_p2_",
    **dict.fromkeys(("pkt", "rkd", "cc", "crd"), "embedding"),
    **dict.fromkeys(("fitnets", "nst", "sp", "vid", "reviewkd"), "raw"),
    **dict.fromkeys(("ab", "fsp", "ft", "ofd"), "raw"),
    "kdsvd": "svd_k1",
    "vitkd": "patch_tokens_skip1",
    "kdpp": "embedding",
    "sdd": "sdd_logits_1_2_4",
    "simkd": "raw",  # the teacher's final map
}


def stored_tables(store: Path) -> set[str]:
    """The tables (``logits`` or ``<teacher layer>/<form>``) of every valid-looking view file."""
    metas = (json.loads(p.read_text()) for p in store.glob("logits/*/view_*.json"))
    return {m.get("table", "logits") for m in metas}


@pytest.mark.parametrize("method", ["kd", "at"])
def test_a_store_in_many_shards_serves_what_the_online_teacher_gives(method, make_cfg, tmp_path):
    store = tmp_path / "shared-store"
    common = (*setup_of(method), "seed=3", "teacher_store.dtype=float32")
    online = _losses(make_cfg, *common, "teacher_store.enabled=false", store_dir=store)
    served = _losses(make_cfg, *common, "teacher_store.shard_rows=5", store_dir=store)
    assert len(list(store.glob("logits/*/view_0*.shard00001.npy"))) >= 1  # several shards
    # float32 teacher outputs computed in 5-row pieces round differently from the online batch's
    # on some CPUs (AVX2 only: 6e-6 on a KD term of 0.0087 after 4 steps); a row served from the
    # wrong shard or place would be off by the size of the loss itself
    for a, b in zip(online, served, strict=True):
        assert b == pytest.approx(a, rel=1e-4, abs=2e-5)


@pytest.mark.parametrize("method", ["at", "pkt", "vid"])
def test_float16_forms_are_served_within_float16_rounding(method, make_cfg, tmp_path):
    # the default store dtype: the teacher's forms rounded to float16 (relative error <= 2^-11),
    # so the first steps' losses agree to a few float16 ulps, not exactly
    store = tmp_path / "shared-store"
    common = (*setup_of(method), "seed=3", "teacher_store.dtype=float16")
    online = _losses(make_cfg, *common, "teacher_store.enabled=false", store_dir=store)
    served = _losses(make_cfg, *common, "teacher_store.enabled=true", store_dir=store)
    assert {t for t in stored_tables(store) if t != "logits"}
    for a, b in zip(online[:2], served[:2], strict=True):
        assert b == pytest.approx(a, rel=4 * 2**-11, abs=1e-6)


def test_feature_tables_over_max_gb_run_the_teacher_online(make_cfg, tmp_path, caplog):
    store = tmp_path / "shared-store"
    common = (*setup_of("nst"), "seed=3", "teacher_store.dtype=float32")
    online = _losses(make_cfg, *common, "teacher_store.enabled=false", store_dir=store)
    with caplog.at_level(logging.INFO, logger="kdlight.engine"):
        capped = _losses(make_cfg, *common, "teacher_store.max_gb=0", store_dir=store)
    assert stored_tables(store) == set()  # the teacher ran online, giving the logits too
    assert "teacher_store.max_gb=0, so the teacher runs online" in caplog.text
    for a, b in zip(online, capped, strict=True):
        assert b == pytest.approx(a, rel=1e-5, abs=1e-7)


def test_teacher_ensemble_from_several_checkpoints(make_cfg, tmp_path):
    import torch
    from hydra.utils import instantiate

    paths = []
    for seed in (0, 1):
        cfg = make_cfg("+experiment=fmnist_mlp_kd")
        torch.manual_seed(seed)
        net = instantiate(cfg.teacher)
        paths.append(tmp_path / f"teacher{seed}.pt")
        torch.save(net.state_dict(), paths[-1])
    listed = "[" + ",".join(str(p) for p in paths) + "]"
    metrics = run(
        make_cfg(
            "+experiment=fmnist_mlp_kd", f"teacher_ckpt={listed}", "teacher_store.enabled=true",
            "+trainer.limit_train_batches=2", "+trainer.limit_val_batches=1",
        )
    )  # fmt: skip
    assert metrics["status"] == "finished"
    assert metrics["teacher/source"] == f"{paths[0]} + {paths[1]}"
    assert metrics["hparams"]["teacher"] == "ensemble(MLP-1200-1200,MLP-1200-1200)"
    assert len(list((tmp_path / "store" / "logits").glob("*/view_0.npy"))) == 1  # stored once
