"""SimCC codec (RTMPose's 1-D coordinate classification), exactly as MMPose v1.3.2 does it.

Bins and crop pixels (the one place this is written): bin i of a split-s axis ↔ crop pixel i / s
(pixel centres at integers, docs/conventions.md "Crop and heatmap conventions"), so an axis of
W crop pixels has round(W·s) bins. Encoding rounds x·s to the nearest bin (np.around: halves to
even), decoding divides the argmax bin by s.

Sources: mmpose/codecs/simcc_label.py (SimCCLabel, smoothing 'gaussian', normalize=False as
RTMPose's configs set it), mmpose/codecs/utils/post_processing.py (get_simcc_maximum),
mmpose/models/utils/tta.py (flip_vectors).
"""

from __future__ import annotations

import math

import numpy as np

from uniskel.core.geometry import apply, crop_to_heatmap

SIMCC_SPLIT = 2.0  # bins per crop pixel (RTMPose's simcc_split_ratio)


def crop_to_bin(x: np.ndarray | float, split: float = SIMCC_SPLIT) -> np.ndarray | float:
    """Crop pixel coordinate → (fractional) SimCC bin."""
    return x * split


def bin_to_crop(i: np.ndarray | float, split: float = SIMCC_SPLIT) -> np.ndarray | float:
    """SimCC bin → crop pixel coordinate."""
    return i / split


def num_bins(size: int, split: float = SIMCC_SPLIT) -> int:
    """Bins of an axis `size` crop pixels long (MMPose: np.around(w * split))."""
    return int(np.around(size * split))


def simcc_sigma(input_wh: tuple[int, int]) -> tuple[float, float]:
    """Label σ (bins) per axis for an input (w, h): RTMPose's rule σ = √(side / 8), 2 decimals.

    Every RTMPose config in MMPose v1.3.2 fits it: 192→4.9, 256→5.66, 288→6.0, 384→6.93
    (projects/rtmpose: 256x192 (4.9, 5.66), 256x256 (5.66, 5.66), 384x288 (6., 6.93)).
    """
    return tuple(round(math.sqrt(s / 8.0), 2) for s in input_wh)  # type: ignore[return-value]


def simcc_labels(points: np.ndarray, visible: np.ndarray, input_wh: tuple[int, int],
                 sigma: tuple[float, float] | float, split: float = SIMCC_SPLIT
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """points: (K, 2) crop px, visible: (K,) bool → x (K, Wb) f32, y (K, Hb) f32, weights (K,) f32.

    SimCCLabel._generate_gaussian with normalize=False: un-normalised Gaussians (peak 1) centred
    on the rounded bin; invisible keypoints and those whose 3σ window misses the bins entirely
    get all-zero rows and weight 0.
    """
    sig = np.array([sigma, sigma] if np.isscalar(sigma) else sigma, dtype=np.float64)
    wb, hb = num_bins(input_wh[0], split), num_bins(input_wh[1], split)
    k = len(points)
    tx = np.zeros((k, wb), np.float32)
    ty = np.zeros((k, hb), np.float32)
    weights = np.asarray(visible, np.float32).copy()
    mus = np.around(crop_to_bin(np.asarray(points, np.float64), split)).astype(np.int64)
    radius = sig * 3
    x = np.arange(0, wb, 1, dtype=np.float32)
    y = np.arange(0, hb, 1, dtype=np.float32)
    left_top, right_bottom = mus - radius, mus + radius + 1  # (K, 2) each
    reachable = ((left_top[:, 0] < wb) & (left_top[:, 1] < hb)
                 & (right_bottom[:, 0] >= 0) & (right_bottom[:, 1] >= 0))
    keep = (weights >= 0.5) & reachable  # (K,)
    weights[~keep] = 0.0
    # Vectorised over keypoints; the same float64 arithmetic per row as MMPose's loop.
    tx[keep] = np.exp(-((x[None] - mus[keep, :1]) ** 2) / (2 * sig[0] ** 2))
    ty[keep] = np.exp(-((y[None] - mus[keep, 1:]) ** 2) / (2 * sig[1] ** 2))
    return tx, ty, weights


def decode_simcc(simcc_x: np.ndarray, simcc_y: np.ndarray, split: float = SIMCC_SPLIT
                 ) -> tuple[np.ndarray, np.ndarray]:
    """simcc_x: (N, K, Wb), simcc_y: (N, K, Hb) → coords (N, K, 2) crop px, scores (N, K).

    get_simcc_maximum (argmax per axis, score = the smaller of the two maxima, location -1 bin
    where the score is ≤ 0), then ÷ split as SimCCLabel.decode.
    """
    n, k, _ = simcc_x.shape
    sx = simcc_x.reshape(n * k, -1)
    sy = simcc_y.reshape(n * k, -1)
    locs = np.stack([sx.argmax(1), sy.argmax(1)], -1).astype(np.float32)
    scores = np.minimum(sx.max(1), sy.max(1))
    locs[scores <= 0.0] = -1
    return bin_to_crop(locs.reshape(n, k, 2), split), scores.reshape(n, k)


def flip_simcc(simcc_x: np.ndarray, simcc_y: np.ndarray, flip_index: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray]:
    """Outputs of a mirrored crop → the plain crop's frame (flip_vectors): channels swapped by
    flip_index, x reversed along its bins (bin i ↔ Wb - 1 - i), y only swapped.

    Note MMPose's reversal maps crop px x to W - 1/split - x, a quarter pixel (split 2) off the
    exact mirror W - 1 - x; kept, as RTMPose's flip test does it.
    """
    return simcc_x[:, flip_index, ::-1], simcc_y[:, flip_index]


def bins_on_heatmap(input_wh: tuple[int, int], hm_wh: tuple[int, int],
                    split: float = SIMCC_SPLIT) -> tuple[np.ndarray, np.ndarray]:
    """Where each SimCC bin's centre lies on a heatmap grid of the same crop:
    gx (Wb,), gy (Hb,) float64 heatmap px (through geometry.crop_to_heatmap)."""
    wb, hb = num_bins(input_wh[0], split), num_bins(input_wh[1], split)
    a = crop_to_heatmap(input_wh, hm_wh)
    gx = apply(a, np.stack([bin_to_crop(np.arange(wb), split), np.zeros(wb)], -1))[:, 0]
    gy = apply(a, np.stack([np.zeros(hb), bin_to_crop(np.arange(hb), split)], -1))[:, 1]
    return gx, gy
