"""train.misspelled_override: a misspelled key is named with its nearest valid key; a real
key is never refused, also when its value is mandatory (``???``) in the config."""

from __future__ import annotations

from kdlight.train import misspelled_override


def test_misspelled_key_names_the_nearest_one():
    msg = misspelled_override(["data=image_folder", "data.num_clases=5"])
    assert msg is not None
    assert "data.num_clases is not a setting" in msg and "did you mean data.num_classes?" in msg


def test_mandatory_keys_and_nested_keys_are_settings():
    # data=image_folder leaves num_classes mandatory (???): setting it is what the user must do
    assert misspelled_override(["data=image_folder", "data.num_classes=5"]) is None
    assert misspelled_override(["data=image_folder", "data.root=/x", "data.image_size=32"]) is None
    assert misspelled_override(["+experiment=fmnist_mlp_kd", "distill.alpha=0.5"]) is None
