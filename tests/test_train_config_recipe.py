"""TrainConfig's recipes: RTMPose's values as the rtmpose models' defaults, resolved once."""

from __future__ import annotations

import pytest

from uniskel.core.errors import UniError
from uniskel.student.config import RECIPES, TrainConfig


def _cfg(**kw) -> TrainConfig:
    return TrainConfig(data=("coco:a.json",), out="run", **kw)


def test_rtmpose_models_default_to_the_rtmpose_recipe():
    c = _cfg(model="rtmpose-m")
    assert c.recipe == "rtmpose"
    for key, value in RECIPES["rtmpose"].items():
        assert getattr(c, key) == value
    assert (c.lr, c.weight_decay, c.schedule, c.augment, c.ema) == (
        4e-3, 0.05, "rtmpose", "rtmpose", True)
    assert c.decay_norm_bias is False
    # MMPose's rtmpose-t / -s configs: weight decay 0; -t without EMA.
    assert (_cfg(model="rtmpose-t").weight_decay, _cfg(model="rtmpose-t").ema) == (0.0, False)
    assert (_cfg(model="rtmpose-s").weight_decay, _cfg(model="rtmpose-s").ema) == (0.0, True)


def test_heatmap_nets_keep_uni_defaults_and_given_values_win():
    c = _cfg()
    assert (c.recipe, c.lr, c.weight_decay, c.augment, c.ema) == ("uni", 2e-3, 0.01, "mmpose",
                                                                  False)
    c = _cfg(model="rtmpose-s", lr=1e-3, ema=False, recipe="rtmpose")
    assert (c.lr, c.ema, c.weight_decay) == (1e-3, False, 0.0)
    c = _cfg(model="tiny", recipe="rtmpose")
    assert c.augment == "rtmpose"


def test_resolved_config_round_trips():
    c = _cfg(model="rtmpose-t", sample_ratio={"coco": 1, "aic": 0.3})
    again = TrainConfig.from_dict(c.to_dict())
    assert again == c
    assert again.sample_ratio == {"coco": 1.0, "aic": 0.3}


@pytest.mark.parametrize("kw,msg", [
    (dict(recipe="fast"), "recipe must be one of"),
    (dict(schedule="step"), "schedule must be one of"),
    (dict(augment="heavy"), "augment must be one of"),
    (dict(clip_grad=-1.0), "clip_grad and warmup_steps"),
    (dict(sample_ratio={"coco": 0}), "--sample-ratio coco: must be a positive number"),
    (dict(model="rtmpose-x"), "unknown model"),
])
def test_bad_values_are_one_line(kw, msg):
    with pytest.raises(UniError, match=msg):
        _cfg(**kw)
