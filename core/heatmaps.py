"""Heatmap maths shared by every stage: Gaussian targets and decoding peaks to coordinates."""

from __future__ import annotations

import numpy as np

# Heatmap-pixel Gaussian σ of ground-truth targets
# (docs/conventions.md "Crop and heatmap conventions").
SIGMA = 2.0


def gaussian_heatmaps(points: np.ndarray, visible: np.ndarray, hm_wh: tuple[int, int],
                      sigma: float = SIGMA) -> np.ndarray:
    """points: (K, 2) heatmap-grid coords, visible: (K,) bool → (K, H, W) float32, peak 1.

    Invisible keypoints, and those whose Gaussian lies wholly outside the grid, are all zero.
    """
    w, h = hm_wh
    xs = np.arange(w, dtype=np.float32)
    ys = np.arange(h, dtype=np.float32)
    out = np.zeros((len(points), h, w), dtype=np.float32)
    r = 3 * sigma
    for k, ((x, y), v) in enumerate(zip(points, visible, strict=True)):
        if not v or not (-r <= x <= w - 1 + r and -r <= y <= h - 1 + r):
            continue
        gx = np.exp(-((xs - x) ** 2) / (2 * sigma**2))
        gy = np.exp(-((ys - y) ** 2) / (2 * sigma**2))
        out[k] = gy[:, None] * gx[None, :]
    return out


def decode_heatmaps(heatmaps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """heatmaps: (N, K, H, W) → coords (N, K, 2) in heatmap pixels, scores (N, K) = peak values.

    Argmax refined a quarter pixel towards the higher neighbour (HRNet / MMPose "default" decode).
    """
    n, k, h, w = heatmaps.shape
    flat = heatmaps.reshape(n, k, -1)
    idx = flat.argmax(-1)
    scores = np.take_along_axis(flat, idx[..., None], -1)[..., 0]
    x, y = (idx % w).astype(np.int64), (idx // w).astype(np.int64)
    coords = np.stack([x, y], -1).astype(np.float64)
    ni, ki = np.meshgrid(np.arange(n), np.arange(k), indexing="ij")
    hm = heatmaps
    xl, xr = np.clip(x - 1, 0, w - 1), np.clip(x + 1, 0, w - 1)
    yu, yd = np.clip(y - 1, 0, h - 1), np.clip(y + 1, 0, h - 1)
    dx = hm[ni, ki, y, xr].astype(np.float64) - hm[ni, ki, y, xl]
    dy = hm[ni, ki, yd, x].astype(np.float64) - hm[ni, ki, yu, x]
    inner_x = (x > 0) & (x < w - 1)
    inner_y = (y > 0) & (y < h - 1)
    coords[..., 0] += np.where(inner_x, np.sign(dx) * 0.25, 0.0)
    coords[..., 1] += np.where(inner_y, np.sign(dy) * 0.25, 0.0)
    return coords, scores


def merge_flipped(plain: np.ndarray, flipped: np.ndarray, flip_index: np.ndarray) -> np.ndarray:
    """Flip test: plain, flipped (N, K, h, w) maps of a crop and of its mirror → their average.

    The mirror's maps are mirrored back (x → w - 1 - x, as geometry.flip_affine) and their
    left/right channels swapped (flip_index: the skeleton's, see Skeleton.flip_index).
    """
    back = flipped[:, flip_index, :, ::-1]
    return np.ascontiguousarray((plain + back) * 0.5, dtype=np.float32)
