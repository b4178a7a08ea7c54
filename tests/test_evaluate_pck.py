"""`uni evaluate` by PCK: MPII PCKh@0.5 (head boxes in the file or a .mat) and sub-JHMDB PCK@0.2
of the box, computed by hand."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import one_line_error
from evaluate_cases import cli, flat, write

from uniskel.core.datasets import load_dataset
from uniskel.core.skeletons import get_skeleton
from uniskel.evaluation.evaluate import evaluate

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
                    "keypoints": flat(kp), "score": 1.0})
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
    r = evaluate([spec], predictions=write(tmp_path / "p.json", _mpii_records(ds)))[spec]
    _check_pckh(r)


def test_pckh_with_head_box_mat(tmp_path, data_dir):
    import scipy.io

    spec, heads = _mpii_case(tmp_path, data_dir, with_head_field=False)
    boxes = np.array(heads, float).reshape(2, 2, 2).transpose(1, 2, 0)  # (2 corners, xy, N)
    scipy.io.savemat(str(tmp_path / "gt.mat"), {"headboxes_src": boxes})
    ds = load_dataset(spec, tmp_path / "gt.mat")
    preds = write(tmp_path / "p.json", _mpii_records(ds))
    _check_pckh(evaluate([spec], predictions=preds, head_boxes=tmp_path / "gt.mat")[spec])
    r = cli("evaluate", "--predictions", preds, "--data", spec, "--json")
    one_line_error(r, "head")


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
                        "keypoints": flat(kp), "score": 1.0, "unified": "unified21"})
    r = evaluate([spec], predictions=write(tmp_path / "p.json", records))[spec]
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
    r = evaluate([spec], predictions=write(tmp_path / "p.json", records))[spec]
    assert r["scored"] == "15 of jhmdb15" and r["value"] == pytest.approx(100 * 42 / 45)
