"""``kdlight.config.method_from_name``: a method's config composed with its defaults list."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from kdlight.config import CONFIG_DIR, method_from_name
from kdlight.errors import ConfigError


def test_a_config_with_defaults_gets_their_settings():
    """fitnets.yaml lists ``defaults: [kd, _self_]``: KD's alpha and T are its settings too."""
    kd = OmegaConf.load(f"{CONFIG_DIR}/distill/kd.yaml")
    method = method_from_name("fitnets", alpha=0.5, hint_epochs=3)
    assert method.alpha == 0.5 and method.hint_epochs == 3
    assert method.temperature == float(kd.temperature)


def test_an_unknown_setting_is_one_sentence_naming_the_valid_ones():
    with pytest.raises(ConfigError, match=r"method='fitnets' has no setting 'betta'; .*alpha"):
        method_from_name("fitnets", betta=1.0)
