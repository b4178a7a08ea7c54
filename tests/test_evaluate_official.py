"""Each kind scored as its own benchmark scores it: uni's figures against an independent
implementation of the official protocol on the same predictions (issue 22).

Reference: faster-coco-eval's own CrowdPose path (`keypoints_crowd` with use_area=False, its
_summarizeKps_crowd), which reproduces crowdposetools' figures on samples/crowdpose; uni's
evaluation runs faster-coco-eval's plain "keypoints" COCOeval on areas uni computes, so the two
share the library but not the rule. pycocotools on the same 0.53-area files is the second
reference (tests/test_evaluate_kinds.py), and the official figures below are the third.
- CrowdPose: crowdposetools (Jeff-sjtu/CrowdPose, crowdpose-api/PythonAPI/crowdposetools/
  cocoeval.py): OKS and area ranges on 0.53 × box w × h.
- AI Challenger: MMPose's AIC metric, xtcocotools with use_area=False: the same 0.53 × box.
- COCO-WholeBody: jin-s13/COCO-WholeBody evaluation/myeval_body.py / myeval_foot.py (MMPose's
  CocoWholeBodyMetric): body, foot and (uni's whole) body+foot AP, each part alone with its
  sigmas; reference: faster-coco-eval on the part's keypoints alone.
- sub-JHMDB: MMPose's JhmdbPCKAccuracy (mmpose/evaluation/metrics/keypoint_2d_metrics.py);
  reference: its keypoint_pck_accuracy written out here.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from faster_coco_eval import COCO, COCOeval_faster

from uniskel.cli import uni
from uniskel.core.datasets import load_dataset
from uniskel.core.skeletons import get_kind, get_skeleton
from uniskel.evaluation.evaluate import coco_gt, evaluate, format_results, oks_areas
from uniskel.evaluation.oks import coco_eval
from uniskel.evaluation.report import official_notes, report_rows, scored_notes, write_report

# Official figures with the same predictions (BlazePose on the GT boxes, flip test), as issue 22
# reports them from the official tools.
OFFICIAL = {"crowdpose": {"AP": 20.2, "AR": 20.0, "AP(M)": 20.2}, "aic": {"AP": 4.8}}
# faster-coco-eval's stats, named as uni names them. keypoints_crowd (its _summarizeKps_crowd,
# crowdposetools' _summarizeKps order): AP, AP50, AP75, AR, AR50, AR75, AP easy / medium / hard.
# keypoints: pycocotools' order (AP-M, AP-L at 3, 4; AR-M, AR-L, which uni omits, at 8, 9).
STATS = {"keypoints_crowd": ("AP", "AP50", "AP75", "AR", "AR50", "AR75", "AP(E)", "AP(M)",
                             "AP(H)"),
         "keypoints": ("AP", "AP50", "AP75", "AP-M", "AP-L", "AR", "AR50", "AR75")}


def _reference(spec: str, predictions: list, iou_type: str, tmp_path) -> dict[str, float | None]:
    """faster-coco-eval (use_area False, the kind's sigmas) on a copy of the file whose areas
    are 0.53 × box w × h → its stats by uni's names, -1 (nothing to score) as None.
    use_area False makes faster-coco-eval scale OKS by 0.53 × box but bin area ranges on the
    file's 'area'; xtcocotools (MMPose's AIC reference) and crowdposetools bin on 0.53 × box
    too, which the rewritten areas reproduce (AIC's AP-M / AP-L depend on it)."""
    ds = load_dataset(spec)
    raw = json.loads(ds.spec.annotations.read_text())
    for a in raw["annotations"]:
        a["area"] = 0.53 * a["bbox"][2] * a["bbox"][3]
    path = tmp_path / "gt_053.json"
    path.write_text(json.dumps(raw))
    gt = COCO(str(path))
    dt = gt.loadRes(predictions)
    ev = COCOeval_faster(gt, dt, iou_type, kpt_oks_sigmas=list(ds.skeleton.sigmas),
                         use_area=False)
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    return {k: None if v < 0 else 100 * v for k, v in zip(STATS[iou_type], ev.stats,
                                                         strict=False)}


@pytest.mark.parametrize("kind,iou_type", [("crowdpose", "keypoints_crowd"), ("aic", "keypoints")])
def test_use_area_false_kinds_equal_the_official_tools(blazepose, data_dir, tmp_path, kind,
                                                        iou_type):
    """Every figure uni reports for the kind equals faster-coco-eval's to 0.01 (CrowdPose: all
    nine of crowdposetools' summarize, under its names; AP(E) / AP(H) are None on the sample,
    whose two images are both medium), and the kind's official list is exactly those names."""
    spec = f"{kind}:{data_dir / kind / f'test_{kind}.json'}"
    saved = tmp_path / "predictions.json"
    got = evaluate([spec], blazepose, save_to=saved, progress=False)[spec]
    ref = _reference(spec, json.loads(saved.read_text()), iou_type, tmp_path)
    for key, value in ref.items():
        if value is None:
            assert got[key] is None, (key, got[key])
        else:
            assert got[key] == pytest.approx(value, abs=0.01), (key, got[key], value)
    for key, value in OFFICIAL[kind].items():
        assert round(got[key], 1) == value, (key, got[key])
    if kind == "crowdpose":
        assert list(got["official"]) == list(STATS[iou_type])
        assert "AP-M" not in got and "AP-L" not in got
        assert "AP(M)" in format_results({spec: got})


def test_oks_area_rules():
    """COCO keeps the annotated area; CrowdPose and AIC take 0.53 × box w × h, whatever the
    file's area says (a person whose 0.53-scaled OKS falls below a threshold the annotated
    area would pass is scored as the official tools score it)."""
    coco, crowdpose, aic = (get_kind(k) for k in ("coco", "crowdpose", "aic"))
    box = [10.0, 20.0, 100.0, 200.0]
    assert oks_areas(coco, [box], [12345.0]).tolist() == [12345.0]
    assert oks_areas(coco, [box], [np.nan]).tolist() == [20000.0]  # no area in the file
    assert oks_areas(crowdpose, [box], [12345.0]) == pytest.approx([0.53 * 20000])
    assert oks_areas(aic, [box], [12345.0]) == pytest.approx([0.53 * 20000])
    assert get_skeleton(crowdpose.skeleton).num_keypoints == 14


def test_a_person_between_the_two_area_rules():
    """Hand-made: one person, box 100 × 200, one prediction 17 keypoints each off by d px,
    σ = COCO's nose 0.026 everywhere, so OKS = exp(-d² / (2 s (2σ)²)) with s the OKS area. At
    d = 8.4 px the annotated area (20,000) gives OKS 0.521 (a match at 0.5, AP50 100) and
    0.53 × w × h (10,600) gives 0.298 (no match, AP50 0)."""
    sigmas = np.full(17, 0.026)
    box, d = [10.0, 20.0, 100.0, 200.0], 8.4
    kp = np.stack([np.linspace(20, 100, 17), np.linspace(30, 210, 17), np.full(17, 2.0)], 1)
    pred = kp.copy()
    pred[:, 0] += d
    figures = {}
    for kind in ("coco", "crowdpose"):
        area = float(oks_areas(get_kind(kind), [box], [20000.0])[0])
        gt = {"images": [{"id": 1, "width": 200, "height": 300}],
              "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "iscrowd": 0,
                               "bbox": box, "area": area, "num_keypoints": 17,
                               "keypoints": kp.reshape(-1).tolist()}]}
        res = [{"image_id": 1, "category_id": 1, "score": 1.0,
                "keypoints": pred.reshape(-1).tolist()}]
        oks = np.exp(-d ** 2 / (2 * area * (2 * 0.026) ** 2))
        figures[kind] = (oks, coco_eval(gt, res, sigmas)["AP50"])
    assert figures["coco"][0] == pytest.approx(0.521, abs=1e-3) and figures["coco"][1] == 100.0
    assert figures["crowdpose"][0] == pytest.approx(0.292, abs=1e-3)
    assert figures["crowdpose"][1] == 0.0


def test_ground_truth_areas_follow_the_kind(data_dir):
    ds = load_dataset(f"crowdpose:{data_dir / 'crowdpose/test_crowdpose.json'}")
    keep = ds.skeleton.mask(ds.skeleton)
    for a in coco_gt(ds, keep)["annotations"]:
        assert a["area"] == pytest.approx(0.53 * a["bbox"][2] * a["bbox"][3])


# COCO-WholeBody's part sigmas as its evaluation writes them (jin-s13/COCO-WholeBody,
# evaluation/myeval_body.py and myeval_foot.py), here so the test does not lean on core.
WB_BODY_SIGMAS = [.026, .025, .025, .035, .035, .079, .079, .072, .072, .062, .062, .107, .107,
                  .087, .087, .089, .089]
WB_FOOT_SIGMAS = [.068, .066, .066, .092, .094, .094]


def _wholebody_file(data_dir, tmp_path) -> tuple[dict, list[dict]]:
    """The COCO sample as a COCO-WholeBody file (feet beside labelled ankles; every other
    person foot_valid false, foot unlabelled) and predictions: body off by N(0, 3 px), feet by
    N(0, 9 px), so body and foot AP differ."""
    raw = json.loads((data_dir / "coco/test_coco.json").read_text())
    rng = np.random.default_rng(7)
    records = []
    for j, a in enumerate(raw["annotations"]):
        kp = np.array(a["keypoints"], float).reshape(17, 3)
        feet = np.zeros((6, 3))
        if j % 2 == 0 and kp[15, 2] > 0 and kp[16, 2] > 0:
            for side, ankle in ((0, kp[15]), (3, kp[16])):
                feet[side:side + 3] = [[ankle[0] + 8, ankle[1] + 6, 2],
                                       [ankle[0] - 4, ankle[1] + 6, 2],
                                       [ankle[0] - 6, ankle[1] - 2, 2]]
        a["foot_kpts"], a["foot_valid"] = feet.reshape(-1).tolist(), bool(feet[:, 2].any())
        if a.get("iscrowd") or a["num_keypoints"] == 0:
            continue
        pred = np.concatenate([kp, feet])
        lab = pred[:, 2] > 0
        pred[:17, :2] += rng.normal(0, 3.0, (17, 2))
        pred[17:, :2] += rng.normal(0, 9.0, (6, 2))
        pred[~lab, :2] = 0.0
        pred[:, 2] = 1.0
        records.append({"image_id": a["image_id"], "category_id": 1, "instance_id": a["id"],
                        "keypoints": pred.reshape(-1).tolist(),
                        "score": float(rng.uniform(0.3, 1.0))})
    return raw, records


def _part_reference(raw: dict, records: list[dict], part: slice, sigmas: list[float],
                    tmp_path) -> tuple[float, float]:
    """faster-coco-eval (keypoints, the annotated area as COCO-WholeBody uses it) on the
    part's keypoints alone: each person's num_keypoints counts that part's labels, so one
    with none of them labelled is ignored, as myeval_foot.py's k1 == 0 rule does → (AP, AR)."""
    anns = []
    for a in raw["annotations"]:
        kp = np.concatenate([np.array(a["keypoints"], float).reshape(17, 3),
                             np.array(a["foot_kpts"], float).reshape(6, 3)])[part]
        anns.append({**{k: a[k] for k in ("id", "image_id", "bbox", "area", "iscrowd")},
                     "category_id": 1, "keypoints": kp.reshape(-1).tolist(),
                     "num_keypoints": int((kp[:, 2] > 0).sum())})
    gt_json = {"images": raw["images"], "annotations": anns,
               "categories": [{"id": 1, "name": "person"}]}
    path = tmp_path / "part_gt.json"
    path.write_text(json.dumps(gt_json))
    gt = COCO(str(path))
    preds = [{**r, "keypoints": np.array(r["keypoints"]).reshape(23, 3)[part].reshape(-1)
              .tolist()} for r in records]
    for r in preds:
        r.pop("instance_id")
    ev = COCOeval_faster(gt, gt.loadRes(preds), "keypoints", kpt_oks_sigmas=sigmas)
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    return 100 * ev.stats[0], 100 * ev.stats[5]


def test_wholebody_parts_equal_their_reference(data_dir, tmp_path):
    """COCO-WholeBody (jin-s13/COCO-WholeBody evaluation/myeval_body.py, myeval_foot.py;
    MMPose's CocoWholeBodyMetric): body AP on the 17 body keypoints with the body sigmas, foot
    AP on the 6 foot keypoints with the foot sigmas, each COCOeval on that part alone (a person
    whose part has no label, foot_valid false here, is ignored for it), and body+foot AP on
    all 23 (uni's whole). Each equals faster-coco-eval run on the part alone, to 0.01."""
    raw, records = _wholebody_file(data_dir, tmp_path)
    ann = tmp_path / "wb.json"
    ann.write_text(json.dumps(raw))
    preds = tmp_path / "wb_pred.json"
    preds.write_text(json.dumps(records))
    spec = f"coco_wholebody:{ann}:{data_dir}/coco/images"
    got = evaluate([spec], predictions=preds)[spec]
    parts = {"body": (slice(0, 17), WB_BODY_SIGMAS), "foot": (slice(17, 23), WB_FOOT_SIGMAS),
             "body+foot": (slice(0, 23), WB_BODY_SIGMAS + WB_FOOT_SIGMAS)}
    for name, (part, sigmas) in parts.items():
        ap, ar = _part_reference(raw, records, part, sigmas, tmp_path)
        assert got[f"{name} AP"] == pytest.approx(ap, abs=0.01), (name, got[f"{name} AP"], ap)
        assert got[f"{name} AR"] == pytest.approx(ar, abs=0.01), (name, got[f"{name} AR"], ar)
    assert got["body AP"] - got["foot AP"] > 5  # the shifts separate the parts
    assert got["AP"] == got["body+foot AP"] and got["value"] == got["AP"]
    assert list(got["official"]) == ["body AP", "body AR", "foot AP", "foot AR",
                                     "body+foot AP", "body+foot AR"]
    assert "foot AP" in format_results({spec: got})
    r = CliRunner().invoke(uni, ["evaluate", "--predictions", str(preds), "--data", spec,
                                 "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)[spec]["official"] == pytest.approx(got["official"])


def test_report_lists_official_figures(tmp_path):
    """`uni report` puts each kind's official figures, by their official names, between the
    table and the scored-keypoint notes (report.md too); kinds without them add nothing."""
    cp, coco = "crowdpose:d/cp.json", "coco:d/coco.json"
    official = dict(zip(STATS["keypoints_crowd"], [20.2, 40.0, 18.0, 20.0, 41.0, 17.0, None,
                                                    20.2, None], strict=True))
    results = {"m": {cp: {"metric": "AP", "value": 20.2, "scored": "14 of crowdpose14",
                          "official": official},
                     coco: {"metric": "AP", "value": 50.0, "scored": "17 of coco17"}}}
    lines = official_notes(results)
    assert lines == ["crowdpose AP, m: AP 20.20 · AP50 40.00 · AP75 18.00 · AR 20.00 · "
                     "AR50 41.00 · AR75 17.00 · AP(E) — · AP(M) 20.20 · AP(H) —"]
    md = write_report(report_rows(results), tmp_path, scored_notes(results), lines)[0]
    text = md.read_text()
    assert "Official figures" in text and "- " + lines[0] in text
    assert text.index("Official figures") < text.index("Scored keypoints")


def _mmpose_pck(pred: np.ndarray, gt: np.ndarray, mask: np.ndarray, norm: np.ndarray,
                thr: float) -> tuple[np.ndarray, float]:
    """MMPose's keypoint_pck_accuracy (open-mmlab/mmpose, mmpose/evaluation/functional/
    keypoint_eval.py), written out: per joint the share of valid samples with normalised
    distance < thr (-1 where none), and avg_acc = the unweighted mean over valid joints."""
    dist = np.full(mask.shape, -1.0)
    dist[mask] = np.linalg.norm(((pred - gt) / norm[:, None, :])[mask], axis=-1)
    acc = np.array([(d[d != -1] < thr).mean() if (d != -1).any() else -1 for d in dist.T])
    return acc, float(acc[acc >= 0].mean())


def test_jhmdb_mean_is_mmposes_unweighted_mean(data_dir, tmp_path):
    """sub-JHMDB's "Mean" is MMPose's JhmdbPCKAccuracy 'PCK' (mmpose/evaluation/metrics/
    keypoint_2d_metrics.py): keypoint_pck_accuracy's avg_acc, the UNWEIGHTED mean of the
    per-joint PCK@0.2 (norm max(box w, h)) over joints with a visible label, not the pool of
    all joints' hits (MPII's Mean is the pooled one). Unlabelling some joints of some persons
    gives joints different counts, so the two rules differ here; the rows (Head, Sho, …) are
    MMPose's 0.5 × (left + right) too."""
    raw = json.loads((data_dir / "jhmdb/test_jhmdb_sub1.json").read_text())
    for j, a in enumerate(raw["annotations"]):  # neck labelled once, right wrist twice
        for k in ([0] if j < 2 else []) + ([11] if j == 0 else []):
            a["keypoints"][3 * k:3 * k + 3] = [0.0, 0.0, 0.0]
    ann = tmp_path / "jhmdb.json"
    ann.write_text(json.dumps(raw))
    rng = np.random.default_rng(3)
    gt = np.array([a["keypoints"] for a in raw["annotations"]], float).reshape(-1, 15, 3)
    norm = np.array([max(a["bbox"][2:]) for a in raw["annotations"]], float)
    pred = gt[:, :, :2] + rng.normal(0, 0.15, gt[:, :, :2].shape) * norm[:, None, None]
    records = [{"image_id": a["image_id"], "category_id": 1, "instance_id": a["id"],
                "score": 1.0, "keypoints": np.concatenate([p, np.ones((15, 1))], 1)
                .reshape(-1).tolist()} for a, p in zip(raw["annotations"], pred, strict=True)]
    preds = tmp_path / "p.json"
    preds.write_text(json.dumps(records))
    spec = f"jhmdb:{ann}:{data_dir}/jhmdb/images"
    got = evaluate([spec], predictions=preds)[spec]
    mask = gt[:, :, 2] > 0
    acc, avg = _mmpose_pck(pred, gt[:, :, :2], mask, np.stack([norm, norm], 1), 0.2)
    pooled = 100 * sum(((np.linalg.norm(pred - gt[:, :, :2], axis=-1) / norm[:, None] < 0.2)
                        & mask).sum(0)) / mask.sum()
    assert abs(100 * avg - pooled) > 0.5  # the case separates the two rules
    assert got["Mean"] == pytest.approx(100 * avg, abs=0.01) and got["value"] == got["Mean"]
    assert list(got["per_keypoint"].values()) == pytest.approx(100 * acc, abs=0.01)
    rows = {"Head": acc[2], "Sho": (acc[3] + acc[4]) / 2, "Elb": (acc[7] + acc[8]) / 2,
            "Wri": (acc[11] + acc[12]) / 2, "Hip": (acc[5] + acc[6]) / 2,
            "Knee": (acc[9] + acc[10]) / 2, "Ank": (acc[13] + acc[14]) / 2}
    assert got["groups"] == pytest.approx({k: 100 * v for k, v in rows.items()}, abs=0.01)
