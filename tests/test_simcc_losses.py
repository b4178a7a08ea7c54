"""student.losses for SimCC students: MMPose's KLDiscretLoss (simcc_kl), the paper's KD from
cached teacher maps (simcc_kd), total_loss and validation_terms with (x, y) predictions."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from uniskel.core.errors import UniError
from uniskel.core.geometry import apply, compose, crop_affine, crop_to_heatmap
from uniskel.core.simcc import simcc_sigma
from uniskel.core.skeletons import SKELETONS, UNIFIED
from uniskel.pipeline.teachers import simcc_to_grid
from uniskel.student.data import teacher_targets
from uniskel.student.losses import (
    simcc_kd,
    simcc_kl,
    teacher_marginals,
    total_loss,
    validation_terms,
)

WH = (48, 64)  # input (w, h): 96 x-bins, 128 y-bins, a 12×16 teacher grid


def _kl_rows(pred: np.ndarray, target_logits: np.ndarray, beta: float) -> np.ndarray:
    """Hand formula, float64: Σ_bins softmax(t)·(log softmax(t) − log softmax(β·pred)) / bins."""
    def log_softmax(v):
        v = v - v.max(-1, keepdims=True)
        return v - np.log(np.exp(v).sum(-1, keepdims=True))
    lt, lq = log_softmax(target_logits), log_softmax(beta * pred)
    return (np.exp(lt) * (lt - lq)).sum(-1) / pred.shape[-1]


def test_simcc_kl_is_the_hand_formula():
    g = torch.Generator().manual_seed(0)
    px, py = torch.randn(2, 3, 96, generator=g), torch.randn(2, 3, 128, generator=g)
    gx, gy = torch.rand(2, 3, 96, generator=g), torch.rand(2, 3, 128, generator=g)
    w = torch.tensor([[1.0, 0.0, 1.0], [0.5, 1.0, 1.0]])
    got = simcc_kl(px, py, gx, gy, w)
    rows = sum(_kl_rows(p.double().numpy(), 10 * t.double().numpy(), 10.0)
               for p, t in ((px, gx), (py, gy)))  # (N, K)
    expect = (rows * w.double().numpy()).sum() / 3  # summed over the batch, ÷ K (MMPose)
    assert float(got) == pytest.approx(expect, rel=1e-5)
    # MMPose's reduction sums over the batch: the same batch twice doubles the loss.
    twice = simcc_kl(*(torch.cat([t, t]) for t in (px, py, gx, gy, w)))
    assert float(twice) == pytest.approx(2 * float(got), rel=1e-5)


def test_simcc_kl_is_zero_on_a_perfect_match_and_ignores_zero_weights():
    gx = torch.exp(-(torch.arange(96.0) - 40) ** 2 / 50).expand(1, 2, 96)
    gy = torch.exp(-(torch.arange(128.0) - 70) ** 2 / 60).expand(1, 2, 128)
    w = torch.tensor([[1.0, 0.0]])
    assert float(simcc_kl(gx, gy, gx, gy, w)) == pytest.approx(0.0, abs=1e-6)
    off = gx.clone()
    off[0, 1] = torch.roll(off[0, 1], 9)  # wrong, but weight 0
    assert float(simcc_kl(off, gy, gx, gy, w)) == pytest.approx(0.0, abs=1e-6)
    off[0, 0] = torch.roll(off[0, 0], 9)
    assert float(simcc_kl(off, gy, gx, gy, w)) > 1e-3


def _gaussian_map(cx: float, cy: float, h: int = 16, w: int = 12, s: float = 1.5):
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32),
                            torch.arange(w, dtype=torch.float32), indexing="ij")
    return torch.exp(-((xs - cx) ** 2 + (ys - cy) ** 2) / (2 * s * s))


def test_separable_teacher_map_peaks_at_the_right_bins():
    # Grid px (5, 7) = crop px (21.5, 29.5) (stride 4, pixel areas aligned) = bins (43, 59).
    maps = torch.stack([_gaussian_map(5, 7), _gaussian_map(5.5, 8.25)])[None]  # (1, 2, 16, 12)
    p_x, p_y, seen_x, seen_y = teacher_marginals(maps, torch.ones(1, 1, 16, 12), WH, 2.0)
    assert p_x.shape == (1, 2, 96) and p_y.shape == (1, 2, 128)
    assert seen_x.all() and seen_y.all()
    np.testing.assert_allclose(p_x.sum(-1), 1.0, rtol=1e-5)
    assert (int(p_x[0, 0].argmax()), int(p_y[0, 0].argmax())) == (43, 59)
    # Between grid pixels linear interpolation has no peak, but the mass centre is right:
    # grid 5.5 → crop 23.5 → bin 47; grid 8.25 → crop 34.5 → bin 69.
    centre = [float((p[0, 1] * torch.arange(p.shape[-1])).sum()) for p in (p_x, p_y)]
    np.testing.assert_allclose(centre, [47.0, 69.0], atol=0.02)


def _batch(n: int = 2, k: int = 3):
    g = torch.Generator().manual_seed(1)
    maps = torch.stack([torch.stack([_gaussian_map(*c) for c in ((3, 4), (6, 9), (9, 13))])
                        for _ in range(n)])[:, :k]
    return (torch.randn(n, k, 96, generator=g), torch.randn(n, k, 128, generator=g), maps,
            torch.ones(n, 1, 16, 12), torch.ones(n, k))


def test_simcc_kd_is_zero_for_a_student_matching_the_target_and_is_the_hand_formula():
    px, py, maps, spatial, w = _batch()
    p_x, p_y, _, _ = teacher_marginals(maps, spatial, WH)
    # The maps arrive β-sharpened (student.data), so p itself is the target: a student with
    # logits log p / β matches it exactly.
    assert float(simcc_kd(p_x.log() / 10, p_y.log() / 10, maps, spatial, w, WH)) == pytest.approx(
        0.0, abs=1e-5)
    got = simcc_kd(px, py, maps, spatial, w, WH, 2.0, 10.0)
    # The paper's KDLoss: full KL per row (not ÷ bins), x + y, mean over (sample, keypoint).
    rows = sum(_kl_rows(pr.double().numpy(), np.log(p.double().numpy()), 10.0)
               * pr.shape[-1] for pr, p in ((px, p_x), (py, p_y)))
    assert float(got) == pytest.approx(rows.sum() / float(w.sum()), rel=1e-4)


def test_simcc_kd_ignores_masked_bins_and_zero_weights():
    px, py, maps, spatial, w = _batch()
    spatial[:, :, :, 6:] = 0  # the teacher saw grid columns 0-5 only: bins 0-47
    spatial[1, :, 12:, :] = 0  # and, in sample 1, rows 0-11: y bins 0-95
    w[0, 2] = 0
    base = simcc_kd(px, py, maps, spatial, w, WH)
    px2, py2, maps2 = px.clone(), py.clone(), maps.clone()
    px2[..., 48:] += torch.randn(px2[..., 48:].shape)
    py2[1, :, 96:] += 3.0
    maps2[..., 6:] = 0.5  # where the teacher did not see
    px2[0, 2], py2[0, 2] = 0.0, 5.0  # a weight-0 row
    assert float(simcc_kd(px2, py2, maps2, spatial, w, WH)) == pytest.approx(float(base),
                                                                             rel=1e-6)
    px2[0, 0, 27] += 1.0  # a seen bin (the teacher's peak: grid 3, crop 13.5) does count
    assert float(simcc_kd(px2, py2, maps2, spatial, w, WH)) != pytest.approx(float(base),
                                                                             rel=1e-6)


def test_simcc_kd_gradients_are_finite_with_fully_masked_rows():
    px, py, maps, spatial, w = _batch()
    spatial[0] = 0  # sample 0: the teacher saw nothing
    maps[1, 1] = 0  # an empty teacher channel
    px.requires_grad_(True)
    py.requires_grad_(True)
    loss = simcc_kd(px, py, maps, spatial, w, WH)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(px.grad).all() and torch.isfinite(
        py.grad).all()
    assert px.grad[0].abs().max() == 0  # nothing seen, nothing learnt


def test_total_loss_with_a_simcc_student():
    px, py, maps, spatial, w = _batch(2, 3)
    gx, gy = torch.rand(2, 3, 96), torch.rand(2, 3, 128)
    batch = {"gt_simcc_x": gx, "gt_simcc_y": gy, "gt_weights": torch.tensor([[1.0, 1, 0],
                                                                             [1, 1, 1]]),
             "kd_targets": torch.stack([maps, maps.flip(-1)], 1),
             "kd_masks": torch.stack([spatial, spatial], 1), "kd_weights": torch.stack([w, w], 1)}
    kw = dict(gt_weight=1.0, kd_weights={"a": 0.25, "b": 0.45},
              kd_decays={"a": "none", "b": "linear"})
    start, terms = total_loss((px, py), batch, ["a", "b"], progress=0.0, **kw)
    assert terms["gt"] == pytest.approx(float(simcc_kl(px, py, gx, gy, batch["gt_weights"])))
    assert terms["kd/a"] == pytest.approx(float(simcc_kd(px, py, maps, spatial, w, WH)))
    assert float(start) == pytest.approx(terms["gt"] + 0.25 * terms["kd/a"] + 0.45 * terms["kd/b"],
                                         rel=1e-5)
    with pytest.raises(UniError, match="kd_loss 'mse'"):
        total_loss((px, py), batch, ["a", "b"], kd_loss="mse", **kw)
    s, n = validation_terms((px, py), batch)
    assert n == 5.0 and s == pytest.approx(terms["gt"] * 3, rel=1e-6)


def _softmax(v: np.ndarray) -> np.ndarray:
    e = np.exp(v - v.max())
    return e / e.sum()


@pytest.mark.parametrize("truth,rotation", [((70.3, 101.7), 0.0), ((150.0, 60.0), 30.0),
                                            ((150.0, 60.0), -50.0), ((30.0, 40.0), -50.0)])
def test_kd_target_of_a_flat_simcc_teacher_follows_a_rotated_view(truth, rotation):
    """A trained RTMPose's SimCC output is softmax of label-scale logits: a peak only e^1 above
    a flat floor. Its cached map (outer product of the marginals, as stage one stores it) must
    be sharpened before the warp (teacher_targets' power): sharpened after, a rotated view's
    marginal follows the floor's bulk instead of the keypoint (bench/simcc_store.py)."""
    input_wh, hm_wh, beta = (192, 256), (48, 64), 10.0
    truth = np.array(truth)  # image px; the teacher saw the image as its own crop
    bins = np.arange(2 * 192), np.arange(2 * 256)
    px, py = (_softmax(np.exp(-(b - 2 * t) ** 2 / (2 * s * s)))
              for b, t, s in zip(bins, truth, simcc_sigma(input_wh), strict=True))
    gx, gy = (simcc_to_grid(p, 2.0, 4.0, n) for p, n in ((px, 48), (py, 64)))
    maps = np.repeat((gy[:, None] * gx[None, :])[None], 17, 0)  # (17, 64, 48) coco17
    a_teacher = crop_to_heatmap(input_wh, hm_wh)
    a_crop = crop_affine(np.array([95.5, 127.5]), np.array([192.0, 256.0]), input_wh, rotation)
    a_grid = compose(crop_to_heatmap(input_wh, hm_wh), a_crop)
    want = apply(a_crop, truth[None])[0]  # crop px in the student's view
    shifts = {}
    for power in (1.0, beta):
        t, spatial, _ = teacher_targets(maps, a_teacher, SKELETONS["coco17"], a_grid, False,
                                        hm_wh, UNIFIED, power)
        p_x, p_y, _, _ = teacher_marginals(torch.from_numpy(t)[None],
                                           torch.from_numpy(spatial)[None], input_wh)
        if power == 1.0:  # the paper's softmax(β·log p) taken after the warp
            p_x, p_y = (torch.softmax(beta * p.clamp(min=1e-20).log(), -1) for p in (p_x, p_y))
        got = np.array([int(p_x[0, 0].argmax()), int(p_y[0, 0].argmax())]) / 2.0
        shifts[power] = float(np.hypot(*(got - want)))
    assert shifts[beta] < 4.0, shifts  # within one pixel of the input/4 grid it was warped on
    if rotation:
        assert shifts[1.0] > 4 * shifts[beta] + 4.0, shifts
