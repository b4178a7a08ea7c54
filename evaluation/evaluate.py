"""`uni evaluate`: every dataset scored by its kind's metric, on ground-truth or detector boxes.

MODEL runs top-down on each dataset's ground-truth person boxes, or with --boxes on a COCO
detection results file (evaluation/oks.py: rescoring, OKS-NMS 0.9); its keypoints go into
the dataset's native order by name and become COCO keypoint results (evaluation/coco_results.py),
which --save-predictions writes and --predictions reads back. Scored keypoints: those the
dataset labels (at least once in the file) and the model's unified skeleton has; keypoints a
model knows but does not predict (a teacher's missing ones, at (0, 0) with score 0) are misses.

Metrics (docs/conventions.md "Metrics"), by the dataset kind's metric:
- coco_ap (COCO, Halpe, AIC, CrowdPose, PoseTrack18, OCHuman, Human-Art, …): pycocotools
  COCOeval on the scored keypoints with the dataset's own sigmas (maxDets 20): AP, AP50, AP75,
  AP-M, AP-L, AR, AR50, AR75.
  Persons the reader skips (crowd, nothing labelled) stay in the ground truth as ignored, as
  pycocotools treats them in the file itself. On GT boxes also per keypoint ("OKS accuracy"):
  the share of labelled keypoints whose keypoint similarity exp(-d² / (2 · area · (2σ)²))
  reaches t, averaged over t = 0.50, 0.55, …, 0.95; a missing prediction is a miss.
  CrowdPose reports crowdposetools' figures (no AP-M / AP-L: it scores the 'all' area range
  only) and AP(E) / AP(M) / AP(H): AP on the images of each crowd class alone
  (core/datasets.py CROWD_CLASSES), None for an empty one; "official" lists them in its order.
  COCO-WholeBody also reports "body AP", "foot AP" (COCOeval on that part's keypoints and
  sigmas alone, a person with none of them labelled ignored, as myeval_body.py /
  myeval_foot.py do) and "body+foot AP" (= AP), with their AR.
  PoseTrack18's primary figure is poseval's mAP (evaluation/posetrack.py): its rows Head, Shou,
  Elb, Wri, Hip, Knee, Ankl, Total as "official" (Total is "value"), COCO-style AP second.
  With --boxes, a detection whose box centre lies in an ignore region of its frame (PoseTrack)
  is dropped before the model runs.
- pckh (MPII): PCKh@0.5 per joint; "Mean" pools all joints but pelvis and thorax (weighted by
  counts, as the official MPII code and MMPose's MpiiPCKAccuracy do).
- pck_bbox (sub-JHMDB): PCK@0.2 of max(w, h) of the person box per joint; "Mean" is the
  unweighted mean of the per-joint PCKs, MMPose's JhmdbPCKAccuracy 'PCK'.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from uniskel.core.datasets import (
    Dataset,
    crowd_classes,
    head_size,
    load_dataset,
    parse_spec,
)
from uniskel.core.errors import UniError
from uniskel.core.geometry import bbox_to_center_size
from uniskel.core.skeletons import UNIFIED_NAMES, UNIFIED_SIGMAS, Skeleton, get_kind
from uniskel.evaluation.coco_results import (
    Results,
    parse_results,
    read_detections,
    read_results,
    reorder,
    result_record,
    write_results,
)
from uniskel.evaluation.oks import coco_eval, oks_accuracy, oks_nms
from uniskel.evaluation.pck import pck_bbox, pckh, pooled_mean
from uniskel.evaluation.posetrack import POSETRACK_KINDS, poseval_figures
from uniskel.evaluation.predict import Predictor, instance_score, load_predictor, predict_boxes

BOX_THRESHOLD = 0.0  # --box-threshold default: MMPose's det_bbox_thr for COCO val (all boxes)
PER_KEYPOINT_AP = ("OKS accuracy: % of labelled keypoints with keypoint similarity >= t, "
                   "mean over t = 0.50:0.05:0.95")
PER_KEYPOINT_PCKH = "PCKh@0.5: % of visible labelled joints within 0.5 x head size"
PER_KEYPOINT_PCK = "PCK@0.2: % of visible labelled joints within 0.2 x max(box w, h)"
MPII_MEAN_EXCLUDES = ("pelvis", "thorax")
# MMPose's summary rows: (label, canonical names averaged with equal weight)
MPII_GROUPS = (("Head", ("head_top",)), ("Shoulder", ("left_shoulder", "right_shoulder")),
               ("Elbow", ("left_elbow", "right_elbow")), ("Wrist", ("left_wrist", "right_wrist")),
               ("Hip", ("left_hip", "right_hip")), ("Knee", ("left_knee", "right_knee")),
               ("Ankle", ("left_ankle", "right_ankle")))
# MMPose's JhmdbPCKAccuracy rows ('Head PCK', 'Sho PCK', …): MPII_GROUPS' joints, its labels.
JHMDB_GROUP_LABELS = ("Head", "Sho", "Elb", "Wri", "Hip", "Knee", "Ank")
METRIC_NAMES = {"coco_ap": "AP", "pckh": "PCKh@0.5", "pck_bbox": "PCK@0.2"}


# --------------------------------------------------------------------------- a dataset's facts


def dataset_metric(ds: Dataset) -> str:
    """coco_ap | pckh | pck_bbox: the dataset kind's metric."""
    return ds.kind.metric


def dataset_sigmas(skeleton: Skeleton) -> np.ndarray:
    """(K,) OKS sigmas in native order: the skeleton's own, else the unified keypoint's of the
    same name (docs/conventions.md "Metrics"; .08 for a name unified21 lacks)."""
    if skeleton.sigmas is not None:
        return np.asarray(skeleton.sigmas, np.float64)
    return np.array([UNIFIED_SIGMAS[UNIFIED_NAMES.index(c)] if c in UNIFIED_NAMES else 0.08
                     for c in skeleton.canonical])


def model_mask(skeleton: Skeleton, unified: Skeleton | None) -> np.ndarray:
    """(K,) bool: native keypoints the model's unified skeleton has (None: all of them)."""
    if unified is None:
        return np.ones(skeleton.num_keypoints, bool)
    return np.array([u is not None for u in skeleton.to(unified)], bool)


def scored_mask(ds: Dataset, unified: Skeleton | None) -> np.ndarray:
    """(K,) bool: keypoints the dataset labels (somewhere in the file) and the model has."""
    return model_mask(ds.skeleton, unified) & (ds.keypoints[:, :, 2] > 0).any(0)


def keypoint_names(skeleton: Skeleton) -> list[str]:
    """Names a report uses: the unified-vocabulary name, else the native one."""
    return [c or n for c, n in zip(skeleton.canonical, skeleton.keypoints, strict=True)]


def _named(values: np.ndarray, names: list[str]) -> dict[str, float | None]:
    return {n: (None if not np.isfinite(v) else float(v)) for n, v in zip(names, values,
                                                                           strict=True)}


# --------------------------------------------------------------------------- metrics


def oks_areas(kind, boxes: np.ndarray, areas: np.ndarray) -> np.ndarray:
    """Persons' OKS scales, which COCOeval also bins into area ranges. boxes: (N, 4) x, y, w,
    h; areas: (N,) annotated, NaN where a file gives none → (N,) float64: the annotated area
    (w × h where missing), or (kind.area_from_box > 0) that factor × w × h, as xtcocotools'
    use_area=False and crowdposetools' 0.53 do."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    if kind.area_from_box > 0:
        return kind.area_from_box * boxes[:, 2] * boxes[:, 3]
    areas = np.asarray(areas, np.float64)
    return np.where(np.isnan(areas), boxes[:, 2] * boxes[:, 3], areas)


def file_ignored(ds: Dataset) -> list[dict]:
    """The persons the reader skipped (crowd, nothing labelled), read back from the file as
    ignored COCO annotations without keypoints, each with its OKS scale; [] for other readers.
    Read once per evaluation: coco_gt takes it for every keypoint subset scored."""
    raw = ds.read_annotations() if ds.kind.reader == "coco" else {}
    have, image_set = set(ds.instance_ids.tolist()), set(ds.image_ids.tolist())
    anns = []
    for a in raw.get("annotations", []) if isinstance(raw, dict) else []:
        box = a.get("bbox")
        if (a.get("id") in have or a.get("image_id") not in image_set or not isinstance(box, list)
                or len(box) != 4 or not all(isinstance(v, int | float) for v in box)):
            continue
        area = a.get("area")
        anns.append({"id": a["id"], "image_id": a["image_id"], "category_id": 1,
                     "iscrowd": int(bool(a.get("iscrowd", 0))), "bbox": box,
                     "area": float(area) if isinstance(area, int | float) else np.nan})
    scales = oks_areas(ds.kind, [a["bbox"] for a in anns], [a["area"] for a in anns])
    for a, scale in zip(anns, scales.tolist(), strict=True):
        a["area"] = scale
    return anns


def coco_gt(ds: Dataset, keep: np.ndarray, areas: np.ndarray | None = None,
            ignored: list[dict] | None = None) -> dict:
    """The dataset as COCO ground truth with keypoints `keep` (K,) bool, each person's area its
    OKS scale (oks_areas; `areas` (N,) when already computed), plus the file's skipped persons
    as ignored ones (`ignored`: file_ignored's, read from the file when None)."""
    images = ds.image_ids.tolist()
    kp = ds.keypoints[:, keep]  # (N, S, 3)
    if areas is None:
        areas = oks_areas(ds.kind, ds.bboxes, ds.areas)
    anns = [{"id": iid, "image_id": images[im], "category_id": 1, "iscrowd": 0,
             "bbox": box.tolist(), "area": area, "keypoints": k.reshape(-1).tolist(),
             "num_keypoints": int((k[:, 2] > 0).sum())}
            for iid, im, box, area, k in zip(ds.instance_ids.tolist(), ds.image_index.tolist(),
                                             ds.bboxes, areas.tolist(), kp, strict=True)]
    zeros = [0] * (3 * kp.shape[1])
    anns += [{**a, "keypoints": zeros, "num_keypoints": 0}
             for a in (file_ignored(ds) if ignored is None else ignored)]
    return {"images": [{"id": i} for i in images], "annotations": anns,
            "categories": [{"id": 1, "name": "person"}]}


def _per_person(ds: Dataset, res: Results, missing: float) -> np.ndarray:
    """(N, K, 2) predicted native keypoints per dataset row; `missing` where none."""
    out = np.full(ds.keypoints.shape[:2] + (2,), missing)
    rows = ds.rows_of(res.instance_ids)
    out[rows] = res.keypoints[:, :, :2]
    return out


# The official figures of a kind whose tool reports other ones than COCO's stats[0..5], in
# that tool's order (docs/conventions.md "Metrics"). CrowdPose: crowdposetools' summarize
# (Jeff-sjtu/CrowdPose crowdpose-api/PythonAPI/crowdposetools/cocoeval.py, _summarizeKps:
# maxDets 20, area 'all' only, so no AP-M / AP-L), AP(E/M/H) on the images of each crowd class.
CROWD_FIGURES = ("AP", "AP50", "AP75", "AR", "AR50", "AR75", "AP(E)", "AP(M)", "AP(H)")
CROWD_KINDS = ("crowdpose",)
CROWD_LABELS = {"easy": "AP(E)", "medium": "AP(M)", "hard": "AP(H)"}
# COCO-WholeBody (jin-s13/COCO-WholeBody evaluation/myeval_body.py, myeval_foot.py; MMPose's
# CocoWholeBodyMetric): each part is COCOeval on that part's keypoints with its sigmas alone.
PART_NAMES = {"keypoints": "body", "foot_kpts": "foot"}
PART_FIGURES = ("AP", "AR")


def kind_parts(ds: Dataset) -> dict[str, np.ndarray]:
    """{part name: (K,) bool} for a kind whose keypoints come from several fields (WholeBody's
    body and foot), else {}."""
    if len(ds.kind.fields) < 2:
        return {}
    out, start = {}, 0
    for field, count in ds.kind.fields:
        mask = np.zeros(ds.skeleton.num_keypoints, bool)
        mask[start:start + count] = True
        out[PART_NAMES.get(field, field.removesuffix("_kpts"))] = mask
        start += count
    return out


def _coco_ap_on(ds: Dataset, res: Results, keep: np.ndarray, areas: np.ndarray,
                ignored: list[dict], subsets: dict[str, list[int]] | None = None) -> dict:
    """COCOeval (evaluation/oks.py) on the keypoints `keep` (K,) bool alone, their sigmas;
    areas and ignored persons as coco_gt takes them."""
    results = [{"image_id": int(im), "category_id": 1, "score": float(s),
                "keypoints": kp[keep].reshape(-1).tolist()}
               for im, s, kp in zip(res.image_ids, res.scores, res.keypoints, strict=True)]
    return coco_eval(coco_gt(ds, keep, areas, ignored), results,
                     dataset_sigmas(ds.skeleton)[keep], subsets)


def evaluate_coco_ap(ds: Dataset, res: Results) -> dict:
    """OKS AP on the scored keypoints, the dataset's sigmas; and the kind's official figures
    ("official", in its tool's order) where they differ from COCO's."""
    keep = scored_mask(ds, res.unified)
    sigmas = dataset_sigmas(ds.skeleton)[keep]
    crowd = ds.kind.name in CROWD_KINDS
    classes = crowd_classes(ds.crowd_index) if crowd else {}
    subsets = {CROWD_LABELS[c]: ds.image_ids[m].tolist() for c, m in classes.items()}
    areas, ignored = oks_areas(ds.kind, ds.bboxes, ds.areas), file_ignored(ds)  # once
    out = {"metric": "AP", **_coco_ap_on(ds, res, keep, areas, ignored, subsets)}
    out["value"] = out["AP"]
    if crowd:
        out["crowd_images"] = {c: int(m.sum()) for c, m in classes.items()}
        for k in ("AP-M", "AP-L"):  # crowdposetools scores the 'all' area range alone
            out.pop(k)
        out["official"] = {k: out[k] for k in CROWD_FIGURES}
    parts = kind_parts(ds)
    if parts:
        official = {}
        for part, mask in parts.items():
            got = (_coco_ap_on(ds, res, keep & mask, areas, ignored) if (keep & mask).any()
                   else {})
            official.update({f"{part} {k}": got.get(k) for k in PART_FIGURES})
        whole = "+".join(parts)
        official.update({f"{whole} {k}": out[k] for k in PART_FIGURES})
        out.update(official, official=official)
    if ds.kind.name in POSETRACK_KINDS:  # poseval's mAP first, COCO-style AP second
        out.update(poseval_figures(ds, res, keep))
    names = [n for n, k in zip(keypoint_names(ds.skeleton), keep, strict=True) if k]
    if res.instance_ids is not None:
        pred = _per_person(ds, res, np.nan)[:, keep]
        per, _ = oks_accuracy([None if np.isnan(p).all() else p for p in pred],
                              ds.keypoints[:, keep], areas, sigmas)
        out.update(per_keypoint=_named(per, names), per_keypoint_metric=PER_KEYPOINT_AP)
    out.update(scored_keypoints=names, instances=len(ds.instance_ids), predicted=len(res.scores),
               instance_score="box score (1.0 for GT boxes) x mean keypoint score above 0.2")
    return out


def _pck_like(ds: Dataset, res: Results, lengths_fn, exclude: tuple[str, ...],
              label: str, description: str, pooled: bool = True) -> dict:
    """Per joint and "Mean": pooled (correct / counted over the joints) or, `pooled` False,
    the unweighted mean of the per-joint figures of the joints with a visible label."""
    if res.instance_ids is None:
        raise UniError(f"{ds.spec.annotations}: {label} scores ground-truth persons: its "
                       "results need 'instance_id' (not detector boxes)")
    names = keypoint_names(ds.skeleton)
    has = model_mask(ds.skeleton, res.unified)
    pred = _per_person(ds, res, np.inf)
    per, counts = lengths_fn(pred, ds.keypoints[..., :2], (ds.keypoints[..., 2] > 0) & has)
    per = np.where(has, per, np.nan)
    in_mean = has & np.array([n not in exclude for n in names]) & (counts > 0)
    if pooled:
        mean = pooled_mean(per, counts, in_mean)
    else:
        mean = float(np.mean(per[in_mean])) if in_mean.any() else 0.0
    return {"metric": label, "value": mean, "Mean": mean,
            "per_keypoint": _named(per, names),
            "scored_keypoints": [n for n, m in zip(names, in_mean, strict=True) if m],
            "per_keypoint_metric": description, "instances": len(ds.instance_ids),
            "predicted": len(res.scores)}


def _groups(per: dict[str, float | None], labels: tuple[str, ...]) -> dict[str, float]:
    """MMPose's summary rows: each group's joints averaged with equal weight."""
    return {label: float(np.mean([per[n] for n in members]))
            for label, (_, members) in zip(labels, MPII_GROUPS, strict=True)
            if all(per.get(n) is not None for n in members)}


def require_head_boxes(dataset: Dataset) -> None:
    missing = dataset.instance_ids[~dataset.has_head_box]
    if len(missing):
        raise UniError(f"{dataset.spec.annotations}: record {missing[0]} has no 'head_box'; "
                       "MPII PCKh needs head boxes: pass --head-boxes mpii_gt_val.mat")


def evaluate_pckh(ds: Dataset, res: Results) -> dict:
    """PCKh@0.5 per joint, MPII "Mean" and MMPose's grouped rows."""
    require_head_boxes(ds)
    heads = np.array([head_size(h) for h in ds.head_boxes])
    if (heads <= 0).any():
        bad = ds.instance_ids[int(np.argmax(heads <= 0))]
        raise UniError(f"{ds.spec.annotations}: record {bad}: head box has zero size")
    out = _pck_like(ds, res, lambda p, g, v: pckh(p, g, v, heads), MPII_MEAN_EXCLUDES,
                    "PCKh@0.5", PER_KEYPOINT_PCKH)
    out["groups"] = _groups(out["per_keypoint"], tuple(label for label, _ in MPII_GROUPS))
    return out


def evaluate_pck_bbox(ds: Dataset, res: Results) -> dict:
    """PCK@0.2 of max(box w, h) per joint; "Mean" as MMPose's JhmdbPCKAccuracy 'PCK' (the
    unweighted mean of the per-joint PCKs, keypoint_pck_accuracy's avg_acc) and its rows."""
    out = _pck_like(ds, res, lambda p, g, v: pck_bbox(p, g, v, ds.bboxes), (), "PCK@0.2",
                    PER_KEYPOINT_PCK, pooled=False)
    out["groups"] = _groups(out["per_keypoint"], JHMDB_GROUP_LABELS)
    return out


EVALUATORS = {"coco_ap": evaluate_coco_ap, "pckh": evaluate_pckh, "pck_bbox": evaluate_pck_bbox}


def evaluate_dataset(ds: Dataset, res: Results) -> dict:
    """One dataset's metric dict (see the module docstring), with what it covered."""
    out = EVALUATORS[dataset_metric(ds)](ds, res)
    out["scored"] = f"{len(out['scored_keypoints'])} of {ds.skeleton.name}"
    out["boxes"] = "ground truth" if res.instance_ids is not None else "detector"
    return out


# --------------------------------------------------------------------------- running a model


def load_datasets(specs: list[str], head_boxes: Path | None = None) -> list[Dataset]:
    """--data specs → datasets (head boxes go to the MPII ones), checked before a model runs."""
    parsed = [parse_spec(s) for s in specs]
    mpii = [get_kind(p.kind).reader == "mpii" for p in parsed]
    if head_boxes is not None and not any(mpii):
        raise UniError("--head-boxes given but no MPII-style dataset (mpii:…) in --data")
    out = []
    for p, is_mpii in zip(parsed, mpii, strict=True):
        ds = load_dataset(p, head_boxes if is_mpii else None)
        if not len(ds.instance_ids):
            raise UniError(f"{ds.spec.annotations}: no labelled person to evaluate")
        if dataset_metric(ds) == "pckh":
            require_head_boxes(ds)
        out.append(ds)
    return out


def _records(predictor: Predictor, ds: Dataset, kps: np.ndarray, box_scores: np.ndarray,
             extra: list[dict]) -> list[dict]:
    """Model keypoints (M, U, 3) → results records in the dataset's native order."""
    unified = predictor.unified
    native = reorder(kps, unified, ds.skeleton)  # (M, K, 3)
    has = model_mask(ds.skeleton, unified)
    return [result_record(e.pop("image_id"), kp, instance_score(kp, has, float(b)),
                          ds.skeleton.name, unified.name, **e, dataset_id=ds.dataset_id)
            for kp, b, e in zip(native, box_scores, extra, strict=True)]


def gt_box_records(predictor: Predictor, ds: Dataset, flip_test: bool = True,
                   batch_size: int = 32, progress: bool = True) -> list[dict]:
    """MODEL on every ground-truth person box → results records (box score 1)."""
    n = len(ds.instance_ids)
    kps = predict_boxes(predictor, [(ds.image_path(r), ds.bboxes[r]) for r in range(n)],
                        flip_test, batch_size, progress)
    images = ds.image_ids[ds.image_index].tolist()
    extra = [{"image_id": im, "instance_id": iid, "box": [round(v, 2) for v in box.tolist()]}
             for im, iid, box in zip(images, ds.instance_ids.tolist(), ds.bboxes, strict=True)]
    return _records(predictor, ds, kps, np.ones(n), extra)


def outside_ignore_regions(ds: Dataset, image: int, boxes: list[tuple]) -> list[tuple]:
    """The detections (bbox (4,) x, y, w, h, score) of image row `image` whose box centre is
    not inside one of its ignore regions (PoseTrack: docs/conventions.md "Metrics")."""
    if not boxes:
        return boxes
    centres = np.array([bbox[:2] + bbox[2:] / 2 for bbox, _ in boxes])  # (M, 2)
    inside = ds.in_ignore_region(image, centres)
    return [b for b, out in zip(boxes, inside, strict=True) if not out]


def detection_records(predictor: Predictor, ds: Dataset, dets: dict[int, list[tuple]],
                      flip_test: bool = True, batch_size: int = 32, progress: bool = True
                      ) -> list[dict]:
    """MODEL on the detector's person boxes of the dataset's images → rescored, OKS-NMS'd
    results records (evaluation/oks.py), each image's best first."""
    items, extra, box_scores, areas, image_of = [], [], [], [], []
    aspect = predictor.input_wh[0] / predictor.input_wh[1]
    for im, image_id in enumerate(ds.image_ids.tolist()):
        for bbox, score in outside_ignore_regions(ds, im, dets.get(image_id, [])):
            items.append((Path(ds.image_paths[im]), bbox))
            extra.append({"image_id": image_id, "box": [round(v, 2) for v in bbox.tolist()],
                          "box_score": score})
            box_scores.append(score)
            # MMPose's OKS-NMS area: the crop box's (aspect fixed, padded), not the detector's
            _, size = bbox_to_center_size(bbox, aspect, predictor.padding)
            areas.append(float(size[0] * size[1]))
            image_of.append(image_id)
    if not items:
        raise UniError(f"--boxes: no person box for any image of {ds.spec.annotations}")
    kps = predict_boxes(predictor, items, flip_test, batch_size, progress)
    records = _records(predictor, ds, kps, np.array(box_scores), extra)
    has = model_mask(ds.skeleton, predictor.unified)
    sigmas = dataset_sigmas(ds.skeleton)[has]
    image_of, areas = np.array(image_of), np.array(areas)
    kept = []
    for image_id in dict.fromkeys(image_of.tolist()):
        idx = np.flatnonzero(image_of == image_id)
        kp = np.array([records[i]["keypoints"] for i in idx]).reshape(len(idx), -1, 3)[:, has]
        scores = np.array([records[i]["score"] for i in idx])
        kept += [records[idx[j]] for j in oks_nms(kp, scores, areas[idx], sigmas)]
    return kept


def model_records(model: Path | Predictor, datasets: list[Dataset], flip_test: bool = True,
                  batch_size: int = 32, progress: bool = True, device: str = "auto",
                  boxes: Path | None = None, box_threshold: float = BOX_THRESHOLD
                  ) -> tuple[Predictor, list[dict]]:
    """Run MODEL (a path or a Predictor) on every dataset's GT boxes, or on --boxes → (the
    predictor, results records of all datasets)."""
    dets = None
    if boxes is not None:
        for ds in datasets:
            if dataset_metric(ds) != "coco_ap":
                raise UniError(f"--boxes: {ds.spec.annotations} is scored by "
                               f"{METRIC_NAMES[dataset_metric(ds)]} on its annotated persons; "
                               "detector boxes serve AP datasets only")
        dets = read_detections(boxes, box_threshold)
    predictor = model if isinstance(model, Predictor) else load_predictor(model, device)
    records: list[dict] = []
    for ds in datasets:
        if dets is None:
            records += gt_box_records(predictor, ds, flip_test, batch_size, progress)
        else:
            records += detection_records(predictor, ds, dets, flip_test, batch_size, progress)
    return predictor, records


def evaluate(specs: list[str], model: Path | Predictor | None = None,
             predictions: Path | None = None, flip_test: bool = True,
             head_boxes: Path | None = None, save_to: Path | None = None, batch_size: int = 32,
             progress: bool = True, device: str = "auto", boxes: Path | None = None,
             box_threshold: float = BOX_THRESHOLD) -> dict[str, dict]:
    """{spec: metric dict} for MODEL (GT boxes, or --boxes), or for a predictions file."""
    if (model is None) == (predictions is None):
        raise UniError("give either MODEL or --predictions FILE")
    if predictions is not None and boxes is not None:
        raise UniError("--boxes needs a MODEL to run (a predictions file is scored as it is)")
    if not specs:
        raise UniError("--data is required (KIND:ANN[:IMAGES]; repeat for more)")
    specs = list(dict.fromkeys(specs))  # a spec given twice is one dataset, scored once
    datasets = load_datasets(specs, head_boxes)
    if predictions is not None:
        per_ds = read_results(predictions, datasets)
    else:
        predictor, records = model_records(model, datasets, flip_test, batch_size, progress,
                                           device, boxes, box_threshold)
        if save_to is not None:
            write_results(save_to, records)
        per_ds = parse_results(records, datasets, "predictions", predictor.unified)
    return {spec: evaluate_dataset(ds, res)
            for spec, ds, res in zip(specs, datasets, per_ds, strict=True)}


def _fmt(v: float | None) -> str:
    return "—" if v is None else f"{v:.2f}"


def format_results(results: dict[str, dict]) -> str:
    """A readable table per dataset: headline numbers, then one line per keypoint."""
    lines = []
    for spec, r in results.items():
        keys = ("AP", "AP50", "AP75", "AP-M", "AP-L", "AR", "AR50", "AR75")
        extra = "  ".join(f"{k} {r[k]:.2f}" for k in keys
                          if r.get(k) is not None and k != r["metric"])
        lines.append(f"{spec}")
        lines.append(f"  {r['metric']:<10}{r['value']:7.2f}  {extra}".rstrip())
        if "crowd_images" in r:
            n = r["crowd_images"]
            lines.append("  by crowd index: " + "  ".join(
                f"{CROWD_LABELS[c]} {_fmt(r[CROWD_LABELS[c]])} ({n[c]} images)" for c in n))
        parts = {} if "crowd_images" in r or "groups" in r else r.get("official", {})
        if parts:
            lines.append("  by part: " + "  ".join(f"{k} {_fmt(v)}" for k, v in parts.items()))
        lines.append(f"  instances {r['instances']}, predicted {r['predicted']} "
                     f"({r['boxes']} boxes); scored keypoints: {r['scored']}")
        if "groups" in r:
            lines.append("  " + "  ".join(f"{k} {v:.1f}" for k, v in r["groups"].items()))
        if "per_keypoint" in r:
            lines.append(f"  per keypoint ({r['per_keypoint_metric']}):")
            for name, v in r["per_keypoint"].items():
                mark = "" if name in r["scored_keypoints"] else "  (not in the mean)"
                lines.append(f"    {name:<16}{'—' if v is None else f'{v:7.2f}'}{mark}")
    return "\n".join(lines)

