"""OKS metrics (docs/conventions.md "Metrics"): COCOeval, OKS-NMS, OKS accuracy.

The COCO top-down protocol as MMPose and HRNet run it on detector boxes: each box's keypoints
are rescored (instance score = box score × mean keypoint score above 0.2, evaluation/predict.py
`instance_score`), then per image a greedy OKS-NMS at 0.9 drops a result whose OKS with a
better-scored kept one exceeds 0.9 (MMPose `oks_nms`: every keypoint, the dataset's sigmas, the
mean of the two crop-box areas), then COCOeval scores what is left.
"""

from __future__ import annotations

import contextlib
import copy
import io

import numpy as np
from faster_coco_eval import COCO, COCOeval_faster

OKS_THRESHOLDS = np.linspace(0.5, 0.95, 10)  # COCOeval's iouThrs
NMS_THRESHOLD = 0.9  # MMPose's nms_thr / oks_thr for COCO
# pycocotools' keypoint stats[0..7]; -1 there (no ground truth of that size) becomes None.
STATS = ("AP", "AP50", "AP75", "AP-M", "AP-L", "AR", "AR50", "AR75")


def coco_eval(gt: dict, results: list[dict], sigmas: np.ndarray,
              subsets: dict[str, list[int]] | None = None) -> dict[str, float | None]:
    """COCOeval "keypoints" (faster-coco-eval's COCOeval_faster, quietly) → {"AP", "AP50",
    "AP75", "AP-M", "AP-L", "AR", "AR50", "AR75"}, 0–100, at maxDets 20 (pycocotools' keypoint
    default, crowdposetools' too). gt: a COCO-format dict; results: COCO keypoint results with
    K = len(sigmas); neither is modified. No results: all 0. subsets {name: image ids}: also each
    one's AP on those images alone (CrowdPose's easy / medium / hard), None where it has no
    image or no person to find."""
    subsets = subsets or {}
    if not results:  # nothing found scores 0
        return {k: 0.0 for k in STATS} | {k: 0.0 if ids else None for k, ids in subsets.items()}
    # COCOeval writes "ignore" into the ground truth and area / id / bbox into the results:
    # shallow copies of each record keep the caller's dicts as they were.
    anns = []
    for a in gt["annotations"]:
        a = dict(a)
        # Fields the dataset reader does not require but COCOeval reads without a default.
        a.setdefault("category_id", 1)
        a["iscrowd"] = int(bool(a.get("iscrowd", 0)))  # PoseTrack writes JSON false
        if "area" not in a:
            a["area"] = float(a["bbox"][2] * a["bbox"][3]) if "bbox" in a else 0.0
        if "num_keypoints" not in a:
            a["num_keypoints"] = int(sum(v > 0 for v in a.get("keypoints", [])[2::3]))
        anns.append(a)
    cats = gt.get("categories") or [  # loadRes copies them; COCOeval takes category ids there
        {"id": c, "name": str(c)} for c in sorted({a["category_id"] for a in anns}) or [1]]
    dataset = {"images": gt["images"], "annotations": anns, "categories": cats}
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO(dataset)
        ev = COCOeval_faster(coco_gt, _load_results(coco_gt, results), "keypoints",
                             kpt_oks_sigmas=np.asarray(sigmas, np.float64).tolist(),
                             print_function=_quiet)
        stats = _run(ev)
        out = {k: (None if s < 0 else 100 * float(s)) for k, s in zip(STATS, stats,
                                                                      strict=False)}
        for name, ids in subsets.items():  # COCOeval again, on those images (crowdposetools)
            out[name] = None
            if ids:
                ev.params.imgIds = sorted(ids)
                ap = _run(ev)[0]
                out[name] = None if ap < 0 else 100 * float(ap)
    return out


def _load_results(coco_gt: COCO, results: list[dict]) -> COCO:
    """COCO.loadRes's keypoint branch (faster_coco_eval/core/coco.py, pycocotools' alike) with
    the per-result np.min / np.max done once on an (N, K, 3) array: 1.7 s of a 9 s evaluation
    of 25,000 results. Each result gets id i + 1, bbox and area = its keypoints' extent, as
    loadRes gives them (every keypoint, labelled or not)."""
    kp = np.asarray([r["keypoints"] for r in results], np.float64).reshape(len(results), -1, 3)
    lo, hi = kp[..., :2].min(1), kp[..., :2].max(1)  # (N, 2) x, y
    wh = hi - lo
    area, boxes = (wh[:, 0] * wh[:, 1]).tolist(), np.concatenate([lo, wh], 1).tolist()
    anns = [dict(r, id=i + 1, area=a, bbox=b)
            for i, (r, a, b) in enumerate(zip(results, area, boxes, strict=True))]
    res = COCO()
    res.dataset = {"images": list(coco_gt.dataset["images"]), "annotations": anns,
                   "categories": copy.deepcopy(coco_gt.dataset["categories"])}
    res.createIndex()
    return res


def _quiet(*_args: object) -> None:
    """COCOeval's print_function: uni reports the figures itself."""


def _run(ev: COCOeval_faster) -> np.ndarray:
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    return np.asarray(ev.stats, np.float64)


def oks_between(a: np.ndarray, others: np.ndarray, area_a: float, areas: np.ndarray,
                sigmas: np.ndarray) -> np.ndarray:
    """OKS of one result with others, as MMPose's oks_iou (no visibility threshold):
    a (K, ≥2), others (M, K, ≥2), areas (M,) → (M,) mean over all K keypoints of
    exp(-d² / (2σ)² / ((area_a + area) / 2) / 2)."""
    d2 = ((others[..., :2] - a[None, :, :2]) ** 2).sum(-1)  # (M, K)
    scale = (area_a + areas[:, None]) / 2 + np.spacing(1)
    return np.exp(-d2 / (2 * sigmas[None]) ** 2 / scale / 2).mean(-1)


def oks_nms(keypoints: np.ndarray, scores: np.ndarray, areas: np.ndarray, sigmas: np.ndarray,
            threshold: float = NMS_THRESHOLD) -> np.ndarray:
    """One image's results: keypoints (N, K, ≥2), scores (N,), areas (N,) → kept indices, best
    first. Greedy: take the best left, drop every other whose OKS with it is > threshold."""
    order = np.argsort(-np.asarray(scores, np.float64), kind="stable")
    keep = []
    while order.size:
        i, rest = order[0], order[1:]
        keep.append(int(i))
        oks = oks_between(keypoints[i], keypoints[rest], areas[i], areas[rest], sigmas)
        order = rest[oks <= threshold]
    return np.array(keep, np.int64)


def keypoint_similarity(pred: np.ndarray, gt: np.ndarray, area: float,
                        sigmas: np.ndarray) -> np.ndarray:
    """pred, gt: (K, 2) → (K,) exp(-d² / (2 · area · (2σ)²)), COCOeval's per-keypoint term."""
    d2 = ((pred - gt) ** 2).sum(-1)
    return np.exp(-d2 / ((2 * sigmas) ** 2) / (area + np.spacing(1)) / 2)


def oks_accuracy(pred: list[np.ndarray | None], gt: np.ndarray, areas: np.ndarray,
                 sigmas: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per keypoint: the share of labelled GT keypoints whose similarity reaches t, mean over
    t = 0.50 … 0.95. pred: per person (K, 2) or None (a miss); gt: (N, K, 3) →
    (% (K,) NaN where none is labelled, counts (K,))."""
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
