"""Evaluation on ground-truth person boxes (`uni evaluate`): COCO AP, MPII PCKh@0.5, Halpe AP.

Predictions (also the --save-predictions / --predictions file): a JSON list of
``{"instance_id", "image_id", "keypoints": [[x, y, score] × 21] unified order, "score",
"dataset_id"}``; dataset_id (sha256 of the annotation file) says which --data spec a record
belongs to and may be left out when only one spec is given; records of datasets not given
with --data are skipped.

Metrics (docs/conventions.md "Metrics"):
- coco: OKS AP / AP50 / AP75 / AR by pycocotools COCOeval on the 17 COCO keypoints, against the
  annotation file itself, sigmas UNIFIED_SIGMAS[:17]; instance score = the prediction's "score"
  (student.predict.instance_score: box score 1.0 for GT boxes × mean keypoint score > 0.2).
- halpe: the same on the 20 unified keypoints Halpe-26 maps to (all but thorax), GT re-ordered
  into unified order, sigmas UNIFIED_SIGMAS of those keypoints.
- mpii: PCKh@0.5 — correct when the error ≤ 0.5 × head size (0.6 × head-box diagonal); per joint
  over visible labelled joints; "Mean" pools all joints but pelvis and thorax (correct / count,
  as MMPose and the official MATLAB code weight joints by their counts).
Per-keypoint numbers for AP metrics ("OKS accuracy"): the share of labelled ground-truth
keypoints whose keypoint similarity exp(-d² / (2 · area · (2σ)²)) — the per-keypoint term of OKS —
reaches t, averaged over the AP thresholds t = 0.50, 0.55, …, 0.95; ×100. A missing prediction
counts as wrong. Keypoints a model does not know are predicted at (0, 0) with score 0, so they
score as misses.
"""

from __future__ import annotations

import contextlib
import copy
import io
import math
from pathlib import Path

import numpy as np

from uniskel.pipeline.datasets import Dataset, head_size, load_dataset
from uniskel.pipeline.errors import UniError
from uniskel.pipeline.files import json_int, read_json, write_json
from uniskel.pipeline.skeletons import (
    NUM_UNIFIED,
    SKELETONS,
    UNIFIED_NAMES,
    UNIFIED_SIGMAS,
    native_to_unified,
)
from uniskel.student.predict import Predictor, instance_score, load_predictor, predict_boxes

OKS_THRESHOLDS = np.linspace(0.5, 0.95, 10)  # COCOeval's iouThrs
PCKH_THRESHOLD = 0.5
PER_KEYPOINT_AP = ("OKS accuracy: % of labelled keypoints with keypoint similarity >= t, "
                   "mean over t = 0.50:0.05:0.95")
PER_KEYPOINT_PCKH = "PCKh@0.5: % of visible labelled joints within 0.5 x head size"
MPII_MEAN_EXCLUDES = ("pelvis", "thorax")
# MMPose's summary rows: (label, unified names averaged with equal weight)
MPII_GROUPS = (("Head", ("head_top",)), ("Shoulder", ("left_shoulder", "right_shoulder")),
               ("Elbow", ("left_elbow", "right_elbow")), ("Wrist", ("left_wrist", "right_wrist")),
               ("Hip", ("left_hip", "right_hip")), ("Knee", ("left_knee", "right_knee")),
               ("Ankle", ("left_ankle", "right_ankle")))


# --------------------------------------------------------------------------- predictions files


def prediction_records(dataset: Dataset, keypoints: np.ndarray, known: np.ndarray) -> list[dict]:
    """keypoints (N, 21, 3) for the dataset's rows (in order) → predictions records."""
    image_ids = dataset.image_ids[dataset.image_index].tolist()
    return [{"instance_id": iid, "image_id": image_id,
             "keypoints": kp.tolist(), "score": instance_score(kp, known),
             "dataset_id": dataset.dataset_id}
            for iid, image_id, kp in zip(dataset.instance_ids.tolist(), image_ids, keypoints,
                                         strict=True)]


def save_predictions(path: Path, records: list[dict]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, records, indent=None)
    return path


def _check_record(rec: object, where: str) -> dict:
    if not isinstance(rec, dict):
        raise UniError(f"{where}: expected an object, got {type(rec).__name__}")
    for key in ("instance_id", "keypoints", "score"):
        if key not in rec:
            raise UniError(f"{where}: missing field {key!r}")
    iid = json_int(rec["instance_id"], f"{where} field 'instance_id'")
    try:
        kp = np.asarray(rec["keypoints"], dtype=np.float64)
        score = float(rec["score"])
    except (TypeError, ValueError):
        raise UniError(f"{where}: 'keypoints' must be 21 × [x, y, score] numbers and 'score' "
                       "a number") from None
    if kp.shape != (NUM_UNIFIED, 3):
        raise UniError(f"{where} field 'keypoints': expected {NUM_UNIFIED} × [x, y, score], "
                       f"got shape {list(kp.shape)}")
    if not (np.isfinite(kp).all() and math.isfinite(score)):
        raise UniError(f"{where}: 'keypoints' / 'score' contain NaN or inf")
    dsid = rec.get("dataset_id")
    if dsid is not None and not isinstance(dsid, str):
        raise UniError(f"{where} field 'dataset_id': expected a string")
    return {"instance_id": iid, "image_id": rec.get("image_id"), "keypoints": kp,
            "score": score, "dataset_id": dsid}


def load_predictions(path: Path, datasets: list[Dataset]) -> list[dict[int, dict]]:
    """A predictions file → one {instance_id: record} per dataset (records checked)."""
    path = Path(path)
    data = read_json(path, "predictions file")
    if not isinstance(data, list):
        raise UniError(f"{path}: expected a JSON list of prediction records")
    by_id = {d.dataset_id: k for k, d in enumerate(datasets)}
    ids = [d.by_id() for d in datasets]
    out: list[dict[int, dict]] = [{} for _ in datasets]
    for i, raw in enumerate(data):
        where = f"{path}: record {i}"
        rec = _check_record(raw, where)
        if rec["dataset_id"] is None:
            if len(datasets) != 1:
                raise UniError(f"{where}: no 'dataset_id', needed with several --data specs")
            k = 0
        elif rec["dataset_id"] in by_id:
            k = by_id[rec["dataset_id"]]
        else:
            continue  # a dataset not asked for this time
        ds = datasets[k]
        if rec["instance_id"] in out[k]:
            raise UniError(f"{where} field 'instance_id': duplicate {rec['instance_id']}")
        if rec["instance_id"] not in ids[k]:
            raise UniError(f"{where} field 'instance_id': {rec['instance_id']} is not an "
                           f"evaluated person of {ds.spec.annotations}")
        out[k][rec["instance_id"]] = rec
    for k, ds in enumerate(datasets):
        if not out[k]:
            raise UniError(f"{path}: no predictions for {ds.spec.annotations}")
    return out


# --------------------------------------------------------------------------- metrics


def coco_eval(gt: dict, results: list[dict], sigmas: np.ndarray) -> dict[str, float]:
    """pycocotools keypoint COCOeval (quietly) → {"AP", "AP50", "AP75", "AR"} in 0–100.

    gt: a COCO-format dict; results: a non-empty list of COCO keypoint results (neither is
    modified: COCOeval writes into both, so it gets copies).
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt = copy.deepcopy(gt)
    # Fields the dataset reader does not require but pycocotools reads without a default.
    for a in gt["annotations"]:
        a.setdefault("category_id", 1)
        a.setdefault("iscrowd", 0)
        if "area" not in a:
            a["area"] = float(a["bbox"][2] * a["bbox"][3]) if "bbox" in a else 0.0
        if "num_keypoints" not in a:
            a["num_keypoints"] = int(sum(v > 0 for v in a.get("keypoints", [])[2::3]))
    if not gt.get("categories"):  # loadRes copies them; COCOeval takes its category ids there
        cats = sorted({a["category_id"] for a in gt["annotations"]})
        gt["categories"] = [{"id": c, "name": str(c)} for c in cats]
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = gt
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(copy.deepcopy(results))
        ev = COCOeval(coco_gt, coco_dt, "keypoints")
        ev.params.kpt_oks_sigmas = np.asarray(sigmas, dtype=np.float64)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    s = ev.stats  # AP, AP50, AP75, APm, APl, AR, AR50, AR75, ARm, ARl
    return {"AP": 100 * s[0], "AP50": 100 * s[1], "AP75": 100 * s[2], "AR": 100 * s[5]}


def keypoint_similarity(pred: np.ndarray, gt: np.ndarray, area: float,
                        sigmas: np.ndarray) -> np.ndarray:
    """pred, gt: (K, 2) → (K,) exp(-d² / (2 · area · (2σ)²)), COCOeval's per-keypoint term."""
    d2 = ((pred - gt) ** 2).sum(-1)
    return np.exp(-d2 / ((2 * sigmas) ** 2) / (area + np.spacing(1)) / 2)


def oks_accuracy(pred: list[np.ndarray | None], gt: np.ndarray, areas: np.ndarray,
                 sigmas: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """pred: per instance (K, 2) or None; gt: (N, K, 3) → (per keypoint % (K,), counts (K,))."""
    k = gt.shape[1]
    hits, counts = np.zeros(k), np.zeros(k)
    for p, g, area in zip(pred, gt, areas, strict=True):
        labelled = g[:, 2] > 0
        ks = np.zeros(k) if p is None else keypoint_similarity(p, g[:, :2], area, sigmas)
        acc = (ks[:, None] >= OKS_THRESHOLDS[None]).mean(1)
        hits += np.where(labelled, acc, 0.0)
        counts += labelled
    with np.errstate(invalid="ignore", divide="ignore"):
        return 100 * hits / counts, counts


def pckh(pred: np.ndarray, gt: np.ndarray, visible: np.ndarray, head_sizes: np.ndarray,
         threshold: float = PCKH_THRESHOLD) -> tuple[np.ndarray, np.ndarray]:
    """pred, gt: (N, K, 2); visible: (N, K) bool; head_sizes: (N,) → (% correct (K,) with NaN
    where no joint is visible, visible counts (K,))."""
    err = np.linalg.norm(pred - gt, axis=-1) / head_sizes[:, None]
    correct = ((err <= threshold) & visible).sum(0)
    counts = visible.sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return 100 * correct / counts, counts


def _named(values: np.ndarray, names: list[str]) -> dict[str, float | None]:
    return {n: (None if not np.isfinite(v) else float(v)) for n, v in zip(names, values,
                                                                           strict=True)}


def _coco_like(dataset: Dataset, preds: dict[int, dict], gt: dict, scored: np.ndarray,
               gt_keypoints: np.ndarray) -> dict:
    """AP on the unified keypoints `scored` (indices); gt already holds them in that order, and
    so does gt_keypoints (N, S, 3), one row per dataset row."""
    sigmas = UNIFIED_SIGMAS[scored]
    cats = {a["id"]: a.get("category_id", 1) for a in gt["annotations"]}
    pred_ids = list(preds)
    image_ids = dataset.image_ids[dataset.image_index[dataset.rows_of(pred_ids)]].tolist()
    results = []
    for iid, image_id in zip(pred_ids, image_ids, strict=True):
        rec = preds[iid]
        kp = rec["keypoints"][scored]
        results.append({"image_id": image_id, "category_id": cats[iid],
                        "keypoints": kp.reshape(-1).tolist(), "score": rec["score"]})
    out = {"metric": "AP", **coco_eval(gt, results, sigmas)}
    out["value"] = out["AP"]
    insts = dataset.instance_ids.tolist()
    per_kp, _ = oks_accuracy(
        [preds[i]["keypoints"][scored, :2] if i in preds else None for i in insts],
        gt_keypoints, dataset.areas, sigmas)
    names = [UNIFIED_NAMES[u] for u in scored]
    out.update(per_keypoint=_named(per_kp, names), scored_keypoints=names,
               per_keypoint_metric=PER_KEYPOINT_AP, instances=len(insts), predicted=len(preds),
               instance_score="prediction 'score' (box score 1.0 for GT boxes x mean keypoint "
                              "score above 0.2)")
    return out


def evaluate_coco(dataset: Dataset, preds: dict[int, dict]) -> dict:
    """COCO OKS AP on the 17 COCO keypoints, GT = the annotation file as it is."""
    scored = np.flatnonzero(SKELETONS["coco17"].unified_mask)  # unified 0–16
    gt_kp = dataset.unified_rows(slice(None))[:, scored]
    return _coco_like(dataset, preds, dataset.read_annotations(), scored, gt_kp)


def halpe_scored() -> np.ndarray:
    """Unified indices Halpe-26 maps to (20: all but thorax), in unified order."""
    return np.flatnonzero(SKELETONS["halpe26"].unified_mask)


def halpe_gt(dataset: Dataset, scored: np.ndarray) -> dict:
    """The Halpe annotation file with every person's keypoints re-ordered to `scored` unified."""
    halpe = SKELETONS["halpe26"]
    k = halpe.num_keypoints
    raw = dataset.read_annotations()
    anns = []
    for ann in raw["annotations"]:
        ann = dict(ann)
        try:
            kp = np.asarray(ann.get("keypoints", []), np.float64)[: 3 * k].reshape(k, 3)
        except ValueError:  # crowd / unlabelled people the reader skipped unchecked
            kp = np.zeros((k, 3))
        sel = native_to_unified(kp, halpe)[scored]
        ann["keypoints"] = sel.reshape(-1).tolist()
        ann["num_keypoints"] = int((sel[:, 2] > 0).sum())
        anns.append(ann)
    return {"images": raw["images"], "annotations": anns,
            "categories": raw.get("categories", [{"id": 1, "name": "person"}])}


def evaluate_halpe(dataset: Dataset, preds: dict[int, dict]) -> dict:
    """OKS AP on the unified keypoints Halpe labels (docs/conventions.md "Dataset mappings")."""
    scored = halpe_scored()
    gt_kp = dataset.unified_rows(slice(None))[:, scored]
    return _coco_like(dataset, preds, halpe_gt(dataset, scored), scored, gt_kp)


def require_head_boxes(dataset: Dataset) -> None:
    missing = dataset.instance_ids[~dataset.has_head_box]
    if len(missing):
        raise UniError(f"{dataset.spec.annotations}: record {missing[0]} has no 'head_box'; "
                       "MPII PCKh needs head boxes: pass --head-boxes mpii_gt_val.mat")


def evaluate_mpii(dataset: Dataset, preds: dict[int, dict]) -> dict:
    """PCKh@0.5 per joint (unified names), MPII "Mean" and MMPose's grouped rows."""
    require_head_boxes(dataset)
    mpii = SKELETONS["mpii16"]
    joints = np.array(mpii.to_unified)  # (16,) unified index of each MPII joint
    insts = dataset.instance_ids.tolist()
    gt = dataset.unified_rows(slice(None))[:, joints]  # (N, 16, 3)
    pred = np.stack([preds[i]["keypoints"][joints, :2] if i in preds
                     else np.full((16, 2), np.inf) for i in insts])
    heads = np.array([head_size(h) for h in dataset.head_boxes])
    if (heads <= 0).any():
        bad = insts[int(np.argmax(heads <= 0))]
        raise UniError(f"{dataset.spec.annotations}: record {bad}: head box has zero size")
    pck, counts = pckh(pred, gt[..., :2], gt[..., 2] > 0, heads)
    names = [UNIFIED_NAMES[u] for u in joints]
    in_mean = np.array([n not in MPII_MEAN_EXCLUDES for n in names])
    correct = np.nan_to_num(pck * counts / 100)
    mean = 100 * correct[in_mean].sum() / max(counts[in_mean].sum(), 1)
    per = _named(pck, names)
    groups = {label: float(np.mean([per[n] for n in members]))
              for label, members in MPII_GROUPS if all(per[n] is not None for n in members)}
    return {"metric": "PCKh@0.5", "value": float(mean), "Mean": float(mean),
            "per_keypoint": per, "scored_keypoints": [n for n, m in zip(names, in_mean,
                                                                         strict=True) if m],
            "per_keypoint_metric": PER_KEYPOINT_PCKH, "groups": groups,
            "instances": len(insts), "predicted": sum(i in preds for i in insts)}


EVALUATORS = {"coco": evaluate_coco, "mpii": evaluate_mpii, "halpe": evaluate_halpe}


def evaluate_dataset(dataset: Dataset, preds: dict[int, dict]) -> dict:
    """One dataset's metric dict (see the module docstring)."""
    return EVALUATORS[dataset.format](dataset, preds)


# --------------------------------------------------------------------------- drivers


def load_datasets(specs: list[str], head_boxes: Path | None = None) -> list[Dataset]:
    """--data specs → datasets (head boxes go to the MPII ones); instances indexed by id."""
    if head_boxes is not None and not any(s.lower().startswith("mpii:") for s in specs):
        raise UniError("--head-boxes given but no mpii:… dataset in --data")
    out = []
    for s in specs:
        ds = load_dataset(s, head_boxes if s.lower().startswith("mpii:") else None)
        if not ds.instances:
            raise UniError(f"{ds.spec.annotations}: no labelled person to evaluate")
        if ds.format == "mpii":  # before any model runs
            require_head_boxes(ds)
        out.append(ds)
    return out


def predict_datasets(model: Path | Predictor, datasets: list[Dataset], flip_test: bool = True,
                     batch_size: int = 32, progress: bool = True, device: str = "auto"
                     ) -> list[list[dict]]:
    """Run MODEL (a path or a student.predict.Predictor) on every GT box of every dataset →
    predictions records per dataset."""
    predictor = model if isinstance(model, Predictor) else load_predictor(model, device)
    out = []
    for ds in datasets:
        items = [(ds.image_path(r), ds.bboxes[r]) for r in range(len(ds.instance_ids))]
        kps = predict_boxes(predictor, items, flip_test, batch_size, progress)
        out.append(prediction_records(ds, kps, predictor.known))
    return out


def as_predictions(records: list[dict]) -> dict[int, dict]:
    """Predictions records (as saved) → {instance_id: record with a (21, 3) array}."""
    return {r["instance_id"]: {**r, "keypoints": np.asarray(r["keypoints"], np.float64)}
            for r in records}


def evaluate(specs: list[str], model: Path | None = None, predictions: Path | None = None,
             flip_test: bool = True, head_boxes: Path | None = None,
             save_to: Path | None = None, batch_size: int = 32,
             progress: bool = True, device: str = "auto") -> dict[str, dict]:
    """{spec: metric dict} for MODEL run on the GT boxes, or for a predictions file."""
    if (model is None) == (predictions is None):
        raise UniError("give either MODEL or --predictions FILE")
    if not specs:
        raise UniError("--data is required (FORMAT:ANNOTATIONS[:IMAGES]; repeat for more)")
    datasets = load_datasets(list(specs), head_boxes)
    if predictions is not None:
        per_ds = load_predictions(predictions, datasets)
    else:
        records = predict_datasets(model, datasets, flip_test, batch_size, progress, device)
        if save_to is not None:
            save_predictions(save_to, [r for rs in records for r in rs])
        per_ds = [as_predictions(rs) for rs in records]
    return {spec: evaluate_dataset(ds, preds)
            for spec, ds, preds in zip(specs, datasets, per_ds, strict=True)}


def format_results(results: dict[str, dict]) -> str:
    """A readable table per dataset: headline numbers, then one line per keypoint."""
    lines = []
    for spec, r in results.items():
        extra = "  ".join(f"{k} {r[k]:.2f}" for k in ("AP50", "AP75", "AR") if k in r)
        lines.append(f"{spec}")
        lines.append(f"  {r['metric']:<10}{r['value']:7.2f}  {extra}".rstrip())
        lines.append(f"  instances {r['instances']}, predicted {r['predicted']}; scored: "
                     f"{len(r['scored_keypoints'])} keypoints")
        if "groups" in r:
            lines.append("  " + "  ".join(f"{k} {v:.1f}" for k, v in r["groups"].items()))
        lines.append(f"  per keypoint ({r['per_keypoint_metric']}):")
        for name, v in r["per_keypoint"].items():
            mark = "" if name in r["scored_keypoints"] else "  (not in the mean)"
            lines.append(f"    {name:<16}{'—' if v is None else f'{v:7.2f}'}{mark}")
    return "\n".join(lines)
