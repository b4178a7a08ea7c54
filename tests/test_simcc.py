"""core.simcc: MMPose's SimCC codec (labels, decode, flip) on hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest

from uniskel.core.simcc import (
    SIMCC_SPLIT,
    bin_to_crop,
    bins_on_heatmap,
    crop_to_bin,
    decode_simcc,
    flip_simcc,
    num_bins,
    simcc_labels,
    simcc_sigma,
)


@pytest.mark.parametrize("wh,sigma", [((192, 256), (4.9, 5.66)), ((256, 256), (5.66, 5.66)),
                                      ((288, 384), (6.0, 6.93))])
def test_sigma_is_rtmposes(wh, sigma):
    # The values of MMPose v1.3.2's RTMPose configs at their three input sizes.
    assert simcc_sigma(wh) == sigma


def test_bins_and_crop_pixels():
    assert SIMCC_SPLIT == 2.0
    assert num_bins(48) == 96 and num_bins(64, 3.0) == 192
    assert crop_to_bin(3.25) == 6.5 and bin_to_crop(7) == 3.5


def test_labels_hand_computed():
    pts = np.array([[3.2, 2.8], [2.25, 2.75], [1.0, 1.0], [-1.0, 2.0], [-5.0, 2.0], [3.0, 9.5]])
    vis = np.array([True, True, False, True, True, True])
    x, y, w = simcc_labels(pts, vis, (8, 6), (1.0, 1.5), 2.0)
    assert x.shape == (6, 16) and y.shape == (6, 12) and x.dtype == y.dtype == np.float32
    bx, by = np.arange(16), np.arange(12)
    # 3.2·2 = 6.4 → bin 6, 2.8·2 = 5.6 → bin 6; unnormalised Gaussians, peak 1.
    np.testing.assert_allclose(x[0], np.exp(-(bx - 6.0) ** 2 / 2), rtol=1e-6, atol=1e-12)
    np.testing.assert_allclose(y[0], np.exp(-(by - 6.0) ** 2 / (2 * 1.5**2)), rtol=1e-6, atol=1e-12)
    # np.around rounds halves to even: 4.5 → 4, 5.5 → 6.
    assert x[1].argmax() == 4 and y[1].argmax() == 6
    # Invisible: zero rows, weight 0.
    assert not x[2].any() and not y[2].any()
    # Bin -2 is off the axis but its 3σ window reaches bin 0: kept.
    np.testing.assert_allclose(x[3], np.exp(-(bx + 2.0) ** 2 / 2), rtol=1e-6, atol=1e-12)
    # Bin -10: the window [-13, -6) misses the bins: weight 0 (its rows stay zero).
    assert not x[4].any() and not y[4].any()
    # y bin 19 with σ 1.5: window top 19 - 4.5 = 14.5 ≥ 12 bins: weight 0.
    np.testing.assert_array_equal(w, [1, 1, 0, 1, 0, 0])


def test_decode_hand_computed():
    sx = np.zeros((1, 3, 16), np.float32)
    sy = np.zeros((1, 3, 12), np.float32)
    sx[0, 0, 7], sy[0, 0, 3] = 0.9, 0.4  # score = the smaller maximum
    sx[0, 1, 2], sy[0, 1, 11] = 0.3, 0.8
    sx[0, 2] -= 1.0  # maximum ≤ 0: location -1 bin
    coords, scores = decode_simcc(sx, sy, 2.0)
    np.testing.assert_allclose(coords[0], [[3.5, 1.5], [1.0, 5.5], [-0.5, -0.5]])
    np.testing.assert_allclose(scores[0], [0.4, 0.3, -1.0])


def test_labels_decode_back_to_the_bin():
    rng = np.random.default_rng(0)
    pts = rng.uniform(0, 47, (20, 2)) * [1, 64 / 48]
    x, y, w = simcc_labels(pts, np.ones(20, bool), (48, 64), simcc_sigma((48, 64)))
    coords, scores = decode_simcc(x[None], y[None])
    assert w.all() and (scores == 1).all()
    np.testing.assert_allclose(coords[0], np.around(pts * 2) / 2)


def test_flip_is_flip_vectors():
    x = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)
    y = np.arange(2 * 3 * 5, dtype=np.float32).reshape(2, 3, 5)
    fi = np.array([1, 0, 2])
    fx, fy = flip_simcc(x, y, fi)
    np.testing.assert_array_equal(fx[0, 0], [7, 6, 5, 4])  # channel 1, bins reversed
    np.testing.assert_array_equal(fx[1, 2], [23, 22, 21, 20])
    np.testing.assert_array_equal(fy[0, 0], y[0, 1])  # y: channels only
    bx, by = flip_simcc(fx, fy, fi)
    np.testing.assert_array_equal(bx, x)
    np.testing.assert_array_equal(by, y)


def test_bins_on_heatmap_follow_crop_to_heatmap():
    gx, gy = bins_on_heatmap((48, 64), (12, 16), 2.0)
    assert gx.shape == (96,) and gy.shape == (128,)
    # bin i → crop px i/2 → stride-4 grid px (i/2 + 0.5)/4 - 0.5.
    np.testing.assert_allclose(gx[[0, 43, 95]], [-0.375, 5.0, 11.5])
    np.testing.assert_allclose(gy, (np.arange(128) / 2 + 0.5) / 4 - 0.5)
