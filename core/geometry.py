"""Top-down crop geometry: the one place boxes become affine matrices.

An affine is a (2, 3) float64 matrix A mapping [x, y, 1] → [x', y']. The conventions it follows
(pixel centres at integers, box → crop box, MPII boxes, crop → heatmap grid, flips, H×W sizes)
are docs/conventions.md "Crop and heatmap conventions".
"""

from __future__ import annotations

import cv2
import numpy as np

# OpenCV's thread pool does not survive fork(): a forked DataLoader worker that touches it after
# the parent used it deadlocks. uni parallelises with processes (DataLoader, dask) instead. The
# modules that read and warp images (crops, draw, predict, the student's data) import this one.
cv2.setNumThreads(1)

PADDING = 1.25  # crop box = person box × 1.25 (docs/conventions.md "Crop and heatmap conventions")


def bbox_to_center_size(bbox_xywh: np.ndarray, aspect_wh: float,
                        padding: float = PADDING) -> tuple[np.ndarray, np.ndarray]:
    """Person box (x, y, w, h) → crop (center (2,), size (2,) = w, h) at aspect w/h, padded."""
    x, y, w, h = (float(v) for v in bbox_xywh)
    center = np.array([x + w * 0.5, y + h * 0.5])
    if w > aspect_wh * h:
        h = w / aspect_wh
    else:
        w = h * aspect_wh
    return center, np.array([w, h]) * padding


def mpii_bbox(center: np.ndarray, scale: float) -> np.ndarray:
    """MPII (center, scale) → person box (x, y, w, h): side 200·scale, center y + 15·scale."""
    cx, cy = float(center[0]), float(center[1]) + 15.0 * scale
    side = 200.0 * scale
    return np.array([cx - side / 2, cy - side / 2, side, side])


def _mat3(a: np.ndarray) -> np.ndarray:
    return np.vstack([a, [0.0, 0.0, 1.0]])


def compose(*affines: np.ndarray) -> np.ndarray:
    """compose(A, B) applies B first, then A (like matrix products)."""
    out = np.eye(3)
    for a in affines:
        out = out @ _mat3(a)
    return out[:2]


def invert(affine: np.ndarray) -> np.ndarray:
    return np.linalg.inv(_mat3(affine))[:2]


def apply(affine: np.ndarray, points: np.ndarray) -> np.ndarray:
    """points: (..., 2) → (..., 2) under a (2, 3) affine."""
    return points @ affine[:, :2].T + affine[:, 2]


def flip_affine(width: int) -> np.ndarray:
    """Horizontal flip of a grid `width` pixels wide: x → width - 1 - x."""
    return np.array([[-1.0, 0.0, width - 1.0], [0.0, 1.0, 0.0]])


def crop_affine(center: np.ndarray, size: np.ndarray, out_wh: tuple[int, int],
                rotation: float = 0.0, flip: bool = False) -> np.ndarray:
    """Image → crop affine (2, 3): the (center, size) box fills an out_wh = (W, H) crop.

    rotation is in degrees, counter-clockwise in the image (the crop turns with the person);
    flip mirrors the crop horizontally after cropping.
    """
    out_w, out_h = out_wh
    sx, sy = out_w / float(size[0]), out_h / float(size[1])
    t = np.deg2rad(rotation)
    c, s = np.cos(t), np.sin(t)
    to_origin = np.array([[1.0, 0.0, -center[0]], [0.0, 1.0, -center[1]]])
    # A counter-clockwise rotation of the content in y-down image coordinates.
    rotate = np.array([[c, s, 0.0], [-s, c, 0.0]])
    scale = np.array([[sx, 0.0, 0.0], [0.0, sy, 0.0]])
    to_crop = np.array([[1.0, 0.0, (out_w - 1) / 2.0], [0.0, 1.0, (out_h - 1) / 2.0]])
    a = compose(to_crop, scale, rotate, to_origin)
    return compose(flip_affine(out_w), a) if flip else a


def crop_to_heatmap(in_wh: tuple[int, int], hm_wh: tuple[int, int]) -> np.ndarray:
    """Crop pixels → heatmap grid pixels, pixel areas aligned."""
    sx, sy = hm_wh[0] / in_wh[0], hm_wh[1] / in_wh[1]
    return np.array([[sx, 0.0, 0.5 * sx - 0.5], [0.0, sy, 0.5 * sy - 0.5]])


def warp_image(image: np.ndarray, affine: np.ndarray, out_wh: tuple[int, int]) -> np.ndarray:
    """image: (H, W, C) uint8 → (out_h, out_w, C), bilinear, black outside."""
    return cv2.warpAffine(image, affine, out_wh, flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def warp_heatmaps(heatmaps: np.ndarray, affine: np.ndarray, out_wh: tuple[int, int]) -> np.ndarray:
    """heatmaps: (K, h, w) float32 → (K, out_h, out_w), bilinear, zero outside."""
    hwk = np.ascontiguousarray(heatmaps.transpose(1, 2, 0))
    out = cv2.warpAffine(hwk, affine, out_wh, flags=cv2.INTER_LINEAR,
                         borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    return out.reshape(out_wh[1], out_wh[0], -1).transpose(2, 0, 1)


def visible_mask(affine: np.ndarray, src_wh: tuple[int, int],
                 out_wh: tuple[int, int]) -> np.ndarray:
    """(out_h, out_w) float32: 1 where out pixels map (through `affine`) inside the src grid."""
    ones = np.ones((src_wh[1], src_wh[0]), dtype=np.float32)
    return cv2.warpAffine(ones, affine, out_wh, flags=cv2.INTER_NEAREST,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=0)
