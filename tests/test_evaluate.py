"""`uni evaluate`: COCO AP against pycocotools itself, PCKh by hand, Halpe, predictions files."""

from __future__ import annotations

import contextlib
import io
import json
import math

import numpy as np
import pytest
from click.testing import CliRunner

from uniskel.cli import uni
from uniskel.pipeline.datasets import load_dataset
from uniskel.pipeline.skeletons import SKELETONS, UNIFIED_NAMES
from uniskel.student.evaluate import evaluate

# docs/conventions.md "Metrics", written out here so the test does not lean on
# pipeline.skeletons.
COCO_SIGMAS = [.026, .025, .025, .035, .035, .079, .079, .072, .072, .062, .062,
                    .107, .107, .087, .087, .089, .089]


def _run(*args: str):
    return CliRunner().invoke(uni, [str(a) for a in args])


@pytest.fixture(scope="module")
def coco(data_dir):
    spec = f"coco:{data_dir}/coco/test_coco.json"
    return spec, load_dataset(spec)


def _gt_records(ds, jitter: float = 0.0, seed: int = 0) -> list[dict]:
    """Ground truth as predictions (labelled keypoints; others at 0, 0), optionally jittered."""
    rng = np.random.default_rng(seed)
    out = []
    for inst in ds.instances:
        kp = np.zeros((21, 3))
        lab = inst.unified[:, 2] > 0
        kp[lab, :2] = inst.unified[lab, :2] + rng.normal(0, jitter, (lab.sum(), 2))
        kp[lab, 2] = rng.uniform(0.3, 1.0, lab.sum()) if jitter else 1.0
        out.append({"instance_id": inst.instance_id, "image_id": inst.image_id,
                    "keypoints": kp.tolist(), "score": float(rng.uniform(0.2, 1.0))})
    return out


def _write(path, records) -> str:
    path.write_text(json.dumps(records))
    return str(path)


def _direct_cocoeval(ann_file, records) -> list[float]:
    """pycocotools on the annotation file, with nothing from uni but the records."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    results = [{"image_id": r["image_id"], "category_id": 1, "score": r["score"],
                "keypoints": [v for x, y, s in r["keypoints"][:17] for v in (x, y, s)]}
               for r in records]
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(ann_file))
        ev = COCOeval(gt, gt.loadRes(results), "keypoints")
        ev.params.kpt_oks_sigmas = np.array(COCO_SIGMAS)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return [100 * ev.stats[i] for i in (0, 1, 2, 5)]


def test_ground_truth_scores_100(coco, tmp_path):
    spec, ds = coco
    r = evaluate([spec], predictions=_write(tmp_path / "p.json", _gt_records(ds)))[spec]
    assert r["metric"] == "AP" and r["value"] == pytest.approx(100.0)
    assert r["scored_keypoints"] == list(UNIFIED_NAMES[:17])
    assert all(v == pytest.approx(100.0) for v in r["per_keypoint"].values())


@pytest.mark.parametrize("jitter,seed", [(2.0, 0), (6.0, 1), (15.0, 2)])
def test_ap_equals_direct_cocoeval(coco, tmp_path, data_dir, jitter, seed):
    spec, ds = coco
    records = _gt_records(ds, jitter, seed)
    r = evaluate([spec], predictions=_write(tmp_path / "p.json", records))[spec]
    direct = _direct_cocoeval(data_dir / "coco/test_coco.json", records)
    assert [r["AP"], r["AP50"], r["AP75"], r["AR"]] == pytest.approx(direct, abs=1e-9)
    assert 0 < r["AP"] < 100


def test_per_keypoint_oks_accuracy(coco, tmp_path):
    """Move every labelled left wrist so its keypoint similarity is 0.72: it passes the
    thresholds 0.50 … 0.70 (5 of 10) → 50 %; every other keypoint stays at 100 %."""
    spec, ds = coco
    records = _gt_records(ds)
    lw = UNIFIED_NAMES.index("left_wrist")
    for rec, inst in zip(records, ds.instances, strict=True):
        if inst.unified[lw, 2] > 0:
            d = math.sqrt(-math.log(0.72) * 2 * inst.area * (2 * COCO_SIGMAS[lw]) ** 2)
            rec["keypoints"][lw][0] += d
    r = evaluate([spec], predictions=_write(tmp_path / "p.json", records))[spec]
    assert r["per_keypoint"]["left_wrist"] == pytest.approx(50.0)
    others = [v for k, v in r["per_keypoint"].items() if k != "left_wrist"]
    assert others == pytest.approx([100.0] * 16)


def test_missing_prediction_counts_as_miss(coco, tmp_path):
    spec, ds = coco
    records = _gt_records(ds)[1:]
    r = evaluate([spec], predictions=_write(tmp_path / "p.json", records))[spec]
    assert r["predicted"] == len(ds.instances) - 1
    assert r["AP"] < 100 and min(r["per_keypoint"].values()) < 100


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
    mpii = SKELETONS["mpii16"]
    out = []
    for inst, errs in zip(ds.instances, ERRORS, strict=True):
        kp = np.c_[inst.unified[:, :2], np.ones(21)]
        for name, e in errs.items():
            kp[mpii.to_unified[mpii.keypoints.index(name)], 0] += e
        out.append({"instance_id": inst.instance_id, "image_id": inst.image_id,
                    "keypoints": kp.tolist(), "score": 1.0})
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
    assert set(r["scored_keypoints"]) == {UNIFIED_NAMES[u] for u in
                                          SKELETONS["mpii16"].to_unified} - {"pelvis", "thorax"}
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


# --------------------------------------------------------------------------- Halpe


def test_halpe_scores_the_20_mapped_keypoints(tmp_path, data_dir):
    spec = f"halpe:{data_dir}/halpe/test_halpe.json:{data_dir}/coco/images"
    ds = load_dataset(spec)
    records = _gt_records(ds)
    r = evaluate([spec], predictions=_write(tmp_path / "p.json", records))[spec]
    assert r["scored_keypoints"] == [n for n in UNIFIED_NAMES if n != "thorax"]
    assert r["value"] == pytest.approx(100.0)
    # Thorax is not scored: moving it changes nothing; moving head_top (Halpe "head") does.
    th, ht = UNIFIED_NAMES.index("thorax"), UNIFIED_NAMES.index("head_top")
    for rec in records:
        rec["keypoints"][th] = [5000.0, 5000.0, 1.0]
    same = evaluate([spec], predictions=_write(tmp_path / "p.json", records))[spec]
    assert same["value"] == pytest.approx(100.0)
    for rec in records:
        rec["keypoints"][ht][1] -= 40.0
    moved = evaluate([spec], predictions=_write(tmp_path / "p.json", records))[spec]
    assert moved["value"] < 100.0 and moved["per_keypoint"]["head_top"] < 100.0
    assert moved["per_keypoint"]["nose"] == pytest.approx(100.0)


# --------------------------------------------------------------------------- files and CLI


def test_model_predictions_round_trip(tiny_student_run, data_dir, tmp_path):
    """evaluate MODEL --save-predictions, then --predictions: the same numbers."""
    coco = f"coco:{data_dir}/coco/test_coco.json"
    halpe = f"halpe:{data_dir}/halpe/test_halpe.json:{data_dir}/coco/images"
    saved = tmp_path / "pred.json"
    r1 = _run("evaluate", tiny_student_run, "--data", coco, "--data", halpe, "--json",
              "--save-predictions", saved)
    assert r1.exit_code == 0, r1.output
    out1 = json.loads(r1.stdout)
    assert set(out1) == {coco, halpe}
    records = json.loads(saved.read_text())
    assert len(records) == 24 and all(len(rec["keypoints"]) == 21 for rec in records)
    r2 = _run("evaluate", "--predictions", saved, "--data", coco, "--data", halpe, "--json")
    assert r2.exit_code == 0, r2.output
    assert json.loads(r2.stdout) == out1
    # The saved file is what pycocotools sees.
    coco_recs = records[:12]
    assert out1[coco]["AP"] == pytest.approx(
        _direct_cocoeval(data_dir / "coco/test_coco.json", coco_recs)[0], abs=1e-9)
    table = _run("evaluate", "--predictions", saved, "--data", coco)
    assert table.exit_code == 0 and "left_wrist" in table.stdout


def _bad(records_or_text, coco_ds):
    ok = _gt_records(coco_ds)
    cases = {
        "not_json": "[{",
        "not_list": json.dumps({"a": 1}),
        "short_keypoints": json.dumps([{**ok[0], "keypoints": ok[0]["keypoints"][:17]}]),
        "nan": json.dumps([{**ok[0], "score": float("nan")}]),
        "unknown_instance": json.dumps([{**ok[0], "instance_id": 123}]),
        "duplicate": json.dumps([ok[0], ok[0]]),
        "no_score": json.dumps([{k: v for k, v in ok[0].items() if k != "score"}]),
        "other_dataset": json.dumps([{**ok[0], "dataset_id": "ab" * 32}]),
        "empty": "[]",
    }
    return cases[records_or_text]


@pytest.mark.parametrize("case", ["not_json", "not_list", "short_keypoints", "nan",
                                  "unknown_instance", "duplicate", "no_score", "other_dataset",
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


def test_synthetic_sets_ground_truth_is_perfect(synth_dir, tmp_path):
    """The synthetic val sets (real formats) evaluate end to end: GT as predictions → 100."""
    specs = [f"{fmt}:{synth_dir}/{fmt}/val.json" for fmt in ("coco", "mpii", "halpe")]
    from uniskel.student.evaluate import load_datasets

    records = []
    for ds in load_datasets(specs):
        for rec in _gt_records(ds):
            records.append({**rec, "dataset_id": ds.dataset_id})
    r = _run("evaluate", "--predictions", _write(tmp_path / "p.json", records), "--json",
             *[a for s in specs for a in ("--data", s)])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert [out[s]["metric"] for s in specs] == ["AP", "PCKh@0.5", "AP"]
    assert [out[s]["value"] for s in specs] == pytest.approx([100.0] * 3)
