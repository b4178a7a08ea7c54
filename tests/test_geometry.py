"""Crop geometry: affines, round trips, heatmap grids and warps (core/geometry.py)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from uniskel.core.geometry import (
    PADDING,
    apply,
    bbox_to_center_size,
    compose,
    crop_affine,
    crop_to_heatmap,
    flip_affine,
    invert,
    mpii_bbox,
    visible_mask,
    warp_heatmaps,
    warp_image,
)

boxes = st.tuples(st.floats(-500, 2000), st.floats(-500, 2000), st.floats(2, 1500),
                  st.floats(2, 1500))
sizes = st.sampled_from([(192, 256), (256, 256), (48, 64), (288, 384)])


@settings(max_examples=200, deadline=None)
@given(boxes, sizes, st.floats(-180, 180), st.booleans(), st.floats(0.5, 2.0),
       st.lists(st.tuples(st.floats(-1000, 3000), st.floats(-1000, 3000)), min_size=1,
                max_size=8))
def test_image_crop_image_round_trip(box, out_wh, rotation, flip, scale, points):
    center, size = bbox_to_center_size(np.array(box), out_wh[0] / out_wh[1])
    a = crop_affine(center, size * scale, out_wh, rotation, flip)
    pts = np.array(points)
    back = apply(invert(a), apply(a, pts))
    np.testing.assert_allclose(back, pts, atol=1e-4)
    # The same through the heatmap grid (image → crop → heatmap → image).
    hm = compose(crop_to_heatmap(out_wh, (out_wh[0] // 4, out_wh[1] // 4)), a)
    np.testing.assert_allclose(apply(invert(hm), apply(hm, pts)), pts, atol=1e-4)


@settings(max_examples=100, deadline=None)
@given(boxes, sizes, st.floats(-180, 180))
def test_box_centre_goes_to_crop_centre_and_flip_keeps_it(box, out_wh, rotation):
    center, size = bbox_to_center_size(np.array(box), out_wh[0] / out_wh[1])
    mid = np.array([(out_wh[0] - 1) / 2, (out_wh[1] - 1) / 2])
    for flip in (False, True):
        a = crop_affine(center, size, out_wh, rotation, flip)
        np.testing.assert_allclose(apply(a, center), mid, atol=1e-6)


def test_crop_box_edges_map_to_crop_edges():
    center, size = np.array([100.0, 50.0]), np.array([60.0, 80.0])
    a = crop_affine(center, size, (192, 256))
    corners = np.array([[70.0, 10.0], [130.0, 90.0]])  # left-top / right-bottom box edges
    np.testing.assert_allclose(apply(a, corners), [[-0.5, -0.5], [191.5, 255.5]], atol=1e-9)


def test_rotation_is_counter_clockwise_in_the_crop():
    center, size = np.array([50.0, 50.0]), np.array([40.0, 40.0])
    a = crop_affine(center, size, (41, 41), rotation=90)
    # A point right of the centre ends up above the crop centre.
    x, y = apply(a, np.array([60.0, 50.0]))
    assert x == pytest.approx(20.0) and y < 20.0


@settings(max_examples=50, deadline=None)
@given(st.integers(1, 500), st.floats(-1000, 1000), st.floats(-1000, 1000))
def test_flip_twice_is_identity(width, x, y):
    f = flip_affine(width)
    np.testing.assert_allclose(compose(f, f), np.eye(3)[:2], atol=1e-12)
    # Pixel 0 ↔ width - 1, like cv2.flip.
    assert apply(f, np.array([0.0, y]))[0] == width - 1
    np.testing.assert_allclose(apply(f, apply(f, np.array([x, y]))), [x, y], atol=1e-9)


def test_flip_affine_matches_cv2_flip():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (7, 11, 3), dtype=np.uint8)
    import cv2

    np.testing.assert_array_equal(warp_image(img, flip_affine(11), (11, 7)), cv2.flip(img, 1))


def test_heatmap_grid_of_known_points():
    m = crop_to_heatmap((192, 256), (48, 64))
    np.testing.assert_allclose(apply(m, np.array([95.5, 127.5])), [23.5, 31.5])
    # Pixel areas aligned: the crop's outer edges are the heatmap's outer edges.
    np.testing.assert_allclose(apply(m, np.array([[-0.5, -0.5], [191.5, 255.5]])),
                               [[-0.5, -0.5], [47.5, 63.5]])
    # Heatmap pixel (0, 0) covers crop pixels 0..3: its centre is crop (1.5, 1.5).
    np.testing.assert_allclose(apply(invert(m), np.array([0.0, 0.0])), [1.5, 1.5])


@pytest.mark.parametrize("rotation,flip", [(0, False), (30, False), (-75, True), (180, True)])
def test_warp_image_dot_lands_where_apply_says(rotation, flip):
    img = np.zeros((200, 300, 3), np.uint8)
    dot = np.array([181.0, 77.0])
    img[76:79, 180:183] = 255  # a 3x3 dot centred on integer pixel (181, 77)
    center, size = bbox_to_center_size(np.array([120.0, 30.0, 100.0, 120.0]), 192 / 256)
    a = crop_affine(center, size * 0.8, (192, 256), rotation, flip)
    crop = warp_image(img, a, (192, 256))[..., 0].astype(np.float64)
    ys, xs = np.mgrid[0:256, 0:192]
    found = np.array([(crop * xs).sum(), (crop * ys).sum()]) / crop.sum()
    np.testing.assert_allclose(found, apply(a, dot), atol=0.1)


def test_warp_heatmaps_moves_peak_and_masks_outside():
    hm = np.zeros((2, 64, 48), np.float32)
    hm[0, 31, 23] = 1.0
    hm[1, 10, 5] = 1.0
    shift = np.array([[1.0, 0.0, 4.0], [0.0, 1.0, -3.0]])
    out = warp_heatmaps(hm, shift, (48, 64))
    assert out.shape == (2, 64, 48)
    assert np.unravel_index(out[0].argmax(), out[0].shape) == (28, 27)
    mask = visible_mask(shift, (48, 64), (48, 64))
    assert mask[:, :4].sum() == 0 and mask[-3:].sum() == 0 and mask[10:50, 10:40].all()


def test_aspect_fix_and_padding():
    # Wide box: height grows to width / aspect.
    center, size = bbox_to_center_size(np.array([10.0, 20.0, 100.0, 50.0]), 0.75)
    np.testing.assert_allclose(center, [60.0, 45.0])
    np.testing.assert_allclose(size, [100.0 * PADDING, 100.0 / 0.75 * PADDING])
    # Tall box: width grows to height × aspect.
    center, size = bbox_to_center_size(np.array([0.0, 0.0, 30.0, 200.0]), 0.75)
    np.testing.assert_allclose(size, [150.0 * 1.25, 250.0])
    assert PADDING == 1.25
    _, size = bbox_to_center_size(np.array([0.0, 0.0, 30.0, 200.0]), 1.0, padding=1.0)
    np.testing.assert_allclose(size, [200.0, 200.0])


def test_mpii_bbox():
    np.testing.assert_allclose(mpii_bbox(np.array([100.0, 200.0]), 2.0),
                               [-100.0, 30.0, 400.0, 400.0])
    box = mpii_bbox(np.array([0.0, 0.0]), 1.0)
    assert box[2] == box[3] == 200.0 and box[1] + box[3] / 2 == 15.0
