"""Student networks and stage-two losses."""

from __future__ import annotations

import pytest
import torch

from uniskel.core.errors import UniError
from uniskel.student.config import MODEL_SIZES
from uniskel.student.losses import heatmap_kl, heatmap_mse, kd_weight_at, total_loss
from uniskel.student.models import MODELS, build_model, count_parameters
from uniskel.student.rtmpose import RTMPOSE_ARCHS


@pytest.mark.parametrize("name,lo,hi", [("tiny", 0.8e6, 1.3e6), ("small", 4e6, 6e6),
                                        ("base", 12e6, 25e6)])
def test_sizes_and_output_shape(name, lo, hi):
    model = build_model(name)
    assert lo <= count_parameters(model) <= hi
    with torch.no_grad():
        assert model.eval()(torch.zeros(1, 3, 256, 192)).shape == (1, 21, 64, 48)
        assert model(torch.zeros(2, 3, 64, 48)).shape == (2, 21, 16, 12)


def test_unknown_model():
    with pytest.raises(UniError, match="unknown model 'huge'"):
        build_model("huge")
    # The config offers (and --model lists) exactly the models there are, torch-free.
    assert MODEL_SIZES == (*MODELS, *RTMPOSE_ARCHS)


def _blob(x: float, y: float, h: int = 16, w: int = 12) -> torch.Tensor:
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    return torch.exp(-((xs - x) ** 2 + (ys - y) ** 2) / 8.0)


def test_kl_is_zero_on_agreement_and_grows_with_distance():
    t = _blob(5, 7)[None, None]
    ones = torch.ones(1, 1, 16, 12)
    w = torch.ones(1, 1)
    assert heatmap_kl(t, t, w, ones).abs() < 1e-5
    near, far = (heatmap_kl(_blob(x, 7)[None, None], t, w, ones) for x in (6, 9))
    assert 0 < near < far


def test_kl_ignores_pixels_outside_the_mask_and_zero_weights():
    t = _blob(5, 7)[None, None]
    mask = torch.zeros(1, 1, 16, 12)
    mask[..., :, :8] = 1
    other = t.clone()
    other[..., :, 8:] += 5.0  # only outside the mask
    w = torch.ones(1, 1)
    assert heatmap_kl(other, t, w, mask).abs() < 1e-5
    assert heatmap_kl(other, t, w, torch.ones_like(mask)) > 0.1
    assert heatmap_kl(_blob(1, 1)[None, None], t, torch.zeros(1, 1), mask) == 0
    assert heatmap_mse(other, t, w, mask).abs() < 1e-6


def test_total_loss_weights_and_decay():
    torch.manual_seed(0)
    pred = torch.rand(2, 21, 16, 12)
    batch = {"gt_heatmaps": torch.rand(2, 21, 16, 12), "gt_weights": torch.ones(2, 21),
             "kd_targets": torch.rand(2, 2, 21, 16, 12), "kd_masks": torch.ones(2, 2, 1, 16, 12),
             "kd_weights": torch.ones(2, 2, 21)}
    kw = dict(gt_weight=0.3, kd_weights={"a": 0.25, "b": 0.45},
              kd_decays={"a": "none", "b": "linear"})
    start, terms = total_loss(pred, batch, ["a", "b"], progress=0.0, **kw)
    end, _ = total_loss(pred, batch, ["a", "b"], progress=1.0, **kw)
    assert start == pytest.approx(0.3 * terms["gt"] + 0.25 * terms["kd/a"] + 0.45 * terms["kd/b"],
                                  rel=1e-5)
    assert end == pytest.approx(0.3 * terms["gt"] + 0.25 * terms["kd/a"], rel=1e-5)
    assert kd_weight_at(0.45, "linear", 0.5) == pytest.approx(0.225)
