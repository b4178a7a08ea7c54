"""Predictors (flip test, heatmap → image geometry), `uni export` and `uni predict`."""

from __future__ import annotations

import contextlib
import io
import json

import cv2
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import one_line_error
from pycocotools.coco import COCO
from torch import nn

from uniskel.cli import uni
from uniskel.core.errors import UniError
from uniskel.core.skeletons import NUM_UNIFIED, SKELETONS, UNIFIED_NAMES
from uniskel.evaluation import export as export_module
from uniskel.evaluation.export import export_model
from uniskel.evaluation.predict import OnnxPredictor, Predictor, StudentPredictor, predict_boxes
from uniskel.pipeline.teachers import Teacher, read_info
from uniskel.student.checkpoint import load_student


def _run(*args):
    return CliRunner().invoke(uni, [str(a) for a in args])


class HalfPool(nn.Module):
    """A mirror-consistent 'pose model': left keypoints look at the crop's right half, right
    keypoints at its left half, midline ones at all of it. Mirroring the input therefore mirrors
    the output and swaps left/right channels — what a perfect model does — so the flip test must
    return exactly the plain output. Forgetting the mirror or the swap breaks that."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = nn.functional.avg_pool2d(x[:, :1], 4)  # (N, 1, H/4, W/4)
        w = g.shape[-1]
        cols = torch.arange(w)
        masks = torch.stack([
            (cols >= w // 2) if n.startswith("left_") else
            (cols < w // 2) if n.startswith("right_") else torch.ones(w, dtype=torch.bool)
            for n in UNIFIED_NAMES]).float()  # (21, w)
        return g * masks[None, :, None, :]


@pytest.fixture(scope="module")
def crops():
    return np.random.default_rng(0).integers(0, 256, (3, 64, 48, 3), dtype=np.uint8)


def test_student_flip_test_is_consistent(crops):
    p = StudentPredictor(HalfPool(), "halfpool", (48, 64), device="cpu")
    plain, merged = p.heatmaps(crops, flip_test=False), p.heatmaps(crops, flip_test=True)
    assert plain.shape == (3, NUM_UNIFIED, 16, 12)
    np.testing.assert_allclose(merged, plain, atol=1e-5)
    # Without the channel swap the halves would not line up.
    mirrored = p.heatmaps(crops[:, :, ::-1].copy(), flip_test=False)[:, :, :, ::-1]
    assert not np.allclose(mirrored, plain, atol=1e-3)


class _PeakPredictor(Predictor):
    """Every crop → keypoint k peaks at one fixed heatmap pixel PEAKS[k]; a few unknown."""

    name, input_wh = "peaks", (48, 64)

    def __init__(self):
        rng = np.random.default_rng(1)
        self.peaks = np.stack([rng.integers(0, 12, 21), rng.integers(0, 16, 21)], -1)
        self.known = np.ones(21, bool)
        self.known[[17, 18]] = False

    def heatmaps(self, crops, flip_test=True):
        hm = np.zeros((len(crops), 21, 16, 12), np.float32)
        hm[:, np.arange(21), self.peaks[:, 1], self.peaks[:, 0]] = 0.8
        return hm


def test_heatmap_pixels_map_back_to_the_image(data_dir):
    """Heatmap pixel (i, j) of a W×H crop box is the centre of its 1/12 × 1/16 cell."""
    p = _PeakPredictor()
    image = data_dir / "coco/images/000000000785.jpg"
    boxes = [np.array([100.0, 50.0, 60.0, 80.0]), np.array([300.0, 40.0, 100.0, 80.0])]
    kp = predict_boxes(p, [(image, b) for b in boxes], flip_test=False, progress=False)
    assert kp.shape == (2, 21, 3)
    for b, k in zip(boxes, kp, strict=True):
        # The box grown to aspect 48:64 around its centre, then × 1.25.
        h = max(b[3], b[2] * 64 / 48) * 1.25
        w = h * 48 / 64
        left, top = b[0] + b[2] / 2 - w / 2, b[1] + b[3] / 2 - h / 2
        expect = np.c_[left + (p.peaks[:, 0] + 0.5) * w / 12, top + (p.peaks[:, 1] + 0.5) * h / 16]
        np.testing.assert_allclose(k[p.known, :2], expect[p.known], atol=1e-9)
        assert (k[p.known, 2] == np.float32(0.8)).all()
        assert (k[~p.known] == 0).all()


# --------------------------------------------------------------------------- export


def test_export_matches_torch_and_is_a_teacher(tmp_path, crops, tiny_student_run):
    model, cfg = load_student(tiny_student_run)
    r = _run("export", tiny_student_run, "--out", tmp_path / "s.onnx")
    assert r.exit_code == 0, r.output
    info = read_info(tmp_path / "s.onnx")
    assert (info.name, info.skeleton, info.head, info.input_wh, info.activation) == (
        "tiny_run", "unified21", "heatmap", (48, 64), "none")
    # Dynamic batch: a batch of 5 through onnxruntime equals torch.
    t = Teacher(tmp_path / "s.onnx")
    x = np.random.default_rng(2).integers(0, 256, (5, 64, 48, 3), dtype=np.uint8)
    student = StudentPredictor(model, "s", (48, 64), device="cpu")
    np.testing.assert_allclose(t.predict(x, flip_test=False), student.heatmaps(x, False),
                               atol=1e-4)
    # The same flip test either way (Teacher.predict vs the student predictor).
    onnx_p = OnnxPredictor(tmp_path / "s.onnx")
    assert onnx_p.known.all() and onnx_p.name == "tiny_run"
    np.testing.assert_allclose(onnx_p.heatmaps(x), student.heatmaps(x), atol=1e-4)
    assert not list(tmp_path.glob("*.tmp"))


def test_export_to_a_native_skeleton_keeps_its_channels(tmp_path, crops, tiny_student_run):
    model, _ = load_student(tiny_student_run)
    r = _run("export", tiny_student_run, "--out", tmp_path / "m.onnx", "--skeleton", "mpii16")
    assert r.exit_code == 0, r.output
    assert read_info(tmp_path / "m.onnx").skeleton == "mpii16"
    x = np.random.default_rng(3).integers(0, 256, (2, 64, 48, 3), dtype=np.uint8)
    native = Teacher(tmp_path / "m.onnx").predict(x, flip_test=False)  # (2, 16, 16, 12)
    unified = StudentPredictor(model, "s", (48, 64), device="cpu").heatmaps(x, False)
    # MPII channel i is the unified channel its name maps to (r_ankle → right_ankle, ...).
    index = list(SKELETONS["mpii16"].to_unified)
    np.testing.assert_allclose(native, unified[:, index], atol=1e-4)
    r = _run("export", tiny_student_run, "--out", tmp_path / "h.onnx", "--skeleton", "halpe26")
    one_line_error(r, "no channel")


def test_export_refuses_a_mismatch(tmp_path, monkeypatch):
    # Nothing can agree within a negative bound.
    monkeypatch.setattr(export_module, "TOLERANCE", -1.0)
    with pytest.raises(UniError, match="differ"):
        export_model(HalfPool(), (48, 64), "x", tmp_path / "x.onnx")
    assert list(tmp_path.iterdir()) == []


def test_export_of_a_missing_run_is_one_line(tmp_path):
    r = _run("export", tmp_path / "nope", "--out", tmp_path / "x.onnx")
    one_line_error(r, "nope")


# --------------------------------------------------------------------------- predict


def test_predict_with_detections(tmp_path, data_dir, tiny_student_run):
    images = sorted((data_dir / "coco/images").glob("*.jpg"))
    dets_file = data_dir / "coco/test_coco_det_AP_H_56.json"
    r = _run("predict", tiny_student_run, *images, "--boxes", dets_file, "--out", tmp_path,
             "--score-threshold", 0.5)
    assert r.exit_code == 0, r.output
    dets = json.loads(dets_file.read_text())
    records = json.loads((tmp_path / "predictions.json").read_text())
    for img in images:
        drawn = cv2.imread(str(tmp_path / f"{img.stem}.png"))
        assert drawn.shape == cv2.imread(str(img)).shape
        image_id = int(img.stem)
        mine = [rec for rec in records if rec["image"] == img.name]
        want = [d for d in dets if d["image_id"] == image_id and d["score"] >= 0.5]
        assert len(mine) == len(want) > 0
        assert sorted(rec["box_score"] for rec in mine) == pytest.approx(
            sorted(d["score"] for d in want))
        assert all(rec["image_id"] == image_id for rec in mine)
    # COCO keypoint results in the student's unified order, which pycocotools reads as they are
    assert all(len(rec["keypoints"]) == 63 and rec["category_id"] == 1 for rec in records)
    assert {(rec["skeleton"], rec["unified"]) for rec in records} == {("unified21", "unified21")}
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(data_dir / "coco/test_coco.json"))
        res = gt.loadRes(str(tmp_path / "predictions.json"))
    assert len(res.getAnnIds()) == len(records)


def test_predict_whole_image_without_boxes(tmp_path, data_dir, tiny_student_run):
    img = data_dir / "mpii/images/005808361.jpg"
    r = _run("predict", tiny_student_run, img, "--out", tmp_path, "--no-flip-test")
    assert r.exit_code == 0, r.output
    (rec,) = json.loads((tmp_path / "predictions.json").read_text())
    h, w = cv2.imread(str(img)).shape[:2]
    assert rec["box"] == [0, 0, w, h] and rec["box_score"] == 1.0
    kp = np.asarray(rec["keypoints"]).reshape(21, 3)
    # Peaks decode inside the padded crop box around the whole image.
    assert (kp[:, 0] > -0.2 * w).all() and (kp[:, 0] < 1.2 * w).all()
    assert (tmp_path / "005808361.png").is_file()


def test_predict_bad_boxes_file(tmp_path, data_dir, tiny_student_run):
    bad = tmp_path / "dets.json"
    bad.write_text(json.dumps([{"image_id": 785, "bbox": [1, 2, -3, 4], "score": 0.9}]))
    r = _run("predict", tiny_student_run, data_dir / "coco/images/000000000785.jpg",
             "--boxes", bad, "--out", tmp_path / "o")
    one_line_error(r, "record 0 field 'bbox'")
