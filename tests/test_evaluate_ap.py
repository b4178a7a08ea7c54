"""`uni evaluate` on COCO: AP equal to pycocotools' own on the same records, OKS accuracy
per keypoint, a missing prediction, OKS-NMS by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
from evaluate_cases import (
    COCO_NAMES,
    COCO_SIGMAS,
    ap_stats,
    coco_sample,
    direct_cocoeval,
    gt_records,
    write,
)

from uniskel.evaluation.evaluate import evaluate
from uniskel.evaluation.oks import oks_nms


def test_ground_truth_scores_100(tmp_path):
    spec, ds = coco_sample()
    r = evaluate([spec], predictions=write(tmp_path / "p.json", gt_records(ds)))[spec]
    assert r["metric"] == "AP" and r["value"] == pytest.approx(100.0)
    assert r["scored_keypoints"] == COCO_NAMES and r["scored"] == "17 of coco17"
    assert all(v == pytest.approx(100.0) for v in r["per_keypoint"].values())
    twice = evaluate([spec, spec], predictions=tmp_path / "p.json")  # the same spec twice
    assert list(twice) == [spec] and twice[spec]["value"] == pytest.approx(100.0)


@pytest.mark.parametrize("jitter,seed", [(2.0, 0), (6.0, 1), (15.0, 2)])
def test_ap_equals_direct_cocoeval(tmp_path, data_dir, jitter, seed):
    spec, ds = coco_sample()
    records = gt_records(ds, jitter, seed)
    r = evaluate([spec], predictions=write(tmp_path / "p.json", records))[spec]
    direct = direct_cocoeval(data_dir / "coco/test_coco.json", records)
    assert ap_stats(r) == pytest.approx(direct, abs=1e-9)
    assert 0 < r["AP"] < 100


def test_per_keypoint_oks_accuracy(tmp_path):
    """Move every labelled left wrist so its keypoint similarity is 0.72: it passes the
    thresholds 0.50 … 0.70 (5 of 10) → 50 %; every other keypoint stays at 100 %."""
    spec, ds = coco_sample()
    records = gt_records(ds)
    lw = COCO_NAMES.index("left_wrist")
    for rec, row in zip(records, range(len(ds.instance_ids)), strict=True):
        if ds.keypoints[row, lw, 2] > 0:
            d = math.sqrt(-math.log(0.72) * 2 * ds.areas[row] * (2 * COCO_SIGMAS[lw]) ** 2)
            rec["keypoints"][3 * lw] += d
    r = evaluate([spec], predictions=write(tmp_path / "p.json", records))[spec]
    assert r["per_keypoint"]["left_wrist"] == pytest.approx(50.0)
    others = [v for k, v in r["per_keypoint"].items() if k != "left_wrist"]
    assert others == pytest.approx([100.0] * 16)


def test_missing_prediction_counts_as_miss(tmp_path):
    spec, ds = coco_sample()
    records = gt_records(ds)[1:]
    r = evaluate([spec], predictions=write(tmp_path / "p.json", records))[spec]
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
