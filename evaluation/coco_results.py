"""COCO files in and out: detection boxes (`--boxes`) and keypoint results (predictions files).

Detections (COCO detection results): a JSON list of {"image_id", "category_id", "bbox": [x, y, w,
h], "score"}; only person boxes (category 1; a box without category_id counts as a person).

Keypoint results (what `evaluate --save-predictions` and `predict` write and `evaluate
--predictions` reads; pycocotools' `COCO.loadRes` takes it as it is): a JSON list of
    {"image_id": int, "category_id": 1, "keypoints": [x1, y1, s1, x2, y2, s2, …], "score": float}
plus uni's fields alongside, all optional when reading:
- "skeleton": the order of "keypoints" (a known skeleton's name; absent: the dataset's own order,
  as in any COCO results file). evaluate writes each dataset's native order, so a COCO file's
  results evaluate against its annotation file with pycocotools alone; predict writes the model's
  unified order.
- "unified": the model's unified skeleton; the keypoints scored are those the dataset labels and
  it has (absent: every keypoint of the dataset).
- "instance_id": the annotated person whose ground-truth box was cropped (absent: a detector's
  box); "box" the person box used [x, y, w, h] (not "bbox": loadRes would take the records for
  box results and size them by it, not by their keypoints), "box_score" its detector score;
  "dataset_id" (sha256 of the annotation file) routes a record to its --data spec when a file
  holds several; "image" (predict) the image file name.
"score" is the instance score (evaluation/predict.py: box score × mean keypoint score above 0.2).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from uniskel.core.datasets import Dataset
from uniskel.core.errors import UniError
from uniskel.core.files import json_int, read_json, write_json
from uniskel.core.skeletons import (
    Skeleton,
    get_skeleton,
    known_unified,
    unified_to_native,
)

PERSON = 1  # COCO's person category id


# --------------------------------------------------------------------------- detections


def read_detections(path: Path, score_threshold: float = 0.0) -> dict[int, list[tuple]]:
    """COCO detection results → {image_id: [(bbox (4,) x, y, w, h, score), …]}: person boxes
    with score ≥ score_threshold, in file order. A bad record is one line naming the field."""
    path = Path(path)
    data = read_json(path, "detections file")
    if not isinstance(data, list):
        raise UniError(f"{path}: expected a JSON list of detections (COCO detection results)")
    boxes: dict[int, list[tuple]] = {}
    for i, d in enumerate(data):
        where = f"{path}: record {i}"
        if not isinstance(d, dict):
            raise UniError(f"{where}: expected an object, got {type(d).__name__}")
        for key in ("image_id", "bbox"):
            if key not in d:
                raise UniError(f"{where}: missing field {key!r}")
        if d.get("category_id", PERSON) != PERSON:
            continue
        image_id = json_int(d["image_id"], f"{where} field 'image_id'")
        bbox = _floats(d["bbox"], f"{where} field 'bbox'", "4 numbers x, y, w, h")
        if bbox.shape != (4,) or not np.isfinite(bbox).all() or bbox[2] <= 0 or bbox[3] <= 0:
            raise UniError(f"{where} field 'bbox': expected finite x, y, w, h with w, h > 0, "
                           f"got {d['bbox']!r:.60}")
        score = _number(d.get("score", 1.0), f"{where} field 'score'")
        if score >= score_threshold:
            boxes.setdefault(image_id, []).append((bbox, score))
    return boxes


# --------------------------------------------------------------------------- keypoint results


def result_record(image_id: int | None, keypoints: np.ndarray, score: float, skeleton: str,
                  unified: str, **extra) -> dict:
    """One keypoint result: keypoints (K, 3) [x, y, score] in `skeleton`'s order. Coordinates
    keep 2 decimals (1/100 px), scores 4; extra fields (see the module docstring) follow."""
    flat = [v for x, y, s in np.asarray(keypoints, np.float64)
            for v in (round(float(x), 2), round(float(y), 2), round(float(s), 4))]
    return {"image_id": image_id, "category_id": PERSON, "keypoints": flat,
            "score": round(float(score), 6), "skeleton": skeleton, "unified": unified, **extra}


def write_results(path: Path, records: list[dict]) -> Path:
    """Keypoint results → one JSON file (atomic)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, records, indent=None)
    return path


@dataclass
class Results:
    """One dataset's keypoint results, checked, in the dataset's native order (M persons)."""

    image_ids: np.ndarray  # (M,) int64
    instance_ids: np.ndarray | None  # (M,) int64: persons of GT boxes; None: detector boxes
    keypoints: np.ndarray  # (M, K, 3) float64 [x, y, score], K = the dataset's keypoints
    scores: np.ndarray  # (M,) float64 instance scores
    unified: Skeleton | None  # the model's unified skeleton (None: not said, score all)


def read_results(path: Path, datasets: list[Dataset]) -> list[Results]:
    """A keypoint results file → one Results per dataset (each record checked)."""
    path = Path(path)
    data = read_json(path, "predictions file")
    if not isinstance(data, list):
        raise UniError(f"{path}: expected a JSON list of keypoint results (COCO results format)")
    return parse_results(data, datasets, str(path))


def parse_results(records: list, datasets: list[Dataset], src: str,
                  unified: Skeleton | None = None) -> list[Results]:
    """Keypoint result records (as written) → one Results per dataset. unified: the model's
    skeleton when known here (records name it; a name unknown here then needs no TOML)."""
    index = {d.dataset_id: k for k, d in enumerate(datasets)}
    rows: list[list[tuple]] = [[] for _ in datasets]  # (image, instance, kp (K, 3), score)
    said: list[list] = [[] for _ in datasets]  # per dataset: (record, unified name)
    skeletons: dict[str, Skeleton] = {}
    for i, rec in enumerate(records):
        where = f"{src}: record {i}"
        if not isinstance(rec, dict):
            raise UniError(f"{where}: expected an object, got {type(rec).__name__}")
        for key in ("image_id", "keypoints", "score"):
            if key not in rec:
                raise UniError(f"{where}: missing field {key!r}")
        if rec.get("category_id", PERSON) != PERSON:
            continue
        dsid = rec.get("dataset_id")
        if dsid is not None and not isinstance(dsid, str):
            raise UniError(f"{where} field 'dataset_id': expected a string")
        if dsid is None and len(datasets) != 1:
            raise UniError(f"{where}: no 'dataset_id', needed with several --data specs")
        k = 0 if dsid is None else index.get(dsid)
        if k is None:
            continue  # a dataset not asked for this time
        ds = datasets[k]
        kp = _record_keypoints(rec, where, ds.skeleton, unified, skeletons)
        score = _number(rec["score"], f"{where} field 'score'")
        image_id = json_int(rec["image_id"], f"{where} field 'image_id'")
        iid = _instance_id(rec, where, ds, image_id)
        if rows[k] and (iid is None) != (rows[k][0][1] is None):
            raise UniError(f"{where} field 'instance_id': some results of "
                           f"{ds.spec.annotations} have one and some not (GT boxes or a "
                           "detector's, not both)")
        name = rec.get("unified")
        if name is not None and not isinstance(name, str):
            raise UniError(f"{where} field 'unified': expected a skeleton name")
        said[k].append((i, name))
        rows[k].append((image_id, iid, kp, score))
    out = []
    for k, ds in enumerate(datasets):
        if not rows[k]:
            raise UniError(f"{src}: no predictions for {ds.spec.annotations}")
        out.append(_results(rows[k], said[k], ds, unified, skeletons, src))
    return out


def _record_keypoints(rec: dict, where: str, native: Skeleton, unified: Skeleton | None,
                      skeletons: dict[str, Skeleton]) -> np.ndarray:
    """A record's "keypoints", checked, in the dataset's native order: (K, 3)."""
    order = _skeleton(rec.get("skeleton"), native, unified, skeletons, f"{where} field "
                                                                      "'skeleton'")
    kp = _floats(rec["keypoints"], f"{where} field 'keypoints'",
                 f"a flat list [x, y, score] × {order.num_keypoints}")
    if kp.shape != (3 * order.num_keypoints,):
        raise UniError(f"{where} field 'keypoints': expected a flat list of "
                       f"{3 * order.num_keypoints} numbers ([x, y, score] × "
                       f"{order.num_keypoints}, {order.name}), got shape {list(kp.shape)}")
    if not np.isfinite(kp).all():
        raise UniError(f"{where} field 'keypoints': NaN or inf")
    return reorder(kp.reshape(-1, 3), order, native)


def _instance_id(rec: dict, where: str, ds: Dataset, image_id: int) -> int | None:
    """A record's "instance_id", checked against the dataset and the record's image; None
    when absent (a detector's box)."""
    iid = rec.get("instance_id")
    if iid is None:
        return None
    iid = json_int(iid, f"{where} field 'instance_id'")
    row = ds.row_of(iid)
    if row is None:
        raise UniError(f"{where} field 'instance_id': {iid} is not an evaluated person "
                       f"of {ds.spec.annotations}")
    if image_id != ds.image_ids[ds.image_index[row]]:
        raise UniError(f"{where} field 'image_id': {image_id}, but person {iid} is in "
                       f"image {ds.image_ids[ds.image_index[row]]}")
    return iid


def _results(rows: list[tuple], said: list, ds: Dataset, unified: Skeleton | None,
             skeletons: dict[str, Skeleton], src: str) -> Results:
    names = {n for _, n in said}
    if len(names) > 1:
        i = next(i for i, n in said if n != said[0][1])
        raise UniError(f"{src}: record {i} field 'unified': results of {ds.spec.annotations} "
                       f"name different unified skeletons ({', '.join(map(str, names))})")
    name = names.pop()
    if name is not None and (unified is None or unified.name != name):
        unified = _skeleton(name, ds.skeleton, None, skeletons,
                            f"{src}: record {said[0][0]} field 'unified'")
    image_ids = np.array([r[0] for r in rows], np.int64)
    known = set(ds.image_ids.tolist())
    bad = next((j for j, im in enumerate(image_ids.tolist()) if im not in known), None)
    if bad is not None:
        raise UniError(f"{src}: record {said[bad][0]} field 'image_id': {image_ids[bad]} is not "
                       f"an image of {ds.spec.annotations}")
    iids = None if rows[0][1] is None else np.array([r[1] for r in rows], np.int64)
    if iids is not None and len(set(iids.tolist())) < len(iids):
        dup = next(j for j, v in enumerate(iids.tolist()) if v in iids[:j])
        raise UniError(f"{src}: record {said[dup][0]} field 'instance_id': duplicate "
                       f"{iids[dup]}")
    return Results(image_ids, iids, np.stack([r[2] for r in rows]),
                   np.array([r[3] for r in rows], np.float64), unified)


def _skeleton(name: object, native: Skeleton, unified: Skeleton | None,
              cache: dict[str, Skeleton], where: str) -> Skeleton:
    if name is None or name == native.name:
        return native
    if unified is not None and name == unified.name:
        return unified
    if not isinstance(name, str):
        raise UniError(f"{where}: expected a skeleton name")
    if name not in cache:
        named = known_unified()
        try:
            cache[name] = named[name] if name in named else get_skeleton(name)
        except UniError as e:
            raise UniError(f"{where}: {e} (a skeleton of your own: uni --skeletons FILE)"
                           ) from None
    return cache[name]


def reorder(kp: np.ndarray, src: Skeleton, dst: Skeleton) -> np.ndarray:
    """(..., K_src, C) in src's order → (..., K_dst, C) in dst's, matched by canonical name
    (unified → native when src is a unified skeleton); keypoints src lacks are 0."""
    if src is dst or src.name == dst.name:
        return kp  # as it is, keypoints without a unified name included
    return unified_to_native(kp, dst, src)  # by canonical name, between any two skeletons


def _floats(value: object, where: str, what: str) -> np.ndarray:
    try:
        out = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError, OverflowError):
        raise UniError(f"{where}: expected {what}") from None
    return out


def _number(value: object, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise UniError(f"{where}: expected a finite number, got {value!r:.40}")
    return float(value)
