"""cli.train.misspelled_override: a misspelled key is named with its nearest valid key; a real
key is never refused, also when its value is mandatory (``???``) in the config. The teacher's
own trainer keys (``teacher_train.trainer``) are checked the same way."""

from __future__ import annotations

import pytest

from kdlight.cli.train import misspelled_override, without_method
from kdlight.config import compose
from kdlight.errors import ConfigError
from kdlight.run.checks import check_config


def test_misspelled_key_names_the_nearest_one():
    msg = misspelled_override(["data=image_folder", "data.num_clases=5"])
    assert msg is not None
    assert "data.num_clases is not a setting" in msg and "did you mean data.num_classes?" in msg


def test_mandatory_keys_and_nested_keys_are_settings():
    # data=image_folder leaves num_classes mandatory (???): setting it is what the user must do
    assert misspelled_override(["data=image_folder", "data.num_classes=5"]) is None
    assert misspelled_override(["data=image_folder", "data.root=/x", "data.image_size=32"]) is None
    assert misspelled_override(["+experiment=fmnist_mlp_kd", "distill.alpha=0.5"]) is None


def test_the_teachers_own_trainer_keys_are_checked(make_cfg):
    check_config(make_cfg("distill=kd", "+teacher_train.trainer.limit_train_batches=2"))
    typo = make_cfg("distill=kd", "+teacher_train.trainer.limit_trian_batches=2")
    with pytest.raises(ConfigError, match="did you mean teacher_train.trainer.limit_train_batches"):
        check_config(typo)
    epochs = make_cfg("distill=kd", "+teacher_train.trainer.max_epochs=3")
    with pytest.raises(ConfigError, match="set teacher_train.max_epochs"):
        check_config(epochs)
    devices = make_cfg("distill=kd", "+teacher_train.trainer.devices=2")
    with pytest.raises(ConfigError, match="teacher_train.trainer.devices is set by kdlight"):
        check_config(devices)


@pytest.mark.parametrize("experiment", ["cifar_cnn_5pct_cpu", "cifar_resnet20_vit_kd_cpu"])
def test_distill_null_trains_the_student_alone(experiment):
    # the README's distill=null: Hydra refuses null for a config group, and an experiment that
    # picks a method (override /distill: deit) can only lose it by deletion
    args = without_method([f"+experiment={experiment}", "distill=null", "seed=2"])
    assert args == [f"+experiment={experiment}", "~distill", "seed=2"]
    cfg = compose(args)
    assert cfg.get("distill") is None and cfg.seed == 2
    assert without_method(["distill=kd", "distill.alpha=0.5"]) == [
        "distill=kd",
        "distill.alpha=0.5",
    ]
