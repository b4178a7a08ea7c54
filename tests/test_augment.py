"""RTMPose's augmentation: half-body boxes, truncated-normal ranges, flip rate, photometric ops
(shape, determinism, BGR equivalence, dropout size), and image/keypoint consistency of a view
with a replacement box."""

from __future__ import annotations

from dataclasses import replace

import cv2
import numpy as np
import pytest
from scipy.stats import truncnorm as scipy_truncnorm

from uniskel.core.crops import crop_person
from uniskel.core.geometry import apply, bbox_to_center_size
from uniskel.core.skeletons import UNIFIED, get_skeleton, unified_skeleton
from uniskel.student.augment import (
    RTMPoseAugment,
    View,
    body_halves,
    half_body_box,
    photometric,
    sample_rtmpose_view,
    truncnorm,
)

ASPECT = 192 / 256
# A standing person in unified21 order (nose … ankles, pelvis, thorax, upper_neck, head_top).
PERSON = np.array([
    [100, 40], [95, 35], [105, 35], [90, 38], [110, 38], [80, 70], [120, 70], [75, 100],
    [125, 100], [72, 130], [128, 130], [88, 140], [112, 140], [88, 190], [112, 190],
    [88, 240], [112, 240], [100, 140], [100, 70], [100, 60], [100, 20]], np.float64)
BBOX = np.array([70.0, 15.0, 60.0, 230.0])


def person(visible: np.ndarray | None = None) -> np.ndarray:
    """(21, 3) [x, y, v] keypoints, all visible unless `visible` says otherwise."""
    v = np.full(21, 2.0) if visible is None else np.where(visible, 2.0, 0.0)
    return np.concatenate([PERSON, v[:, None]], axis=1)


def test_body_halves_by_name():
    up, lo = body_halves(UNIFIED)
    assert up.tolist() == [True] * 11 + [False] * 6 + [False, True, True, True]
    assert lo.tolist() == [False] * 11 + [True] * 6 + [True, False, False, False]
    up, lo = body_halves(get_skeleton("coco17"))  # MMPose's upper_body_ids 0-10, lower 11-16
    assert np.flatnonzero(up).tolist() == list(range(11))
    assert np.flatnonzero(lo).tolist() == list(range(11, 17))
    up, lo = body_halves(unified_skeleton("unified27"))
    assert lo[21:].all() and not up[21:].any()  # toes and heels: lower, as Halpe's metainfo
    up, lo = body_halves(get_skeleton("mpii16"))
    assert not (up & lo).any()


@pytest.mark.parametrize("prefer_upper", [True, False])
def test_half_body_box_around_chosen_half(prefer_upper):
    aug = RTMPoseAugment(half_body_prob=1.0, upper_prioritized_prob=1.0 if prefer_upper else 0.0)
    up, lo = body_halves(UNIFIED)
    kp = person()
    box = half_body_box(np.random.default_rng(0), aug, kp, up, lo, padding=1.25)
    chosen = PERSON[up if prefer_upper else lo]
    center = chosen.mean(axis=0)
    extent = chosen.max(axis=0) - chosen.min(axis=0)
    x, y, w, h = box
    np.testing.assert_allclose([x + w / 2, y + h / 2], center)
    np.testing.assert_allclose([w, h], extent * 1.5 / 1.25)
    # crop_person pads it by 1.25: MMPose's half-body scale (extent × 1.5), aspect fixed.
    c, size = bbox_to_center_size(np.array(box), ASPECT, 1.25)
    ew, eh = extent * 1.5
    np.testing.assert_allclose(size, [ew, ew / ASPECT] if ew > ASPECT * eh else [eh * ASPECT, eh])
    # The crop holds the chosen half and not the other one's far end.
    view = View(box=box)
    _, a = crop_person(np.zeros((300, 200, 3), np.uint8), np.array(view.box), (96, 128))
    pts = apply(a, PERSON)
    inside = (pts[:, 0] >= 0) & (pts[:, 0] <= 95) & (pts[:, 1] >= 0) & (pts[:, 1] <= 127)
    assert inside[up if prefer_upper else lo].all()
    far = 15 if prefer_upper else 20  # left ankle / head top
    assert not inside[far]


def test_half_body_rules():
    up, lo = body_halves(UNIFIED)
    aug = RTMPoseAugment(half_body_prob=1.0, upper_prioritized_prob=0.0)  # prefers lower
    rng = np.random.default_rng(1)
    few = np.zeros(21, bool)
    few[:8] = True  # 8 visible < min_total_keypoints 9
    assert half_body_box(rng, aug, person(few), up, lo) is None
    vis = up.copy()
    vis[[11, 12]] = True  # 2 lower < min_lower 3: upper although lower is preferred
    box = half_body_box(rng, aug, person(vis), up, lo)
    np.testing.assert_allclose(box[0] + box[2] / 2, PERSON[up].mean(axis=0)[0])
    assert half_body_box(rng, replace(aug, half_body_prob=0.0), person(), up, lo) is None
    # Probability 0.3 per eligible person.
    hits = np.mean([half_body_box(np.random.default_rng(i), RTMPoseAugment(), person(), up, lo)
                    is not None for i in range(3000)])
    assert abs(hits - 0.3) < 0.03


def test_truncnorm_bounds_and_spread():
    x = truncnorm(np.random.default_rng(0), 40000)
    assert x.min() >= -1 and x.max() <= 1
    assert abs(x.mean()) < 0.01
    assert abs(x.std() - scipy_truncnorm.std(-1, 1)) < 0.005


def test_view_ranges_and_flip_rate():
    aug = RTMPoseAugment(half_body_prob=0.0)
    up, lo = body_halves(UNIFIED)
    views = [sample_rtmpose_view(np.random.default_rng([7, i]), aug, person(), BBOX, up, lo,
                                 ASPECT) for i in range(4000)]
    scale = np.array([v.scale for v in views])
    rot = np.array([v.rotation for v in views])
    shift = np.array([v.shift for v in views])
    flips = np.array([v.flip for v in views])
    assert scale.min() >= 0.6 and scale.max() <= 1.4 and abs(scale.std() - 0.4 * 0.5396) < 0.01
    assert np.abs(rot).max() <= 80 and abs((rot == 0).mean() - 0.4) < 0.03
    # The box is taller than 256:192, so its width is padded: shift x is a fraction of the
    # unfixed width (MMPose shifts before TopdownAffine fixes the aspect ratio).
    fixed_w = BBOX[3] * ASPECT
    assert np.abs(shift[:, 0]).max() <= 0.16 * BBOX[2] / fixed_w + 1e-9
    assert np.abs(shift[:, 1]).max() <= 0.16 and abs((shift[:, 1] != 0).mean() - 0.3) < 0.03
    assert abs(flips.mean() - 0.5) < 0.03
    assert all(v.box is None for v in views)
    s2 = [sample_rtmpose_view(np.random.default_rng(i), aug.stage2(), person(), BBOX, up, lo,
                              ASPECT) for i in range(500)]
    assert all(v.shift == (0.0, 0.0) and 0.75 <= v.scale <= 1.25 and abs(v.rotation) <= 60
               for v in s2)


def test_view_is_deterministic_for_a_seed():
    up, lo = body_halves(UNIFIED)
    aug = RTMPoseAugment(half_body_prob=0.5)
    a = [sample_rtmpose_view(np.random.default_rng([3, i]), aug, person(), BBOX, up, lo, ASPECT)
         for i in range(50)]
    b = [sample_rtmpose_view(np.random.default_rng([3, i]), aug, person(), BBOX, up, lo, ASPECT)
         for i in range(50)]
    assert a == b and any(v.box is not None for v in a)


def _crop() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (64, 48, 3), dtype=np.uint8)


def test_photometric_shape_dtype_determinism():
    crop = _crop()
    before = crop.copy()
    a = photometric(crop, np.random.default_rng(5), RTMPoseAugment())
    b = photometric(crop, np.random.default_rng(5), RTMPoseAugment())
    assert a.shape == crop.shape and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(crop, before)  # input untouched
    c = photometric(crop, np.random.default_rng(6), RTMPoseAugment())
    assert not np.array_equal(a, c)


def test_hsv_on_rgb_equals_mmdet_on_bgr():
    """uni converts RGB→HSV; mmdet converts the BGR image BGR→HSV: the same colour change."""
    crop = _crop()
    aug = RTMPoseAugment(blur_prob=0.0, median_blur_prob=0.0, dropout_prob=0.0)
    for seed in range(5):
        out = photometric(crop, np.random.default_rng(seed), aug)
        rng = np.random.default_rng(seed)
        gains = rng.uniform(-1, 1, 3) * [5, 30, 30]
        gains = (gains * rng.integers(0, 2, 3)).astype(np.int16)
        bgr = crop[..., ::-1].copy()
        hsv = cv2.cvtColor(bgr, cv2.COLOR_BGR2HSV).astype(np.int16)
        hsv[..., 0] = (hsv[..., 0] + gains[0]) % 180
        hsv[..., 1] = np.clip(hsv[..., 1] + gains[1], 0, 255)
        hsv[..., 2] = np.clip(hsv[..., 2] + gains[2], 0, 255)
        ref = cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2BGR)[..., ::-1]
        np.testing.assert_array_equal(out, ref)


def test_coarse_dropout_hole():
    white = np.full((64, 48, 3), 255, np.uint8)
    aug = RTMPoseAugment(hue_delta=0, saturation_delta=0, value_delta=0, blur_prob=0.0,
                         median_blur_prob=0.0)
    for seed in range(20):
        out = photometric(white, np.random.default_rng(seed), aug)
        ys, xs = np.nonzero(out[..., 0] == 0)
        h, w = ys.max() - ys.min() + 1, xs.max() - xs.min() + 1
        assert len(ys) == h * w  # one rectangle
        assert int(64 * 0.2) <= h <= int(64 * 0.4) and int(48 * 0.2) <= w <= int(48 * 0.4)
    none = photometric(white, np.random.default_rng(0), replace(aug, dropout_prob=0.0))
    np.testing.assert_array_equal(none, white)


def test_view_with_box_keeps_image_and_keypoint_together():
    """A dot drawn at a keypoint lands in the crop where geometry.apply puts the keypoint."""
    up, lo = body_halves(UNIFIED)
    aug = RTMPoseAugment(half_body_prob=1.0)
    kp = person()
    wrist = PERSON[9]
    image = np.zeros((300, 200, 3), np.uint8)
    cv2.circle(image, (int(wrist[0]), int(wrist[1])), 2, (255, 255, 255), -1)
    checked = 0
    for seed in range(40):
        v = sample_rtmpose_view(np.random.default_rng(seed), aug, kp, BBOX, up, lo, ASPECT)
        box = np.array(v.box) if v.box is not None else BBOX
        crop, a = crop_person(image, box, (96, 128), 1.25, v.rotation, v.scale, v.shift, v.flip)
        x, y = apply(a, wrist)
        if not (4 <= x <= 91 and 4 <= y <= 123):
            continue
        blob = cv2.GaussianBlur(crop[..., 0].astype(np.float32), (5, 5), 0)
        py, px = np.unravel_index(np.argmax(blob), blob.shape)
        assert abs(px - x) <= 1.5 and abs(py - y) <= 1.5, (seed, v, (px, py), (x, y))
        checked += v.box is not None
    assert checked >= 5
