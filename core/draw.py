"""Drawing skeletons and boxes on images (inspect-data --draw, predict, demo).

The one limb list of the unified skeleton lives here. Colours are RGB: the person's left side
orange, right side blue, midline joints green.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from uniskel.core.errors import UniError, io_reason
from uniskel.core.files import atomic_write
from uniskel.core.skeletons import UNIFIED, UNIFIED_NAMES, Skeleton, native_to_unified

_LIMB_NAMES = [
    ("nose", "left_eye"), ("nose", "right_eye"), ("left_eye", "left_ear"),
    ("right_eye", "right_ear"), ("head_top", "upper_neck"), ("upper_neck", "thorax"),
    ("thorax", "left_shoulder"), ("thorax", "right_shoulder"),
    ("left_shoulder", "right_shoulder"), ("left_shoulder", "left_elbow"),
    ("left_elbow", "left_wrist"), ("right_shoulder", "right_elbow"),
    ("right_elbow", "right_wrist"), ("left_shoulder", "left_hip"),
    ("right_shoulder", "right_hip"), ("thorax", "pelvis"), ("pelvis", "left_hip"),
    ("pelvis", "right_hip"), ("left_hip", "right_hip"), ("left_hip", "left_knee"),
    ("left_knee", "left_ankle"), ("right_hip", "right_knee"), ("right_knee", "right_ankle"),
]
# (a, b) unified indices of each limb.
LIMBS: tuple[tuple[int, int], ...] = tuple(
    (UNIFIED_NAMES.index(a), UNIFIED_NAMES.index(b)) for a, b in _LIMB_NAMES)

LEFT, RIGHT, MIDLINE = (255, 140, 0), (30, 120, 255), (40, 200, 60)


def side_colour(*names: str) -> tuple[int, int, int]:
    """Left if any name is a left keypoint, right if any is right, else midline."""
    if any(n.startswith("left_") for n in names):
        return LEFT
    if any(n.startswith("right_") for n in names):
        return RIGHT
    return MIDLINE


def _auto_size(image: np.ndarray) -> int:
    return max(1, int(round(max(image.shape[:2]) / 250)))


def draw_skeleton(image: np.ndarray, keypoints: np.ndarray, threshold: float = 0.0,
                  skeleton: Skeleton = UNIFIED, radius: int | None = None,
                  thickness: int | None = None, copy: bool = True) -> np.ndarray:
    """Draw one person: image (H, W, 3) uint8 RGB, keypoints (K, 3) [x, y, v or score].

    keypoints are in `skeleton`'s order (unified by default; native ones are mapped first).
    Keypoints with v / score <= threshold are skipped, and so are limbs touching them.
    """
    out = image.copy() if copy else image
    kp = np.asarray(keypoints, dtype=np.float64)
    if skeleton.name != UNIFIED.name:
        kp = native_to_unified(kp, skeleton)
    t = thickness or _auto_size(out)
    r = radius or t + 1
    ok = (kp[:, 2] > threshold) & np.isfinite(kp[:, :2]).all(1)

    def pt(i: int) -> tuple[int, int]:
        return int(round(kp[i, 0] * 16)), int(round(kp[i, 1] * 16))

    for a, b in LIMBS:
        if ok[a] and ok[b]:
            cv2.line(out, pt(a), pt(b), side_colour(UNIFIED_NAMES[a], UNIFIED_NAMES[b]), t,
                     cv2.LINE_AA, shift=4)
    for i in np.flatnonzero(ok):
        cv2.circle(out, pt(i), r * 16, side_colour(UNIFIED_NAMES[i]), -1, cv2.LINE_AA, shift=4)
        cv2.circle(out, pt(i), r * 16, (255, 255, 255), 1, cv2.LINE_AA, shift=4)
    return out


def draw_box(image: np.ndarray, bbox_xywh: np.ndarray, colour: tuple[int, int, int] = (0, 230, 0),
             thickness: int | None = None, label: str | None = None,
             copy: bool = True) -> np.ndarray:
    """Draw a person box (x, y, w, h) on an RGB uint8 image, with an optional text label."""
    out = image.copy() if copy else image
    x, y, w, h = (float(v) for v in bbox_xywh)
    t = thickness or _auto_size(out)
    p0 = int(round(x)), int(round(y))
    cv2.rectangle(out, p0, (int(round(x + w)), int(round(y + h))), colour, t)
    if label:
        scale = 0.3 * t
        (tw, th), _ = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
        top = max(p0[1] - th - 4, 0)
        cv2.rectangle(out, (p0[0], top), (p0[0] + tw + 4, top + th + 4), colour, -1)
        cv2.putText(out, label, (p0[0] + 2, top + th + 1), cv2.FONT_HERSHEY_SIMPLEX, scale,
                    (0, 0, 0), 1, cv2.LINE_AA)
    return out


def save_rgb(path: Path, image: np.ndarray) -> None:
    """Write an RGB uint8 image (PNG / JPEG by suffix), atomically."""
    path = Path(path)
    ok, data = cv2.imencode(path.suffix, cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    if not ok:
        raise UniError(f"{path}: could not encode image")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda p: p.write_bytes(data.tobytes()))
    except OSError as e:
        raise UniError(f"{path}: could not write image ({io_reason(e)})") from None

