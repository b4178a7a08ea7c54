"""`uni evaluate`: COCO AP against pycocotools itself, the detector-box protocol (rescoring,
OKS-NMS) with a hand-checked AP, PCKh and PCK@0.2 by hand, Halpe, COCO results files."""

from __future__ import annotations

import contextlib
import io
import json
import math

import numpy as np
import pytest
from click.testing import CliRunner

from uniskel.cli import uni
from uniskel.core.datasets import load_dataset
from uniskel.core.skeletons import UNIFIED, UNIFIED_NAMES, get_skeleton, native_to_unified
from uniskel.evaluation import evaluate as ev_mod
from uniskel.evaluation.evaluate import evaluate
from uniskel.evaluation.oks import oks_nms
from uniskel.evaluation.predict import Predictor

# docs/conventions.md "Metrics", written out here so the test does not lean on
# core.skeletons.
COCO_SIGMAS = [.026, .025, .025, .035, .035, .079, .079, .072, .072, .062, .062,
               .107, .107, .087, .087, .089, .089]
COCO_NAMES = list(UNIFIED_NAMES[:17])


def _run(*args: str):
    return CliRunner().invoke(uni, [str(a) for a in args])


@pytest.fixture(scope="module")
def coco(data_dir):
    spec = f"coco:{data_dir}/coco/test_coco.json"
    return spec, load_dataset(spec)


def _flat(kp) -> list[float]:
    return [float(v) for v in np.asarray(kp).reshape(-1)]


def _gt_records(ds, jitter: float = 0.0, seed: int = 0, **extra) -> list[dict]:
    """Ground truth as COCO keypoint results in the dataset's native order (labelled keypoints;
    others at 0, 0), with instance ids, optionally jittered."""
    rng = np.random.default_rng(seed)
    out = []
    for row, iid in enumerate(ds.instance_ids.tolist()):
        gt = ds.keypoints[row]
        kp = np.zeros_like(gt)
        lab = gt[:, 2] > 0
        kp[lab, :2] = gt[lab, :2] + rng.normal(0, jitter, (lab.sum(), 2))
        kp[lab, 2] = rng.uniform(0.3, 1.0, lab.sum()) if jitter else 1.0
        out.append({"image_id": int(ds.image_ids[ds.image_index[row]]), "category_id": 1,
                    "keypoints": _flat(kp), "score": float(rng.uniform(0.2, 1.0)),
                    "instance_id": iid, **extra})
    return out


def _write(path, records) -> str:
    path.write_text(json.dumps(records))
    return str(path)


def _direct_cocoeval(ann_file, records, sigmas=COCO_SIGMAS) -> list[float]:
    """pycocotools on the annotation file and the records as written: nothing from uni."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(ann_file))
        ev = COCOeval(gt, gt.loadRes(records), "keypoints")
        ev.params.kpt_oks_sigmas = np.array(sigmas)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return [None if ev.stats[i] < 0 else 100 * ev.stats[i] for i in range(6)]


def _stats(r) -> list[float]:
    return [r[k] for k in ("AP", "AP50", "AP75", "AP-M", "AP-L", "AR")]


def test_ground_truth_scores_100(coco, tmp_path):
    spec, ds = coco
    r = evaluate([spec], predictions=_write(tmp_path / "p.json", _gt_records(ds)))[spec]
    assert r["metric"] == "AP" and r["value"] == pytest.approx(100.0)
    assert r["scored_keypoints"] == COCO_NAMES and r["scored"] == "17 of coco17"
    assert all(v == pytest.approx(100.0) for v in r["per_keypoint"].values())
    twice = evaluate([spec, spec], predictions=tmp_path / "p.json")  # the same spec twice
    assert list(twice) == [spec] and twice[spec]["value"] == pytest.approx(100.0)


@pytest.mark.parametrize("jitter,seed", [(2.0, 0), (6.0, 1), (15.0, 2)])
def test_ap_equals_direct_cocoeval(coco, tmp_path, data_dir, jitter, seed):
    spec, ds = coco
    records = _gt_records(ds, jitter, seed)
    r = evaluate([spec], predictions=_write(tmp_path / "p.json", records))[spec]
    direct = _direct_cocoeval(data_dir / "coco/test_coco.json", records)
    assert _stats(r) == pytest.approx(direct, abs=1e-9)
    assert 0 < r["AP"] < 100


def test_per_keypoint_oks_accuracy(coco, tmp_path):
    """Move every labelled left wrist so its keypoint similarity is 0.72: it passes the
    thresholds 0.50 … 0.70 (5 of 10) → 50 %; every other keypoint stays at 100 %."""
    spec, ds = coco
    records = _gt_records(ds)
    lw = COCO_NAMES.index("left_wrist")
    for rec, row in zip(records, range(len(ds.instance_ids)), strict=True):
        if ds.keypoints[row, lw, 2] > 0:
            d = math.sqrt(-math.log(0.72) * 2 * ds.areas[row] * (2 * COCO_SIGMAS[lw]) ** 2)
            rec["keypoints"][3 * lw] += d
    r = evaluate([spec], predictions=_write(tmp_path / "p.json", records))[spec]
    assert r["per_keypoint"]["left_wrist"] == pytest.approx(50.0)
    others = [v for k, v in r["per_keypoint"].items() if k != "left_wrist"]
    assert others == pytest.approx([100.0] * 16)


def test_missing_prediction_counts_as_miss(coco, tmp_path):
    spec, ds = coco
    records = _gt_records(ds)[1:]
    r = evaluate([spec], predictions=_write(tmp_path / "p.json", records))[spec]
    assert r["predicted"] == len(ds.instance_ids) - 1
    assert r["AP"] < 100 and min(r["per_keypoint"].values()) < 100


# --------------------------------------------------------------------------- OKS-NMS


def test_oks_nms_by_hand():
    """Two keypoints, σ = 0.1, areas 100: OKS of a shift d on both = exp(-d² / 0.04 / 100 / 2)
    = exp(-d² / 8). A (0.9) at 0; B (0.8) at +0.5 → OKS 0.969 > 0.9 with A: dropped; D (0.7)
    at +1 → OKS 0.8825 with A: kept, although it is within 0.9 of B (B was dropped, and only
    kept results suppress); C (0.95) far away: kept first."""
    base = np.array([[0.0, 0.0], [10.0, 0.0]])
    kps = np.stack([base, base + [0.5, 0], base + [400, 300], base + [1.0, 0]])  # A B C D
    keep = oks_nms(kps, np.array([0.9, 0.8, 0.95, 0.7]), np.full(4, 100.0), np.full(2, 0.1))
    assert keep.tolist() == [2, 0, 3]
    assert math.exp(-1 / 8) == pytest.approx(0.8825, abs=1e-4) and math.exp(-0.25 / 8) > 0.9
    # Threshold 0.8: D (0.8825 > 0.8) goes too.
    keep = oks_nms(kps, np.array([0.9, 0.8, 0.95, 0.7]), np.full(4, 100.0), np.full(2, 0.1),
                   threshold=0.8)
    assert keep.tolist() == [2, 0]


# --------------------------------------------------------------------------- detector boxes


class _Stub(Predictor):
    """Never runs: predict_boxes is replaced by a table of box → keypoints."""

    name, input_wh = "stub", (48, 64)

    def __init__(self):
        self.unified, self.known = UNIFIED, np.ones(21, bool)


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
    return _write(tmp_path / "dets.json", dets)


def test_detection_protocol_hand_checked_ap(coco, tmp_path, data_dir, monkeypatch):
    """12 labelled persons. Kept results by score: TP 0.9, TP 0.8, FP 0.475 (box 0.95 ×
    keypoints 0.5: rescoring moves it below two TPs), TP 0.4, 0.3, 0.2; the 0.85 duplicate is
    gone (OKS-NMS). Precision 1, 1, 2/3, 3/4, 4/5, 5/6 at recall 1/12, 2/12, 2/12, 3/12, 4/12,
    5/12; its envelope is 1 up to recall 2/12 and 5/6 up to 5/12. COCO's 101 recall points:
    0.00 … 0.16 (17 points) at 1, 0.17 … 0.41 (25 points) at 5/6, the rest 0:
    AP = (17 + 25 · 5/6) / 101 = 0.374587. Every TP is exact and the FP far, so every OKS
    threshold gives the same: AP50 = AP75 = AP."""
    spec, ds = coco
    dets = _detection_case(ds, tmp_path, monkeypatch)
    saved = tmp_path / "pred.json"
    r = evaluate([spec], model=_Stub(), boxes=dets, save_to=saved, progress=False)[spec]
    hand = 100 * (17 + 25 * 5 / 6) / 101
    assert r["AP"] == pytest.approx(hand, abs=1e-9) and hand == pytest.approx(37.4587, abs=1e-4)
    assert r["AP50"] == pytest.approx(hand) and r["AP75"] == pytest.approx(hand)
    assert r["boxes"] == "detector" and "per_keypoint" not in r
    records = json.loads(saved.read_text())
    assert len(records) == 6 and not any(rec["box_score"] == 0.85 for rec in records)
    fp = next(rec for rec in records if rec["box_score"] == 0.95)
    assert fp["score"] == pytest.approx(0.475)
    # The saved file is COCO keypoint results: pycocotools alone gives the same numbers.
    assert _stats(r) == pytest.approx(_direct_cocoeval(data_dir / "coco/test_coco.json",
                                                       records), abs=1e-9)
    # The same file scored by uni.
    again = evaluate([spec], predictions=saved)[spec]
    assert _stats(again) == pytest.approx(_stats(r), abs=1e-9)
    # Another tool's plain COCO results (none of uni's fields) read and score the same.
    plain = [{k: rec[k] for k in ("image_id", "category_id", "keypoints", "score")}
             for rec in records]
    other = evaluate([spec], predictions=_write(tmp_path / "plain.json", plain))[spec]
    assert _stats(other) == pytest.approx(_stats(r), abs=1e-9)
    # --box-threshold 0.5 drops the 0.4 / 0.3 / 0.2 boxes: TP, TP, FP → 17 points at 1.
    hi = evaluate([spec], model=_Stub(), boxes=dets, box_threshold=0.5, progress=False)[spec]
    assert hi["AP"] == pytest.approx(100 * 17 / 101, abs=1e-9)


def test_evaluate_boxes_with_a_model(tiny_student_run, data_dir, tmp_path):
    """The real detections sample through a real (untrained) student, end to end."""
    spec = f"coco:{data_dir}/coco/test_coco.json"
    saved = tmp_path / "pred.json"
    r = _run("evaluate", tiny_student_run, "--data", spec, "--boxes",
             data_dir / "coco/test_coco_det_AP_H_56.json", "--save-predictions", saved,
             "--box-threshold", 0.3, "--no-flip-test", "--json")
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)[spec]
    assert set(out) >= {"AP", "AP50", "AP75", "AP-M", "AP-L", "AR"}
    records = json.loads(saved.read_text())
    n_boxes = sum(d["score"] >= 0.3 for d in json.loads(
        (data_dir / "coco/test_coco_det_AP_H_56.json").read_text()))
    assert 0 < len(records) <= n_boxes < 118 and all(len(x["keypoints"]) == 51 for x in records)
    assert _stats(out) == pytest.approx(_direct_cocoeval(data_dir / "coco/test_coco.json",
                                                         records), abs=1e-9)
    table = _run("evaluate", "--predictions", saved, "--data", spec)
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
def test_bad_boxes_file_is_one_line(text, field, coco, tmp_path, tiny_student_run):
    spec, _ = coco
    path = tmp_path / "dets.json"
    path.write_text(text)
    r = _run("evaluate", tiny_student_run, "--data", spec, "--boxes", path, "--json")
    assert r.exit_code == 2, r.output
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and field in lines[0] and r.stdout == ""
    if field != "no person box":
        assert str(path) in lines[0]


# --------------------------------------------------------------------------- MPII PCKh


def _mpii_case(tmp_path, data_dir, with_head_field: bool = True):
    """Two persons from the real MPII sample with head boxes 30×40 (head size 30, threshold
    15 px) and 60×80 (head size 60, threshold 30 px); joint 0 (r_ankle) hidden in person 1."""
    raw = json.loads((data_dir / "mpii/test_mpii.json").read_text())[:2]
    heads = [[10, 20, 40, 60], [100, 100, 160, 180]]  # 1-based, as MPII files are
    raw[1]["joints_vis"][0] = 0
    for rec, hb in zip(raw, heads, strict=True):
        rec["joints_vis"] = [1 if v else 0 for v in rec["joints_vis"]]
        if with_head_field:
            rec["head_box"] = hb
    path = tmp_path / "mpii.json"
    path.write_text(json.dumps(raw))
    return f"mpii:{path}:{data_dir}/mpii/images", heads


# Errors in pixels (along x) per person, by MPII joint name; every other joint is exact.
ERRORS = [{"r_ankle": 20, "l_ankle": 10, "head_top": 15, "pelvis": 100},
          {"l_ankle": 31, "r_knee": 29, "thorax": 50}]


def _mpii_records(ds) -> list[dict]:
    mpii = get_skeleton("mpii16")
    out = []
    for row, errs in enumerate(ERRORS):
        kp = np.c_[ds.keypoints[row, :, :2], np.ones(16)]
        for name, e in errs.items():
            kp[mpii.keypoints.index(name), 0] += e
        out.append({"instance_id": int(ds.instance_ids[row]), "category_id": 1,
                    "image_id": int(ds.image_ids[ds.image_index[row]]),
                    "keypoints": _flat(kp), "score": 1.0})
    return out


def _check_pckh(r) -> None:
    per = r["per_keypoint"]
    # r_ankle: person 0 only (hidden in 1), 20 > 15 → 0 %. l_ankle: 10 ≤ 15 ok, 31 > 30 → 50 %.
    # head_top: exactly 15 ≤ 15 → ok. r_knee: 29 ≤ 30 → ok. pelvis, thorax: one miss each.
    assert per["right_ankle"] == 0.0 and per["left_ankle"] == 50.0
    assert per["head_top"] == 100.0 and per["right_knee"] == 100.0
    assert per["pelvis"] == 50.0 and per["thorax"] == 50.0
    assert per["right_wrist"] == 100.0
    assert "face" not in per and len(per) == 16
    # Mean pools the 14 joints but pelvis/thorax: 27 visible, 25 correct.
    assert r["value"] == pytest.approx(100 * 25 / 27)
    assert r["metric"] == "PCKh@0.5"
    assert set(r["scored_keypoints"]) == set(get_skeleton("mpii16").canonical) - {"pelvis",
                                                                                 "thorax"}
    assert r["groups"]["Ankle"] == 25.0 and r["groups"]["Head"] == 100.0


def test_pckh_hand_computed(tmp_path, data_dir):
    spec, _ = _mpii_case(tmp_path, data_dir)
    ds = load_dataset(spec)
    r = evaluate([spec], predictions=_write(tmp_path / "p.json", _mpii_records(ds)))[spec]
    _check_pckh(r)


def test_pckh_with_head_box_mat(tmp_path, data_dir):
    import scipy.io

    spec, heads = _mpii_case(tmp_path, data_dir, with_head_field=False)
    boxes = np.array(heads, float).reshape(2, 2, 2).transpose(1, 2, 0)  # (2 corners, xy, N)
    scipy.io.savemat(str(tmp_path / "gt.mat"), {"headboxes_src": boxes})
    ds = load_dataset(spec, tmp_path / "gt.mat")
    preds = _write(tmp_path / "p.json", _mpii_records(ds))
    _check_pckh(evaluate([spec], predictions=preds, head_boxes=tmp_path / "gt.mat")[spec])
    r = _run("evaluate", "--predictions", preds, "--data", spec, "--json")
    assert r.exit_code == 2 and "head" in r.stderr and len(r.stderr.strip().splitlines()) == 1


# --------------------------------------------------------------------------- sub-JHMDB PCK


def test_pck_bbox_hand_computed(tmp_path, data_dir):
    """sub-JHMDB: PCK@0.2 of L = max(box w, h). Person 0: head off by exactly 0.2 L (correct),
    neck by 0.21 L (wrong); person 1: right wrist by 0.19 L (correct), left ankle by 0.5 L
    (wrong); person 2 exact. Belly is moved too but no unified21 model predicts it: not scored.
    14 joints × 3 persons = 42 counted, 40 correct → Mean 95.238."""
    spec = f"jhmdb:{data_dir}/jhmdb/test_jhmdb_sub1.json"
    ds = load_dataset(spec)
    sk = ds.skeleton
    moves = [{"head": 0.2, "neck": 0.21, "belly": 3.0}, {"right_wrist": 0.19, "left_ankle": 0.5},
             {}]
    records = []
    for row, move in enumerate(moves):
        kp = ds.keypoints[row].copy()
        kp[:, 2] = 1.0
        length = ds.bboxes[row, 2:].max()
        for name, f in move.items():
            kp[sk.keypoints.index(name), 1] += f * length
        records.append({"instance_id": int(ds.instance_ids[row]), "category_id": 1,
                        "image_id": int(ds.image_ids[ds.image_index[row]]),
                        "keypoints": _flat(kp), "score": 1.0, "unified": "unified21"})
    r = evaluate([spec], predictions=_write(tmp_path / "p.json", records))[spec]
    per = r["per_keypoint"]
    assert r["metric"] == "PCK@0.2" and r["scored"] == "14 of jhmdb15"
    assert per["head_top"] == 100.0 and per["upper_neck"] == pytest.approx(200 / 3)
    assert per["right_wrist"] == 100.0 and per["left_ankle"] == pytest.approx(200 / 3)
    assert per["belly"] is None and "belly" not in r["scored_keypoints"]
    assert r["value"] == pytest.approx(100 * 40 / 42)
    # Without "unified" a results file is scored on every keypoint it has, belly too (person
    # 0's is 3 L off, the others exact: 2 of 3) → 45 counted, 42 correct.
    for rec in records:
        del rec["unified"]
    r = evaluate([spec], predictions=_write(tmp_path / "p.json", records))[spec]
    assert r["scored"] == "15 of jhmdb15" and r["value"] == pytest.approx(100 * 42 / 45)


# --------------------------------------------------------------------------- Halpe


def test_halpe_scores_the_keypoints_the_model_has(tmp_path, data_dir):
    """Halpe-26 with a unified21 model: feet have no unified21 counterpart and this sample
    never labels neck or hip, so 18 keypoints are scored (17 + head_top), Halpe's sigmas."""
    spec = f"halpe:{data_dir}/halpe/test_halpe.json:{data_dir}/coco/images"
    ds = load_dataset(spec)
    records = _gt_records(ds, unified="unified21")
    r = evaluate([spec], predictions=_write(tmp_path / "p.json", records))[spec]
    assert r["scored_keypoints"] == COCO_NAMES + ["head_top"]
    assert r["scored"] == "18 of halpe26" and r["value"] == pytest.approx(100.0)
    # Feet are not scored: moving them changes nothing; moving head_top (Halpe "head") does.
    sk = ds.skeleton
    foot, head = sk.keypoints.index("left_big_toe"), sk.keypoints.index("head")
    for rec in records:
        rec["keypoints"][3 * foot] += 500.0
    same = evaluate([spec], predictions=_write(tmp_path / "p.json", records))[spec]
    assert same["value"] == pytest.approx(100.0)
    for rec in records:
        rec["keypoints"][3 * head + 1] -= 40.0
    moved = evaluate([spec], predictions=_write(tmp_path / "p.json", records))[spec]
    assert moved["value"] < 100.0 and moved["per_keypoint"]["head_top"] < 100.0
    assert moved["per_keypoint"]["nose"] == pytest.approx(100.0)


# --------------------------------------------------------------------------- files and CLI


def test_model_predictions_round_trip(tiny_student_run, data_dir, tmp_path):
    """evaluate MODEL --save-predictions, then --predictions: the same numbers; the saved
    file is COCO results that pycocotools scores alone."""
    coco = f"coco:{data_dir}/coco/test_coco.json"
    halpe = f"halpe:{data_dir}/halpe/test_halpe.json:{data_dir}/coco/images"
    saved = tmp_path / "pred.json"
    r1 = _run("evaluate", tiny_student_run, "--data", coco, "--data", halpe, "--json",
              "--save-predictions", saved, "--no-flip-test")
    assert r1.exit_code == 0, r1.output
    out1 = json.loads(r1.stdout)
    assert set(out1) == {coco, halpe}
    records = json.loads(saved.read_text())
    assert len(records) == 24
    coco_recs = [x for x in records if x["skeleton"] == "coco17"]
    assert len(coco_recs) == 12 and all(len(x["keypoints"]) == 51 for x in coco_recs)
    assert {x["unified"] for x in records} == {"unified21"}
    r2 = _run("evaluate", "--predictions", saved, "--data", coco, "--data", halpe, "--json")
    assert r2.exit_code == 0, r2.output
    assert json.loads(r2.stdout) == out1
    assert _stats(out1[coco]) == pytest.approx(
        _direct_cocoeval(data_dir / "coco/test_coco.json", coco_recs), abs=1e-9)
    table = _run("evaluate", "--predictions", saved, "--data", coco)
    assert table.exit_code == 0 and "left_wrist" in table.stdout


def test_results_in_another_order_are_mapped_by_name(coco, tmp_path):
    """Records in unified21 order ("skeleton": "unified21", as predict writes) score as the
    same keypoints in COCO order."""
    spec, ds = coco
    records = _gt_records(ds)
    for rec in records:
        native = np.array(rec["keypoints"]).reshape(17, 3)
        rec["keypoints"] = _flat(native_to_unified(native, ds.skeleton))
        rec["skeleton"] = "unified21"
    r = evaluate([spec], predictions=_write(tmp_path / "p.json", records))[spec]
    assert r["value"] == pytest.approx(100.0)


def _bad(case, coco_ds):
    ok = _gt_records(coco_ds)
    nested = np.array(ok[0]["keypoints"]).reshape(17, 3).tolist()
    cases = {
        "not_json": "[{",
        "not_list": json.dumps({"a": 1}),
        "nested_keypoints": json.dumps([{**ok[0], "keypoints": nested}]),
        "short_keypoints": json.dumps([{**ok[0], "keypoints": ok[0]["keypoints"][:48]}]),
        "nan": json.dumps([{**ok[0], "score": float("nan")}]),
        "unknown_instance": json.dumps([{**ok[0], "instance_id": 123}]),
        "unknown_image": json.dumps([{**ok[0], "image_id": 5}]),
        "wrong_image": json.dumps([{**ok[0], "image_id": ok[-1]["image_id"]}]),
        "duplicate": json.dumps([ok[0], ok[0]]),
        "no_score": json.dumps([{k: v for k, v in ok[0].items() if k != "score"}]),
        "other_dataset": json.dumps([{**ok[0], "dataset_id": "ab" * 32}]),
        "unknown_skeleton": json.dumps([{**ok[0], "skeleton": "nope17"}]),
        "mixed_boxes": json.dumps([ok[0], {k: v for k, v in ok[1].items()
                                           if k != "instance_id"}]),
        "empty": "[]",
    }
    return cases[case]


@pytest.mark.parametrize("case", ["not_json", "not_list", "nested_keypoints", "short_keypoints",
                                  "nan", "unknown_instance", "unknown_image", "wrong_image",
                                  "duplicate",
                                  "no_score", "other_dataset", "unknown_skeleton", "mixed_boxes",
                                  "empty"])
def test_bad_predictions_file_is_one_line_exit_2(case, coco, tmp_path):
    spec, ds = coco
    path = tmp_path / "bad.json"
    path.write_text(_bad(case, ds))
    r = _run("evaluate", "--predictions", path, "--data", spec, "--json")
    assert r.exit_code == 2, r.output
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and str(path) in lines[0] and r.stdout == ""


def test_model_xor_predictions(coco, tmp_path, tiny_student_run):
    spec, _ = coco
    assert _run("evaluate", "--data", spec).exit_code == 2
    p = _write(tmp_path / "p.json", _gt_records(coco[1]))
    r = _run("evaluate", tiny_student_run, "--predictions", p, "--data", spec)
    assert r.exit_code == 2 and "either" in r.stderr
    r = _run("evaluate", "--predictions", p, "--boxes", p, "--data", spec)
    assert r.exit_code == 2 and "--boxes" in r.stderr


def test_boxes_refused_for_pck_datasets(tmp_path, data_dir, tiny_student_run):
    r = _run("evaluate", tiny_student_run, "--data", f"jhmdb:{data_dir}/jhmdb/test_jhmdb_sub1.json",
             "--boxes", data_dir / "coco/test_coco_det_AP_H_56.json")
    assert r.exit_code == 2 and "PCK@0.2" in r.stderr


def test_synthetic_sets_ground_truth_is_perfect(synth_dir, tmp_path):
    """The synthetic val sets (real formats) evaluate end to end: GT as predictions → 100."""
    specs = [f"{kind}:{synth_dir}/{kind}/val.json" for kind in ("coco", "mpii", "halpe")]
    records = []
    for ds in ev_mod.load_datasets(specs):
        records += _gt_records(ds, dataset_id=ds.dataset_id)
    r = _run("evaluate", "--predictions", _write(tmp_path / "p.json", records), "--json",
             *[a for s in specs for a in ("--data", s)])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert [out[s]["metric"] for s in specs] == ["AP", "PCKh@0.5", "AP"]
    assert [out[s]["value"] for s in specs] == pytest.approx([100.0] * 3)


# --------------------------------------------------------------------------- every dataset kind

KINDS = {  # spec, scored (unified21 model), metric; samples/README.md has the counts
    "aic": ("aic:{d}/aic/test_aic.json", "14 of aic14", "AP"),
    "crowdpose": ("crowdpose:{d}/crowdpose/test_crowdpose.json", "14 of crowdpose14", "AP"),
    "jhmdb": ("jhmdb:{d}/jhmdb/test_jhmdb_sub1.json", "14 of jhmdb15", "PCK@0.2"),
    # PoseTrack18 never labels the ears.
    "posetrack18": ("posetrack18:{d}/posetrack18/test_posetrack18_val.json", "15 of posetrack17",
                    "AP"),
}


def _direct_on_copy(ds, records, tmp_path) -> list[float]:
    """pycocotools on a copy of the annotation file with what pycocotools requires and these
    files leave out ('area' = box w × h, 'iscrowd' 0, num_keypoints = labelled count), the
    kind's sigmas."""
    raw = json.loads(ds.spec.annotations.read_text())
    for a in raw["annotations"]:
        a.setdefault("area", a["bbox"][2] * a["bbox"][3])
        a["iscrowd"] = int(a.get("iscrowd", 0))
        a["num_keypoints"] = sum(v > 0 for v in a["keypoints"][2::3])
    raw.setdefault("categories", [{"id": 1, "name": "person"}])
    path = tmp_path / "gt_copy.json"
    path.write_text(json.dumps(raw))
    return _direct_cocoeval(path, records, list(ds.skeleton.sigmas))


def test_model_on_every_kind(tiny_student_run, data_dir, tmp_path):
    """A student over aic, crowdpose, jhmdb and posetrack18 at once: each by its metric, its
    scored keypoints said; the AP ones equal pycocotools on the file with its own sigmas (an
    untrained student scores about 0: test_jittered_ground_truth_on_every_kind has values)."""
    specs = {k: v[0].format(d=data_dir) for k, v in KINDS.items()}
    saved = tmp_path / "pred.json"
    r = _run("evaluate", tiny_student_run, *[a for s in specs.values() for a in ("--data", s)],
             "--json", "--no-flip-test", "--save-predictions", saved)
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    records = json.loads(saved.read_text())
    for kind, (_, scored, metric) in KINDS.items():
        res = out[specs[kind]]
        assert (res["scored"], res["metric"]) == (scored, metric)
        assert 0 <= res["value"] <= 100
        if metric == "AP":
            ds = load_dataset(specs[kind])
            mine = [x for x in records if x["dataset_id"] == ds.dataset_id]
            assert len(mine) == len(ds.instance_ids)
            assert _stats(res) == pytest.approx(_direct_on_copy(ds, mine, tmp_path), abs=1e-9)
    table = _run("evaluate", "--predictions", saved, "--data", specs["aic"])
    assert table.exit_code == 0 and "14 of aic14" in table.stdout


@pytest.mark.parametrize("kind", list(KINDS))
def test_jittered_ground_truth_on_every_kind(kind, data_dir, tmp_path):
    """Ground truth scores 100; jittered by 10 px, AP equals pycocotools with the kind's own
    sigmas (AIC's are 3–8× tighter than COCO's: AP 22 there, 70–80 on the others)."""
    spec = KINDS[kind][0].format(d=data_dir)
    ds = load_dataset(spec)
    r = evaluate([spec], predictions=_write(tmp_path / "p.json", _gt_records(ds)))[spec]
    assert r["value"] == pytest.approx(100.0)
    per = [v for v in r["per_keypoint"].values() if v is not None]
    assert per == pytest.approx([100.0] * len(per))
    if KINDS[kind][2] == "AP":
        records = _gt_records(ds, jitter=10.0, seed=3)
        r = evaluate([spec], predictions=_write(tmp_path / "p.json", records))[spec]
        assert 0 < r["AP"] < 100
        assert _stats(r) == pytest.approx(_direct_on_copy(ds, records, tmp_path), abs=1e-9)


def test_crowdpose_ap_by_crowd_index(data_dir, tmp_path):
    """CrowdPose's easy / medium / hard AP (crowdposetools: crowd index < 0.2, < 0.8, else):
    pycocotools on each class's images alone. The sample's two images (0.33, 0.39) are both
    medium; set to 0.05 and 0.9 they split into one easy and one hard image."""
    spec = KINDS["crowdpose"][0].format(d=data_dir)
    ds = load_dataset(spec)
    records = _gt_records(ds, jitter=10.0, seed=4)
    r = evaluate([spec], predictions=_write(tmp_path / "p.json", records))[spec]
    assert r["crowd_images"] == {"easy": 0, "medium": 2, "hard": 0}
    assert r["AP-medium"] == pytest.approx(r["AP"], abs=1e-9) and 0 < r["AP"] < 100
    assert r["AP-easy"] is None and r["AP-hard"] is None
    assert "AP-medium" in ev_mod.format_results({spec: r})
    raw = json.loads(ds.spec.annotations.read_text())
    for im, ci in zip(raw["images"], (0.05, 0.9), strict=True):
        im["crowdIndex"] = ci
    path = tmp_path / "cp.json"
    path.write_text(json.dumps(raw))
    split = f"crowdpose:{path}:{data_dir}/crowdpose/images"
    r = evaluate([split], predictions=_write(tmp_path / "p.json", records))[split]
    assert r["crowd_images"] == {"easy": 1, "medium": 0, "hard": 1} and r["AP-medium"] is None
    for cls, image in (("AP-easy", raw["images"][0]), ("AP-hard", raw["images"][1])):
        one = {**raw, "images": [image],
               "annotations": [a for a in raw["annotations"] if a["image_id"] == image["id"]]}
        alone = load_dataset(f"crowdpose:{_write(tmp_path / 'one.json', one)}:"
                             f"{data_dir}/crowdpose/images")
        mine = [x for x in records if x["image_id"] == image["id"]]
        assert r[cls] == pytest.approx(_direct_on_copy(alone, mine, tmp_path)[0], abs=1e-9)
    assert r["AP-easy"] != r["AP-hard"]
    line = next(x for x in ev_mod.format_results({split: r}).splitlines()
                if "by crowd index" in x)
    assert "AP-medium — (0 images)" in line and "AP-easy" in line


def test_posetrack_detections_in_ignore_regions_are_dropped(data_dir, tmp_path, monkeypatch):
    """The real PoseTrack18 detections at --box-threshold 0.3: 119 boxes, of which 71 have
    their centre inside an ignore polygon of their frame (cv2.pointPolygonTest here); only the
    48 others reach the model and the results."""
    import cv2

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
    r = evaluate([spec], model=_Stub(), boxes=dets_path, box_threshold=0.3, save_to=saved,
                 progress=False)[spec]
    assert len(seen) == len(outside) == 48
    records = json.loads(saved.read_text())
    assert {tuple(rec["box"]) for rec in records} <= {tuple(b) for b in outside}
    assert r["boxes"] == "detector" and r["AP"] == 0.0


def test_unified27_student_scores_halpe_feet(tmp_path, data_dir):
    """A student of unified27 (21 + 6 feet): on Halpe it is scored on the feet too (24 of
    halpe26: this sample never labels neck or hip), on COCO on the 17; its predictions file
    names unified27 and reads back to the same numbers."""
    import torch

    from uniskel.core.skeletons import known_unified
    from uniskel.student.models import build_model

    u27 = known_unified()["unified27"]
    torch.manual_seed(0)
    model = build_model("tiny", u27.num_keypoints)
    run = tmp_path / "u27"
    run.mkdir()
    torch.save({"model": model.state_dict(), "config": {"model": "tiny", "input_wh": [48, 64]},
                "unified": u27.to_json()}, run / "best.pt")
    halpe = f"halpe:{data_dir}/halpe/test_halpe.json:{data_dir}/coco/images"
    coco = f"coco:{data_dir}/coco/test_coco.json"
    saved = tmp_path / "pred.json"
    out = evaluate([halpe, coco], model=run, flip_test=False, progress=False, save_to=saved)
    assert out[halpe]["scored"] == "24 of halpe26" and out[coco]["scored"] == "17 of coco17"
    assert "left_heel" in out[halpe]["per_keypoint"]
    records = json.loads(saved.read_text())
    assert {x["unified"] for x in records} == {"unified27"}
    assert evaluate([halpe, coco], predictions=saved) == out
