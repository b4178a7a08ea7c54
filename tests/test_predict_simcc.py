"""Predictors of SimCC models (RTMPose students, SimCC ONNX models): MMPose's decode and flip
test, crop pixels → image pixels."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from uniskel.core.crops import crop_person, read_image
from uniskel.core.errors import UniError
from uniskel.core.geometry import apply, invert
from uniskel.core.simcc import decode_simcc
from uniskel.core.skeletons import UNIFIED, native_to_unified
from uniskel.evaluation.predict import OnnxPredictor, StudentPredictor, predict_boxes
from uniskel.pipeline.teachers import Teacher

W, H = 48, 64  # crop; 96 x-bins, 128 y-bins
U = UNIFIED.num_keypoints
RNG = np.random.default_rng(0)
XS, YS = RNG.integers(2, W - 2, U), RNG.integers(2, H - 2, U)  # crop px, on the bin grid
FI = torch.as_tensor(UNIFIED.flip_index)


class MirrorAware(nn.Module):
    """A perfect SimCC 'model' of one fixed pose (XS, YS) on crops whose left half is the bright
    one: on a mirrored crop it answers the mirrored pose (keypoint k where the mirror shows it:
    x = W - 1 - XS[flip k], y = YS[flip k]). Logits are Gaussians of height 3 (x), 2 (y)."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mirrored = x[..., W // 2:].mean((1, 2, 3)) > x[..., : W // 2].mean((1, 2, 3))  # (N,)
        mx = torch.where(mirrored[:, None], 2.0 * (W - 1 - torch.as_tensor(XS)[FI]),
                         2.0 * torch.as_tensor(XS))  # (N, U) bins
        my = torch.where(mirrored[:, None], 2.0 * torch.as_tensor(YS)[FI],
                         2.0 * torch.as_tensor(YS))
        bx, by = torch.arange(2 * W, dtype=torch.float32), torch.arange(2 * H, dtype=torch.float32)
        return (3 * torch.exp(-(bx - mx[..., None]) ** 2 / 8),
                2 * torch.exp(-(by - my[..., None]) ** 2 / 8))


@pytest.fixture(scope="module")
def half_bright(tmp_path_factory):
    """An image whose left half is white: crops of the whole image are bright on the left."""
    image = np.zeros((160, 120, 3), np.uint8)
    image[:, :60] = 255
    path = tmp_path_factory.mktemp("img") / "half.png"
    cv2.imwrite(str(path), image)
    return path


@pytest.mark.parametrize("flip_test", [False, True])
def test_simcc_student_gives_the_expected_image_coordinates(half_bright, flip_test):
    p = StudentPredictor(MirrorAware(), "fake", (W, H), device="cpu")
    box = np.array([0.0, 0.0, 120.0, 160.0])
    kp = predict_boxes(p, [(half_bright, box)] * 2, flip_test=flip_test, progress=False)
    _, affine = crop_person(read_image(half_bright), box, (W, H))
    expect = apply(invert(affine), np.c_[XS, YS].astype(np.float64))
    # Flip test: MMPose's flip_vectors puts the mirror's x peak one bin right (2x + 1); the
    # averaged logits tie at 2x and 2x + 1 and argmax takes the first, so x is exact.
    for k in kp:
        np.testing.assert_allclose(k[:, :2], expect, atol=1e-9)
        # Score = min of the two raw maxima: y's 2 (x's is 3, or 1.5·(1 + e^-1/8) flipped).
        np.testing.assert_allclose(k[:, 2], 2.0, rtol=1e-6)


def test_simcc_student_crop_keypoints(half_bright):
    crop, _ = crop_person(read_image(half_bright), np.array([0.0, 0, 120, 160]), (W, H))
    p = StudentPredictor(MirrorAware(), "fake", (W, H), device="cpu")
    coords, scores = p.keypoints(crop[None], flip_test=False)
    np.testing.assert_array_equal(coords[0], np.c_[XS, YS])
    # The mirrored crop gives the mirrored pose, channels swapped.
    coords, _ = p.keypoints(crop[None, :, ::-1].copy(), flip_test=False)
    np.testing.assert_array_equal(coords[0], np.c_[W - 1 - XS[FI], YS[FI]])
    with pytest.raises(TypeError, match="SimCC"):
        p.heatmaps(crop[None])


def test_simcc_onnx_model_decodes_mmposes_way(simcc_teacher, coco_crops):
    p = OnnxPredictor(simcc_teacher, "cpu")
    t = Teacher(simcc_teacher, providers=["CPUExecutionProvider"])
    crops = coco_crops[:3]
    x, y = t.simcc_outputs(crops)
    assert x.shape == (3, 16, 96) and y.shape == (3, 16, 128)
    fx, fy = t.simcc_outputs(crops[:, :, ::-1].copy())
    fi = t.skeleton.flip_index
    for flip, (sx, sy) in ((False, (x, y)),
                           (True, ((x + fx[:, fi, ::-1]) / 2, (y + fy[:, fi]) / 2))):
        coords, scores = p.keypoints(crops, flip_test=flip)
        c, s = decode_simcc(sx, sy, 2.0)  # native mpii16 order
        expect = native_to_unified(np.concatenate([c, s[..., None]], -1), t.skeleton, UNIFIED)
        np.testing.assert_allclose(coords, expect[..., :2], atol=1e-5)
        np.testing.assert_allclose(scores, expect[..., 2], atol=1e-5)
        assert (coords[:, ~p.known] == 0).all() and (scores[:, ~p.known] == 0).all()


def test_heatmap_teacher_has_no_simcc_outputs(heatmap_teacher, coco_crops):
    t = Teacher(heatmap_teacher, providers=["CPUExecutionProvider"])
    with pytest.raises(UniError, match="heatmap head has no SimCC outputs"):
        t.simcc_outputs(coco_crops[:1])
