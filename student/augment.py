"""Training augmentation: the classic view (`Augment`, `sample_view`) and RTMPose's recipe
(`RTMPoseAugment`, `sample_rtmpose_view`, `photometric`), as MMPose 1.3.2 trains RTMPose.

Geometry is drawn as a `View` (crop_person's arguments, plus an optional replacement person box
for the half-body transform), so the image and the cached teacher targets warp by one affine
(student/data.py). Photometric ops act on the crop only and never change geometry. Every draw
comes from the numpy Generator the caller seeds per sample, so runs and resumes replay exactly.

OpenCV + numpy rather than albumentations: uni warps the image and the cached targets with one
affine matrix of its own, and the photometric ops are a few lines of cv2; albumentations (MIT)
would add a heavy dependency for that (1.4: scikit-image, scikit-learn; 2.x: pydantic, albucore).

Sources (open-mmlab/mmpose v1.3.2 unless named):
- configs/body_2d_keypoint/rtmpose/coco/rtmpose-t_8xb256-420e_coco-256x192.py, train_pipeline
  (lines 113-139) and train_pipeline_stage2 (147-176): GetBBoxCenterScale (padding 1.25),
  RandomFlip, RandomHalfBody (defaults), RandomBBoxTransform(scale_factor=[0.6, 1.4],
  rotate_factor=80) / stage 2 (shift_factor=0, scale_factor=[0.75, 1.25], rotate_factor=60),
  TopdownAffine, mmdet.YOLOXHSVRandomAug, Albumentation(Blur p=0.1, MedianBlur p=0.1,
  CoarseDropout(max_holes=1, min_holes=1, height/width 0.2-0.4, p=1.0 / stage 2 p=0.5)).
- mmpose/datasets/transforms/common_transforms.py: RandomFlip, RandomHalfBody,
  RandomBBoxTransform (_truncnorm = scipy truncnorm on [-1, 1]).
- mmpose/datasets/transforms/topdown_transforms.py TopdownAffine: the aspect-ratio fix comes
  after RandomBBoxTransform, so the shift is a fraction of the unfixed (padded) box size.
- open-mmlab/mmdetection v3 mmdet/datasets/transforms/transforms.py YOLOXHSVRandomAug.
- albumentations 1.3 Blur / MedianBlur (blur_limit 7: odd kernel 3, 5 or 7) and CoarseDropout
  (float sizes: int(size × U(min, max)); top-left corner uniform, inclusive; fill 0).

Where uni differs from MMPose, it is equal in law, not draw for draw: MMPose flips the image
first and shifts/rotates the box in the flipped image, uni shifts/rotates in the original image
and mirrors the crop (the shift and rotation distributions are symmetric, so the crops have
the same distribution). A half-body box of less than a pixel (MMPose would crop nothing) keeps
the instance's box.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import cv2
import numpy as np
from scipy.special import ndtr, ndtri

from uniskel.core.geometry import PADDING
from uniskel.core.skeletons import Skeleton

# ------------------------------------------------------------------ the classic view


@dataclass(frozen=True)
class Augment:
    """MMPose-style ranges (see the module docstring)."""

    flip_prob: float = 0.5
    shift: float = 0.16
    shift_prob: float = 0.3
    scale: tuple[float, float] = (0.65, 1.35)
    rotation: float = 40.0
    rotation_prob: float = 0.6


@dataclass(frozen=True)
class View:
    """One crop's augmentation parameters (crop_person's arguments).

    box: a replacement person box (x, y, w, h) in image pixels (the half-body box), cropped
    instead of the instance's box; None: the instance's box.
    """

    shift: tuple[float, float] = (0.0, 0.0)
    scale: float = 1.0
    rotation: float = 0.0
    flip: bool = False
    box: tuple[float, float, float, float] | None = None


def sample_view(rng: np.random.Generator, aug: Augment) -> View:
    """Random view, as MMPose's RandomBBoxTransform + RandomFlip draw it."""
    shift = rng.uniform(-1.0, 1.0, 2) * aug.shift
    if rng.random() >= aug.shift_prob:
        shift = np.zeros(2)
    lo, hi = aug.scale
    scale = float(np.clip(rng.normal() * (hi - lo) / 2 + (hi + lo) / 2, lo, hi))
    rotation = float(np.clip(rng.normal() * aug.rotation, -2 * aug.rotation, 2 * aug.rotation))
    if rng.random() >= aug.rotation_prob:
        rotation = 0.0
    flip = bool(rng.random() < aug.flip_prob)
    return View((float(shift[0]), float(shift[1])), scale, rotation, flip)


# ------------------------------------------------------------------ RTMPose's recipe


@dataclass(frozen=True)
class RTMPoseAugment:
    """RTMPose's training augmentation, stage 1 values (`stage2()`: its last 30 epochs)."""

    flip_prob: float = 0.5
    # RandomHalfBody defaults
    half_body_prob: float = 0.3
    min_total_keypoints: int = 9
    min_upper_keypoints: int = 2
    min_lower_keypoints: int = 3
    half_body_padding: float = 1.5
    upper_prioritized_prob: float = 0.7
    # RandomBBoxTransform (truncated normals on [-1, 1])
    shift_factor: float = 0.16
    shift_prob: float = 0.3
    scale_factor: tuple[float, float] = (0.6, 1.4)
    scale_prob: float = 1.0
    rotate_factor: float = 80.0
    rotate_prob: float = 0.6
    # YOLOXHSVRandomAug (OpenCV HSV units: hue 0-179, saturation and value 0-255)
    hue_delta: int = 5
    saturation_delta: int = 30
    value_delta: int = 30
    # Albumentation: Blur, MedianBlur, CoarseDropout
    blur_prob: float = 0.1
    median_blur_prob: float = 0.1
    blur_limit: tuple[int, int] = (3, 7)
    dropout_prob: float = 1.0
    dropout_size: tuple[float, float] = (0.2, 0.4)  # hole side, fraction of the crop's side

    def stage2(self) -> RTMPoseAugment:
        """train_pipeline_stage2: no shift, scale 0.75-1.25, rotation 60, dropout p 0.5."""
        return replace(self, shift_factor=0.0, scale_factor=(0.75, 1.25), rotate_factor=60.0,
                       dropout_prob=0.5)


# Half-body sets by canonical keypoint name (MMPose's coco.py / halpe26.py metainfo 'type':
# upper = head, arms and neck; lower = hips, legs and feet). Other names: neither half.
_UPPER = frozenset({
    "nose", "left_eye", "right_eye", "left_eye_inner", "right_eye_inner", "left_eye_outer",
    "right_eye_outer", "left_ear", "right_ear", "mouth_left", "mouth_right", "head_top",
    "upper_neck", "thorax", "left_shoulder", "right_shoulder", "left_elbow", "right_elbow",
    "left_wrist", "right_wrist", "left_pinky", "right_pinky", "left_index", "right_index",
    "left_thumb", "right_thumb"})
_LOWER = frozenset({
    "pelvis", "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle", "right_ankle",
    "left_big_toe", "right_big_toe", "left_small_toe", "right_small_toe", "left_heel",
    "right_heel", "left_foot_index", "right_foot_index"})


def body_halves(skeleton: Skeleton) -> tuple[np.ndarray, np.ndarray]:
    """(upper (K,) bool, lower (K,) bool) of a skeleton, by each keypoint's canonical name."""
    names = skeleton.canonical
    return (np.array([n in _UPPER for n in names], bool),
            np.array([n in _LOWER for n in names], bool))


_TN_LO = float(ndtr(-1.0))
_TN_MASS = float(ndtr(1.0)) - _TN_LO


def truncnorm(rng: np.random.Generator, size: int | tuple[int, ...]) -> np.ndarray:
    """Standard normal truncated to [-1, 1] (scipy's truncnorm(-1, 1)), by inverse CDF."""
    return ndtri(_TN_LO + rng.random(size) * _TN_MASS)


def half_body_box(rng: np.random.Generator, aug: RTMPoseAugment, keypoints: np.ndarray,
                  upper: np.ndarray, lower: np.ndarray, padding: float = PADDING
                  ) -> tuple[float, float, float, float] | None:
    """RandomHalfBody: a person box (x, y, w, h) around the chosen half, or None (keep the
    instance's box). The box is what crop_person, padding it by `padding`, turns into MMPose's
    half-body crop: centred on the chosen keypoints' mean, their extent × half_body_padding."""
    u_apply, u_prefer = rng.random(2)  # always both, so later draws never shift
    visible = keypoints[:, 2] > 0
    if visible.sum() < aug.min_total_keypoints or u_apply > aug.half_body_prob:
        return None
    up, lo = np.flatnonzero(upper & visible), np.flatnonzero(lower & visible)
    ok_up, ok_lo = len(up) >= aug.min_upper_keypoints, len(lo) >= aug.min_lower_keypoints
    if not ok_up and not ok_lo:
        return None
    if ok_up and ok_lo:
        chosen = up if u_prefer < aug.upper_prioritized_prob else lo
    else:
        chosen = up if ok_up else lo
    pts = keypoints[chosen, :2].astype(np.float64)  # (n, 2)
    center = pts.mean(axis=0)
    extent = pts.max(axis=0) - pts.min(axis=0)
    if extent.max() < 1.0:  # coincident keypoints: MMPose's crop would be empty
        return None
    w, h = extent * aug.half_body_padding / padding
    return (float(center[0] - w / 2), float(center[1] - h / 2), float(w), float(h))


def sample_rtmpose_view(rng: np.random.Generator, aug: RTMPoseAugment, keypoints: np.ndarray,
                        bbox: np.ndarray, upper: np.ndarray, lower: np.ndarray,
                        aspect_wh: float, padding: float = PADDING) -> View:
    """RTMPose's random view: RandomFlip, RandomHalfBody, RandomBBoxTransform.

    keypoints: (U, 3) [x, y, v] image px; bbox: (4,) x, y, w, h; upper, lower: (U,) bool
    (body_halves); aspect_wh: the crop's w / h; padding: what crop_person pads the box by.
    """
    flip = bool(rng.random() < aug.flip_prob)
    box = half_body_box(rng, aug, keypoints, upper, lower, padding)
    tn = truncnorm(rng, 4)  # shift x, shift y, scale, rotation
    u_shift, u_scale, u_rot = rng.random(3)
    offset = tn[:2] * aug.shift_factor if u_shift < aug.shift_prob else np.zeros(2)
    lo, hi = aug.scale_factor
    scale = tn[2] * (hi - lo) / 2 + (hi + lo) / 2 if u_scale < aug.scale_prob else 1.0
    rotation = tn[3] * aug.rotate_factor if u_rot < aug.rotate_prob else 0.0
    # MMPose shifts by a fraction of the box before TopdownAffine fixes its aspect ratio;
    # crop_person shifts by a fraction of the fixed crop box: convert.
    w, h = (float(v) for v in (box if box is not None else bbox)[2:])
    fixed_w, fixed_h = (w, w / aspect_wh) if w > aspect_wh * h else (h * aspect_wh, h)
    shift = (float(offset[0] * w / fixed_w) if fixed_w > 0 else 0.0,
             float(offset[1] * h / fixed_h) if fixed_h > 0 else 0.0)
    return View(shift, float(scale), float(rotation), flip, box)


def photometric(crop: np.ndarray, rng: np.random.Generator, aug: RTMPoseAugment) -> np.ndarray:
    """YOLOXHSVRandomAug, Blur, MedianBlur, CoarseDropout on a crop: (H, W, 3) uint8 RGB →
    a new (H, W, 3) uint8 RGB array (the input is not modified).

    HSV: MMPose's image is BGR there and mmdet converts BGR→HSV; uni's crop is RGB and
    converts RGB→HSV, which gives the same H, S, V for the same colours, so the result is the
    same colour change bit for bit.
    """
    gains = rng.uniform(-1.0, 1.0, 3) * (aug.hue_delta, aug.saturation_delta, aug.value_delta)
    gains = (gains * rng.integers(0, 2, 3)).astype(np.int16)  # each channel w.p. 1/2; truncates
    # mmdet's int16 arithmetic ((h + g) % 180, clip(s + g), clip(v + g)) as lookup tables.
    x = np.arange(256, dtype=np.int16)
    lut = np.stack([(x + gains[0]) % 180, np.clip(x + gains[1], 0, 255),
                    np.clip(x + gains[2], 0, 255)], axis=-1).astype(np.uint8)[None]  # (1, 256, 3)
    hsv = cv2.LUT(cv2.cvtColor(crop, cv2.COLOR_RGB2HSV), lut)
    out = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)

    kernels = np.arange(aug.blur_limit[0], aug.blur_limit[1] + 1, 2)
    u_blur, u_median, u_drop = rng.random(3)
    k_blur, k_median = rng.choice(kernels, 2)
    if u_blur < aug.blur_prob:
        out = cv2.blur(out, (int(k_blur), int(k_blur)))
    if u_median < aug.median_blur_prob:
        out = cv2.medianBlur(out, int(k_median))

    height, width = out.shape[:2]
    lo, hi = aug.dropout_size
    hole_h = int(height * rng.uniform(lo, hi))
    hole_w = int(width * rng.uniform(lo, hi))
    y1 = int(rng.integers(0, height - hole_h + 1))
    x1 = int(rng.integers(0, width - hole_w + 1))
    if u_drop < aug.dropout_prob:
        out[y1:y1 + hole_h, x1:x1 + hole_w] = 0
    return out
