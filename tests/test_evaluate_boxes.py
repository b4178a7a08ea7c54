"""`uni evaluate --boxes`: the detector-box protocol (rescoring, OKS-NMS) with a hand-checked AP,
a real detections file through a real student, bad detection files, PoseTrack ignore regions."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from conftest import one_line_error
from evaluate_cases import (
    KINDS,
    StubPredictor,
    ap_stats,
    cli,
    coco_sample,
    direct_cocoeval,
    write,
)

from uniskel.core.skeletons import native_to_unified
from uniskel.evaluation import evaluate as ev_mod
from uniskel.evaluation.evaluate import evaluate


def _detection_case(ds, tmp_path, monkeypatch):
    """Boxes and the keypoints the 'model' returns for each, on the 12 labelled COCO persons
    (rows in ascending annotation id). Every keypoint score is 1 except the false positive's."""
    gt = native_to_unified(ds.keypoints, ds.skeleton)  # (12, 21, 3)
    table, dets = {}, []

    def box(row, score, kp, shift=0.0, category=1):
        b = (ds.bboxes[row] + [shift, 0, 0, 0]).tolist()
        dets.append({"image_id": int(ds.image_ids[ds.image_index[row]]), "category_id": category,
                     "bbox": b, "score": score})
        table[tuple(np.round(b, 6))] = kp

    exact = lambda row, dx=0.0: np.c_[gt[row, :, :2] + [dx, 0], np.ones(21)]  # noqa: E731
    for row, score in [(0, 0.9), (1, 0.8), (2, 0.4), (3, 0.3), (4, 0.2)]:
        box(row, score, exact(row))
    box(0, 0.85, exact(0, 1.0), shift=1.0)  # a duplicate of row 0, 1 px off: OKS-NMS drops it
    far = exact(6, 5000.0)  # nowhere near anyone: a false positive, rescored 0.95 × 0.5
    far[:, 2] = 0.5
    box(6, 0.95, far)
    box(7, 0.99, exact(7), category=2)  # not a person box: ignored
    monkeypatch.setattr(ev_mod, "predict_boxes", lambda p, items, *a, **k: np.stack(
        [table[tuple(np.round(np.asarray(b, float), 6))] for _, b in items]))
    return write(tmp_path / "dets.json", dets)


def test_detection_protocol_hand_checked_ap(tmp_path, data_dir, monkeypatch):
    """12 labelled persons. Kept results by score: TP 0.9, TP 0.8, FP 0.475 (box 0.95 ×
    keypoints 0.5: rescoring moves it below two TPs), TP 0.4, 0.3, 0.2; the 0.85 duplicate is
    gone (OKS-NMS). Precision 1, 1, 2/3, 3/4, 4/5, 5/6 at recall 1/12, 2/12, 2/12, 3/12, 4/12,
    5/12; its envelope is 1 up to recall 2/12 and 5/6 up to 5/12. COCO's 101 recall points:
    0.00 … 0.16 (17 points) at 1, 0.17 … 0.41 (25 points) at 5/6, the rest 0:
    AP = (17 + 25 · 5/6) / 101 = 0.374587. Every TP is exact and the FP far, so every OKS
    threshold gives the same: AP50 = AP75 = AP."""
    spec, ds = coco_sample()
    dets = _detection_case(ds, tmp_path, monkeypatch)
    saved = tmp_path / "pred.json"
    r = evaluate([spec], model=StubPredictor(), boxes=dets, save_to=saved, progress=False)[spec]
    hand = 100 * (17 + 25 * 5 / 6) / 101
    assert r["AP"] == pytest.approx(hand, abs=1e-9) and hand == pytest.approx(37.4587, abs=1e-4)
    assert r["AP50"] == pytest.approx(hand) and r["AP75"] == pytest.approx(hand)
    assert r["boxes"] == "detector" and "per_keypoint" not in r
    records = json.loads(saved.read_text())
    assert len(records) == 6 and not any(rec["box_score"] == 0.85 for rec in records)
    fp = next(rec for rec in records if rec["box_score"] == 0.95)
    assert fp["score"] == pytest.approx(0.475)
    # The saved file is COCO keypoint results: pycocotools alone gives the same numbers.
    assert ap_stats(r) == pytest.approx(direct_cocoeval(data_dir / "coco/test_coco.json",
                                                        records), abs=1e-9)
    # The same file scored by uni.
    again = evaluate([spec], predictions=saved)[spec]
    assert ap_stats(again) == pytest.approx(ap_stats(r), abs=1e-9)
    # Another tool's plain COCO results (none of uni's fields) read and score the same.
    plain = [{k: rec[k] for k in ("image_id", "category_id", "keypoints", "score")}
             for rec in records]
    other = evaluate([spec], predictions=write(tmp_path / "plain.json", plain))[spec]
    assert ap_stats(other) == pytest.approx(ap_stats(r), abs=1e-9)
    # --box-threshold 0.5 drops the 0.4 / 0.3 / 0.2 boxes: TP, TP, FP → 17 points at 1.
    hi = evaluate([spec], model=StubPredictor(), boxes=dets, box_threshold=0.5,
                  progress=False)[spec]
    assert hi["AP"] == pytest.approx(100 * 17 / 101, abs=1e-9)


def test_evaluate_boxes_with_a_model(tiny_student_run, data_dir, tmp_path):
    """The real detections sample through a real (untrained) student, end to end."""
    spec = f"coco:{data_dir}/coco/test_coco.json"
    saved = tmp_path / "pred.json"
    r = cli("evaluate", tiny_student_run, "--data", spec, "--boxes",
            data_dir / "coco/test_coco_det_AP_H_56.json", "--save-predictions", saved,
            "--box-threshold", 0.3, "--no-flip-test", "--json")
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)[spec]
    assert set(out) >= {"AP", "AP50", "AP75", "AP-M", "AP-L", "AR"}
    records = json.loads(saved.read_text())
    n_boxes = sum(d["score"] >= 0.3 for d in json.loads(
        (data_dir / "coco/test_coco_det_AP_H_56.json").read_text()))
    assert 0 < len(records) <= n_boxes < 118 and all(len(x["keypoints"]) == 51 for x in records)
    assert ap_stats(out) == pytest.approx(direct_cocoeval(data_dir / "coco/test_coco.json",
                                                          records), abs=1e-9)
    table = cli("evaluate", "--predictions", saved, "--data", spec)
    assert table.exit_code == 0 and "AP-M" in table.stdout and "detector boxes" in table.stdout


@pytest.mark.parametrize("text,field", [
    ('{"a": 1}', "list"),
    ('[{"image_id": 785, "bbox": [1, 2, 3]}]', "'bbox'"),
    ('[{"image_id": 785, "bbox": [1, 2, 0, 4], "score": 0.5}]', "'bbox'"),
    ('[{"image_id": "785", "bbox": [1, 2, 3, 4]}]', "'image_id'"),
    ('[{"image_id": 785, "bbox": [1, 2, 3, 4], "score": "high"}]', "'score'"),
    ('[{"bbox": [1, 2, 3, 4]}]', "'image_id'"),
    ('[{"image_id": 785, "bbox": [1, 2, 3, 4]}, 7]', "record 1"),
    ('[{"image_id": 1, "bbox": [1, 2, 3, 4]}]', "no person box"),
])
def test_bad_boxes_file_is_one_line(text, field, tmp_path, tiny_student_run):
    spec, _ = coco_sample()
    path = tmp_path / "dets.json"
    path.write_text(text)
    r = cli("evaluate", tiny_student_run, "--data", spec, "--boxes", path, "--json")
    line = one_line_error(r, field)
    assert r.stdout == ""
    if field != "no person box":
        assert str(path) in line


def test_posetrack_detections_in_ignore_regions_are_dropped(data_dir, tmp_path, monkeypatch):
    """The real PoseTrack18 detections at --box-threshold 0.3: 119 boxes, of which 71 have
    their centre inside an ignore polygon of their frame (cv2.pointPolygonTest here); only the
    48 others reach the model and the results."""
    spec = KINDS["posetrack18"][0].format(d=data_dir)
    dets_path = data_dir / "posetrack18/test_posetrack18_human_detections.json"
    raw = json.loads((data_dir / "posetrack18/test_posetrack18_val.json").read_text())
    polys = {im["id"]: [np.c_[x, y].astype(np.float32) for x, y in zip(
        im["ignore_regions_x"], im["ignore_regions_y"], strict=True)] for im in raw["images"]}
    outside = []
    for d in json.loads(dets_path.read_text()):
        x, y, w, h = d["bbox"]
        if d["score"] >= 0.3 and not any(cv2.pointPolygonTest(
                p, (x + w / 2, y + h / 2), False) > 0 for p in polys[d["image_id"]]):
            outside.append([round(v, 2) for v in d["bbox"]])
    seen = []

    def fake(_predictor, items, *a, **k):
        seen.extend(np.asarray(b).tolist() for _, b in items)
        return np.zeros((len(items), 21, 3))

    monkeypatch.setattr(ev_mod, "predict_boxes", fake)
    saved = tmp_path / "pred.json"
    r = evaluate([spec], model=StubPredictor(), boxes=dets_path, box_threshold=0.3, save_to=saved,
                 progress=False)[spec]
    assert len(seen) == len(outside) == 48
    records = json.loads(saved.read_text())
    assert {tuple(rec["box"]) for rec in records} <= {tuple(b) for b in outside}
    assert r["boxes"] == "detector" and r["AP"] == 0.0
