"""PCK metrics (docs/conventions.md "Metrics"): a keypoint is correct when its error is at most
a threshold times a per-person length; only visible labelled keypoints count.

- PCKh@0.5 (MPII): length = head size = 0.6 × the head-box diagonal.
- PCK@0.2 of the box (sub-JHMDB, MMPose's JhmdbPCKAccuracy norm_item "bbox"): length =
  max(w, h) of the person's ground-truth box.
A "Mean" pools correct / counted over the joints it covers (so joints weigh by their counts, as
MMPose and the official MPII code do).
"""

from __future__ import annotations

import numpy as np

PCKH_THRESHOLD = 0.5
PCK_BBOX_THRESHOLD = 0.2


def pck(pred: np.ndarray, gt: np.ndarray, visible: np.ndarray, lengths: np.ndarray,
        threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """pred, gt: (N, K, 2); visible: (N, K) bool; lengths: (N,) → (% correct (K,), NaN where no
    joint is visible; visible counts (K,)). A missing prediction is inf: never correct."""
    err = np.linalg.norm(pred - gt, axis=-1) / lengths[:, None]
    correct = ((err <= threshold) & visible).sum(0)
    counts = visible.sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return 100 * correct / counts, counts


def pckh(pred: np.ndarray, gt: np.ndarray, visible: np.ndarray, head_sizes: np.ndarray,
         threshold: float = PCKH_THRESHOLD) -> tuple[np.ndarray, np.ndarray]:
    """PCKh: pck with the head sizes (N,) as lengths."""
    return pck(pred, gt, visible, head_sizes, threshold)


def pck_bbox(pred: np.ndarray, gt: np.ndarray, visible: np.ndarray, bboxes: np.ndarray,
             threshold: float = PCK_BBOX_THRESHOLD) -> tuple[np.ndarray, np.ndarray]:
    """PCK of the box: pck with max(w, h) of each box (N, 4) x, y, w, h as lengths."""
    return pck(pred, gt, visible, np.maximum(bboxes[:, 2], bboxes[:, 3]), threshold)


def pooled_mean(per_joint: np.ndarray, counts: np.ndarray, include: np.ndarray) -> float:
    """Correct / counted over the joints in `include` (K,) bool, as %; 0 when none counted."""
    correct = np.nan_to_num(per_joint * counts / 100)
    return float(100 * correct[include].sum() / max(counts[include].sum(), 1))
