"""PoseTrack18's official figure: poseval's multi-person pose mAP (docs/conventions.md "Metrics").

Reference: leonid-pishchulin/poseval (commit 4258a15), which MMPose's PoseTrack18Metric
(mmpose/evaluation/metrics/posetrack18_metric.py) calls; each rule below names its function.
- Frames (eval_helpers.py `cleanupData`): only images with at least one annotation in the file;
  predictions on other images are not scored.
- Joints (convert.py `POSETRACK18_LM_NAMES`): 15, the ears dropped. A point exists unless it
  is x = y = 0 with v (GT) or score (prediction: MMPose writes the keypoint score there) 0
  (convert.py `Person.to_old`). Each predicted joint's score is its keypoint score.
- Ignore regions (`removeIgnoredPoints`): GT and predicted points strictly inside one of the
  frame's polygons (shapely `Polygon.contains`: the boundary is outside) are dropped.
- Matching, frame by frame (`assignGTmulti`): a predicted joint is correct for a GT person when
  within 0.5 × that person's head size (`getHeadSize`: 0.6 × the diagonal of `bbox_head`). Each
  prediction keeps the GT person with its highest share of correct joints (of the GT's labelled
  ones; first on ties); each GT person takes, of the predictions that kept it, the one with the
  highest share (first on ties; none at share 0). A matched prediction's joints are true
  positives where correct; every other predicted joint is a false positive.
- Per joint (evaluateAP.py `computeMetrics`): its predictions over all frames sorted by score
  (`computeRPC`), AP = area under the precision envelope (`VOCap`, VOC 2010+: every recall step)
  × 100. A joint no frame labels scores NaN if predicted, 0 if not.
- Rows (`getCum`, printed by `printTable`): Head = mean(head_top, head_bottom, nose), Shou, Elb,
  Wri, Hip, Knee, Ankl = mean(right, left); Total = mean of the per-joint APs that are not NaN.
uni scores the joints the model's skeleton has (evaluation/evaluate.py `scored_mask`): a row
with a joint outside them is None, and Total averages the scored joints.
"""

from __future__ import annotations

import numpy as np

from uniskel.core.datasets import Dataset
from uniskel.core.errors import UniError
from uniskel.evaluation.coco_results import Results

POSETRACK_KINDS = ("posetrack18",)
DIST_THRESHOLD = 0.5  # evaluateAP.py distThresh, in head sizes
HEAD_SIZE_FACTOR = 0.6  # eval_helpers.py getHeadSize
# eval_helpers.py Joint / convert.py POSETRACK18_LM_NAMES: poseval's joint order (native names).
POSEVAL_JOINTS = ("right_ankle", "right_knee", "right_hip", "left_hip", "left_knee", "left_ankle",
                  "right_wrist", "right_elbow", "right_shoulder", "left_shoulder", "left_elbow",
                  "left_wrist", "head_bottom", "nose", "head_top")
# getCum's rows under printTable's header names, each the mean of its joints in getCum's order.
GROUPS = (("Head", ("head_top", "head_bottom", "nose")),
          ("Shou", ("right_shoulder", "left_shoulder")), ("Elb", ("right_elbow", "left_elbow")),
          ("Wri", ("right_wrist", "left_wrist")), ("Hip", ("right_hip", "left_hip")),
          ("Knee", ("right_knee", "left_knee")), ("Ankl", ("right_ankle", "left_ankle")))
TOTAL = "Total"
RULE = ("poseval mAP: per joint, PCKh@0.5 of the head box matching per frame, ignore regions "
        "dropped, VOC AP over score-sorted joints")


def has_point(kp: np.ndarray) -> np.ndarray:
    """(…, 3) x, y, v-or-score → (…,) bool: not the x = y = v = 0 of an absent point."""
    return ~((kp[..., 0] == 0) & (kp[..., 1] == 0) & (kp[..., 2] == 0))


def in_polygons(points: np.ndarray, polygons: list[np.ndarray]) -> np.ndarray:
    """(M, 2) points, [(V, 2) vertices, …] → (M,) bool: strictly inside one polygon (even-odd
    crossings; a point on an edge is outside, as shapely's contains)."""
    inside = np.zeros(len(points), bool)
    for poly in polygons:
        # Only points in the polygon's box and not yet inside are tested against its edges.
        near = ~inside & (points >= poly.min(0)).all(1) & (points <= poly.max(0)).all(1)
        if not near.any():
            continue
        idx = np.flatnonzero(near)
        px, py = points[idx, :1], points[idx, 1:2]  # (m, 1)
        x1, y1 = poly[:, 0], poly[:, 1]
        x2, y2 = np.roll(x1, -1), np.roll(y1, -1)  # (V,) edges to the next vertex, closing
        with np.errstate(divide="ignore", invalid="ignore"):
            crosses = ((y1 > py) != (y2 > py)) & (px < x1 + (py - y1) * (x2 - x1) / (y2 - y1))
        odd = crosses.sum(1) % 2 == 1
        idx, px, py = idx[odd], px[odd], py[odd]
        on_edge = (((x2 - x1) * (py - y1) == (y2 - y1) * (px - x1))
                   & (px >= np.minimum(x1, x2)) & (px <= np.maximum(x1, x2))
                   & (py >= np.minimum(y1, y2)) & (py <= np.maximum(y1, y2))).any(1)
        inside[idx[~on_edge]] = True
    return inside


def match_frame(gt: np.ndarray, gt_has: np.ndarray, heads: np.ndarray, pred: np.ndarray,
                pred_has: np.ndarray, threshold: float = DIST_THRESHOLD) -> np.ndarray:
    """One frame (assignGTmulti): gt (G, J, 2), gt_has (G, J), heads (G,) head sizes, pred
    (P, J, 2), pred_has (P, J) → (P, J) bool: true positive (matched and correct)."""
    labels = np.zeros(pred_has.shape, bool)
    if not len(gt) or not len(pred):
        return labels
    with np.errstate(divide="ignore", invalid="ignore"):
        dist = np.linalg.norm(gt[None] - pred[:, None], axis=-1) / heads[None, :, None]
    both = pred_has[:, None] & gt_has[None]  # (P, G, J)
    match = both & (np.where(both, dist, np.inf) <= threshold)
    n_gt = gt_has.sum(1)
    pck = match.sum(2).astype(np.float64)
    pck[:, n_gt > 0] /= n_gt[n_gt > 0]
    best = np.argmax(pck, axis=1)  # each prediction keeps its best GT person only
    kept = np.zeros_like(pck)
    rows = np.arange(len(pred))
    kept[rows, best] = pck[rows, best]
    pred_of_gt = np.argmax(kept, axis=0)
    for g in np.flatnonzero(kept.max(axis=0) > 0):
        labels[pred_of_gt[g]] = match[pred_of_gt[g], g]
    return labels


def voc_ap(recall: np.ndarray, precision: np.ndarray) -> float:
    """eval_helpers.py VOCap: area under the monotone precision envelope at each recall step."""
    mrec = np.concatenate([[0.0], recall, [1.0]])
    mpre = np.maximum.accumulate(np.concatenate([[0.0], precision, [0.0]])[::-1])[::-1]
    i = np.flatnonzero(mrec[1:] != mrec[:-1]) + 1
    return float(np.sum((mrec[i] - mrec[i - 1]) * mpre[i]))


def joint_ap(scores: np.ndarray, labels: np.ndarray, n_gt: float) -> float:
    """computeMetrics for one joint: AP × 100 (0 without predictions, NaN without GT)."""
    if not len(scores):
        return 0.0
    order = np.asarray(scores, np.float64).argsort()[::-1]  # computeRPC's own order on ties
    tp = np.cumsum(labels[order] == 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        recall = tp / np.float64(n_gt)
    return voc_ap(recall, tp / np.arange(1, len(tp) + 1)) * 100


def _head_boxes(ds: Dataset, raw: dict) -> tuple[np.ndarray, dict[int, int], set]:
    """From the file: (N, 4) x, y, w, h `bbox_head` per dataset row, each annotation id's
    position in the file, and the image ids with an annotation."""
    anns = raw.get("annotations", []) if isinstance(raw, dict) else []
    heads, position, annotated = {}, {}, set()
    for k, a in enumerate(anns):
        if isinstance(a, dict):
            heads[a.get("id")], position[a.get("id")] = a.get("bbox_head"), k
            annotated.add(a.get("image_id"))
    out = np.full((len(ds.instance_ids), 4), np.nan)
    for row, iid in enumerate(ds.instance_ids.tolist()):
        box = heads.get(iid)
        if not (isinstance(box, list) and len(box) == 4
                and all(isinstance(v, int | float) and not isinstance(v, bool) for v in box)):
            raise UniError(f"{ds.spec.annotations}: annotation id {iid} field 'bbox_head': "
                           "poseval's mAP needs each person's head box [x, y, w, h]")
        out[row] = box
    return out, position, annotated


def _by_image(image_rows: np.ndarray, n_images: int) -> list[np.ndarray]:
    """(M,) image row of each item (-1: none) → per image row, its items' indices in order."""
    order = np.argsort(image_rows, kind="stable")
    bounds = np.searchsorted(image_rows[order], np.arange(n_images + 1))
    return [order[bounds[i]:bounds[i + 1]] for i in range(n_images)]


def poseval_joint_aps(ds: Dataset, res: Results, joints: np.ndarray) -> np.ndarray:
    """(J,) poseval AP of the native keypoints `joints` (poseval's order), frame by frame."""
    heads, position, annotated = _head_boxes(ds, ds.read_annotations())
    # convert.py's corners x2 = x + w, y2 = y + h, then getHeadSize's 0.6 × ‖(x2 - x1, y2 - y1)‖
    dx, dy = (heads[:, :2] + heads[:, 2:]).T - heads[:, :2].T
    head_size = HEAD_SIZE_FACTOR * np.sqrt(dx * dx + dy * dy)
    image_row = {int(i): k for k, i in enumerate(ds.image_ids.tolist())}
    pred_image = np.array([image_row.get(int(i), -1) for i in res.image_ids], np.int64)
    gt_of, pred_of = _by_image(ds.image_index, ds.num_images), _by_image(pred_image,
                                                                          ds.num_images)
    file_order = np.array([position[i] for i in ds.instance_ids.tolist()])
    n_gt, scores, has, tps = np.zeros(len(joints)), [], [], []
    for im, image_id in enumerate(ds.image_ids.tolist()):
        if image_id not in annotated:  # cleanupData: a frame without annotations is not scored
            continue
        rows = gt_of[im][np.argsort(file_order[gt_of[im]], kind="stable")]  # the file's order
        gt = ds.keypoints[rows][:, joints]  # (G, J, 3)
        pred = res.keypoints[pred_of[im]][:, joints]  # (P, J, 3), results order
        gt_has, pred_has = has_point(gt), has_point(pred)
        polygons = [p for p in ds.ignore_regions(im) if len(p) >= 3]
        if polygons:  # removeIgnoredPoints
            points = np.concatenate([gt[..., :2], pred[..., :2]]).reshape(-1, 2)
            out = ~in_polygons(points, polygons).reshape(-1, len(joints))
            gt_has &= out[:len(gt)]
            pred_has &= out[len(gt):]
        tps.append(match_frame(gt[..., :2], gt_has, head_size[rows], pred[..., :2], pred_has))
        n_gt += gt_has.sum(0)
        scores.append(pred[..., 2])
        has.append(pred_has)
    scores, has, tps = map(np.concatenate, (scores, has, tps))  # >= 1 frame: a labelled person's
    return np.array([joint_ap(scores[has[:, j], j], tps[has[:, j], j], n_gt[j])
                     for j in range(len(joints))])


def poseval_figures(ds: Dataset, res: Results, keep: np.ndarray) -> dict:
    """poseval's rows ("official", printTable's names; "groups" those not None), Total as the
    primary value, and each scored joint's AP; keep: (K,) bool scored native keypoints."""
    names = list(ds.skeleton.keypoints)
    missing = [n for n in POSEVAL_JOINTS if n not in names]
    if missing:
        raise UniError(f"{ds.spec.annotations}: poseval's mAP needs the keypoints "
                       f"{', '.join(missing)}; skeleton {ds.skeleton.name} lacks them")
    joints = np.array([names.index(n) for n in POSEVAL_JOINTS])
    aps = poseval_joint_aps(ds, res, joints)
    scored = keep[joints]
    ap = {n: float(a) for n, a, s in zip(POSEVAL_JOINTS, aps, scored, strict=True) if s}
    official: dict[str, float | None] = {}
    for label, members in GROUPS:
        vals = [ap.get(m, np.nan) for m in members]
        official[label] = None if np.isnan(vals).any() else float(np.mean(vals))
    in_total = aps[scored & ~np.isnan(aps)]
    official[TOTAL] = float(in_total.mean()) if len(in_total) else None
    shown = {c or n: None if np.isnan(ap[n]) else ap[n]
             for c, n in zip(ds.skeleton.canonical, names, strict=True) if n in ap}
    return {"metric": "mAP", "value": official[TOTAL] or 0.0, "mAP": official[TOTAL],
            "official": official, "groups": {k: v for k, v in official.items() if v is not None},
            "per_joint_AP": shown, "mAP_rule": RULE}
