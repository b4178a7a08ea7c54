"""The COCO-style reader: JSON → numpy columns (core/columns.py), one record at a time (MPII's
list: core/mpii_reader.py).

The file is streamed (core/json_stream.py): each record is checked and copied into typed
columns as it is parsed, then dropped, so a dataset costs its arrays (~0.5 KB a COCO person) and
never a Python object per person. Problems are collected while streaming and the one raised is
the one a whole-file reader checking in this order would meet first (the order the tests pin):
the file is JSON; the top-level fields; every image id (file order), every image file name, every
image's own fields (file order); every annotation id (file order); then each annotation in id
order — its keypoints, box, image id, that the image exists, its area. A bad record never stops
the parse, so a file that is not JSON further on still says so.

The COCO-style reader reads any skeleton by shape: a dataset kind (core/skeletons.toml) names
the annotation fields holding its K keypoints (COCO-WholeBody: "keypoints" + "foot_kpts"), and
other counts a field may carry (Halpe: 136, of which the first 26). A person is kept when a
keypoint has v > 0, whatever `num_keypoints` says (CrowdPose's counts only 12 of its 14).
Image-level fields (CrowdPose's crowd index, PoseTrack's frame and video ids and ignore regions)
are read wherever a file has them, whatever the kind: core/image_fields.py.
"""

from __future__ import annotations

from array import array
from pathlib import Path

import numpy as np

from uniskel.core.columns import Columns, ImagePaths, column, fed, floats, record_field
from uniskel.core.errors import UniError
from uniskel.core.files import json_int
from uniskel.core.image_fields import ImageFields
from uniskel.core.json_stream import Streamed, read_json_stream
from uniskel.core.skeletons import DatasetKind, Skeleton

_INT64 = (-(2**63), 2**63 - 1)
_MISSING = object()  # an image record without 'file_name'
_BLOCK = 2048  # annotations checked at once


def _id(value: object, where: str) -> int:
    value = json_int(value, where, "an integer id")
    if not _INT64[0] <= value <= _INT64[1]:
        raise UniError(f"{where}: id {value} is outside the 64-bit integer range")
    return value


def _check_box(bbox: np.ndarray, where: str) -> None:
    if bbox[2] <= 0 or bbox[3] <= 0:
        raise UniError(f"{where}: bbox width and height must be positive, got {bbox.tolist()}")


class _Ids:
    """Record ids in file order: the first bad one, and the first repeated one, by position."""

    def __init__(self, key: str, noun: str):
        self.key, self.noun = key, noun
        self.ids = array("q")  # (position,) every id before the first bad record
        self.error: str | None = None

    def add(self, record: object, where: str) -> int | None:
        """The record's id, or None (then no later record matters: this error comes first)."""
        if self.error is not None:
            return None
        try:
            record_id = _id(record_field(record, "id", where), f"{where} field 'id'")
        except UniError as e:
            self.error = str(e)
            return None
        self.ids.append(record_id)
        return record_id

    def check(self, src: str) -> np.ndarray:
        """(M,) int64 ids; UniError for the first problem in file order."""
        ids = column(self.ids, np.int64)
        order = np.argsort(ids, kind="stable")
        repeats = order[np.flatnonzero(ids[order][1:] == ids[order][:-1]) + 1]
        if repeats.size:  # a repeat comes before the bad record (ids stop there)
            pos = int(repeats.min())
            raise UniError(f"{src}: {self.key}[{pos}] field 'id': duplicate {self.noun} id "
                           f"{int(ids[pos])}")
        if self.error is not None:
            raise UniError(self.error)
        return ids


class _CocoImages:
    """Sink of a COCO 'images' list: ids, file names and image-level fields, checked by
    `check`."""

    def __init__(self, src: str):
        self.src, self.ids, self.names = src, _Ids("images", "image"), []
        self.fields = ImageFields(src)

    def __call__(self, img: object) -> None:
        image_id = self.ids.add(img, f"{self.src}: images[{len(self.ids.ids)}]")
        if image_id is not None:
            self.names.append(img.get("file_name", _MISSING))
            self.fields.add(img, image_id)

    def check(self, root: Path) -> tuple[np.ndarray, np.ndarray]:
        """(ids (I,) int64, paths (I,) str); UniError for the first bad id, then name."""
        ids = self.ids.check(self.src)
        paths, resolve = [], ImagePaths(root)
        for i, name in enumerate(self.names):
            where = f"{self.src}: images[{i}]"
            if name is _MISSING:
                raise UniError(f"{where}: missing field 'file_name'")
            paths.append(resolve(name, where))
        if self.fields.error is not None:
            raise UniError(self.fields.error)
        return ids, np.array(paths, dtype=str)


class _CocoAnnotations:
    """Sink of a COCO-style 'annotations' list: kept persons into columns; crowd and
    unlabeled people skipped; the first problem in id order remembered (see module doc).

    Records are checked a block at a time with numpy (one array per field for the block); a
    block with anything unusual in it goes through `_one`, record by record, which finds the
    problem and words it."""

    def __init__(self, src: str, skeleton: Skeleton, kind: DatasetKind):
        self.src, self.k, self.skeleton = src, skeleton.num_keypoints, skeleton.name
        self.fields = kind.fields  # ((field, keypoints), ...) summing to k
        # Numbers a single field may hold: 3 K, or 3 × one of the kind's longer counts.
        self.lengths = {3 * self.k, *(3 * n for n in kind.file_keypoints)}
        # (validity flag, its field's slice of the K keypoints) of each "X_kpts" field
        self.flags, start = [], 0
        for name, n in self.fields:
            if name.endswith("_kpts"):
                self.flags.append((name[: -len("_kpts")] + "_valid", slice(start, start + n)))
            start += n
        self.ids = _Ids("annotations", "annotation")
        self.pending: list[tuple[int, dict]] = []  # (id, record) not yet checked
        self.first: tuple[int, int, str] | None = None  # (id, rank in the checks, message)
        self.kept, self.image_ids = array("q"), array("q")
        self.bboxes, self.keypoints, self.areas = array("d"), array("d"), array("d")

    def __call__(self, ann: object) -> None:
        ann_id = self.ids.add(ann, f"{self.src}: annotations[{len(self.ids.ids)}]")
        if ann_id is not None:
            self.pending.append((ann_id, ann))
            if len(self.pending) >= _BLOCK:
                self.flush()

    def flush(self) -> None:
        block, self.pending = self.pending, []
        if self.ids.error is not None:
            return  # a bad id is raised before anything found here
        if self.first is None and self._block(block):
            return
        for ann_id, ann in block:
            if self.first is None or ann_id < self.first[0]:  # else: raised anyway
                self._one(ann_id, ann)

    def _problem(self, ann_id: int, rank: int, message: str) -> None:
        if self.first is None or (ann_id, rank) < self.first[:2]:
            self.first = (ann_id, rank, message)

    def _add(self, ids, image_ids, bboxes, keypoints, areas) -> None:
        self.kept.frombytes(np.asarray(ids, np.int64).tobytes())
        self.image_ids.frombytes(np.asarray(image_ids, np.int64).tobytes())
        self.bboxes.frombytes(np.ascontiguousarray(bboxes, np.float64).tobytes())
        self.keypoints.frombytes(np.ascontiguousarray(keypoints, np.float64).tobytes())
        self.areas.frombytes(np.asarray(areas, np.float64).tobytes())

    def _block(self, block: list[tuple[int, dict]]) -> bool:
        """Check and keep a whole block at once; False (nothing kept) if any record is unusual."""
        rows = []  # (id, keypoints, bbox, image id, has an area, area) of each person
        names = [f for f, _ in self.fields]
        need = {*names, "bbox", "image_id"}
        for ann_id, ann in block:
            if ann.get("iscrowd", 0):
                continue
            if not need <= ann.keys() or type(
                    ann["image_id"]) is not int:  # noqa: E721 (bool is not an id)
                return False
            if len(names) == 1:
                kps = ann[names[0]]
            elif all(type(ann[f]) is list for f in names):  # noqa: E721
                kps = [x for f in names for x in ann[f]]
            else:
                return False
            rows.append((ann_id, kps, ann["bbox"], ann["image_id"], "area" in ann,
                         ann.get("area", 0.0), [ann.get(flag, True) for flag, _ in self.flags]))
        if not rows:
            return True
        ids, kps, boxes, images, has_area, areas, valid = zip(*rows, strict=True)
        n, k = len(ids), self.k
        try:
            kp = np.array(kps, np.float64)  # (n, L)
            box = np.array(boxes, np.float64)  # (n, 4)
            area = np.array(areas, np.float64)  # (n,)
            image = np.array(images, np.int64)  # (n,)
        except (TypeError, ValueError, OverflowError):
            return False
        if kp.ndim != 2 or box.shape != (n, 4) or area.shape != (n,) or not np.isfinite(
                kp).all() or kp.shape[1] not in (self.lengths if len(names) == 1 else {3 * k}):
            return False
        kp = kp[:, : 3 * k].reshape(n, k, 3)
        for j, (_, part) in enumerate(self.flags):
            kp[[not v[j] for v in valid], part, 2] = 0.0  # e.g. foot_valid false: unlabelled
        keep = (kp[:, :, 2] > 0).any(axis=1)
        has = np.array(has_area) & keep
        if not (np.isfinite(box[keep]).all() and (box[keep][:, 2:] > 0).all()
                and np.isfinite(area[has]).all()):
            return False
        area = np.where(has, area, box[:, 2] * box[:, 3])
        self._add(np.array(ids)[keep], image[keep], box[keep], kp[keep], area[keep])
        return True

    def _keypoints(self, ann: dict, where: str) -> np.ndarray:
        """(3 K,) the kind's fields, each checked against its count; flagged parts unlabelled."""
        parts = []
        for name, n in self.fields:
            kp = floats(record_field(ann, name, where), None, f"{where} field {name!r}")
            lengths = self.lengths if len(self.fields) == 1 else {3 * n}
            if kp.size not in lengths:
                expected = " or ".join(str(m) for m in sorted(lengths))
                raise UniError(f"{where} field {name!r}: expected {expected} numbers "
                               f"({n} keypoints × 3 of skeleton {self.skeleton}), got {kp.size}")
            parts.append(kp[: 3 * n])
        kp = np.concatenate(parts).reshape(self.k, 3)
        for flag, part in self.flags:
            if not ann.get(flag, True):
                kp[part, 2] = 0.0
        return kp.reshape(-1)

    def _one(self, ann_id: int, ann: dict) -> None:
        where = f"{self.src}: annotation id {ann_id}"
        if ann.get("iscrowd", 0):
            return
        try:
            kp = self._keypoints(ann, where)
        except UniError as e:
            # num_keypoints 0 marks a person nobody labelled; their array is not read (COCO).
            if ann.get("num_keypoints", 1) != 0:
                self._problem(ann_id, 0, str(e))
            return
        try:
            if not (kp[2::3] > 0).any():
                return
            bbox = floats(record_field(ann, "bbox", where), 4, f"{where} field 'bbox'")
            _check_box(bbox, f"{where} field 'bbox'")
            image_id = _id(record_field(ann, "image_id", where), f"{where} field 'image_id'")
        except UniError as e:
            self._problem(ann_id, 0, str(e))
            return
        area = bbox[2] * bbox[3]
        if "area" in ann:
            try:
                area = floats(ann["area"], 1, f"{where} field 'area'")[0]
            except UniError as e:  # after the image check: that one speaks first
                self._problem(ann_id, 2, str(e))
        self._add([ann_id], [image_id], bbox, kp, [area])


def coco_columns(path: Path, image_root: Path, skeleton: Skeleton, kind: DatasetKind) -> Columns:
    """Every COCO-style kind: JSON {images, annotations}, keypoints as the kind says."""
    src = str(path)
    data = read_json_stream(path, {"images": lambda: _CocoImages(src),
                                   "annotations": lambda: _CocoAnnotations(src, skeleton, kind)})
    for key in ("images", "annotations"):
        if not isinstance(record_field(data, key, src), list | Streamed):
            raise UniError(f"{src}: field {key!r} must be a list")
    images = fed(data["images"], _CocoImages(src))
    image_ids, image_paths = images.check(image_root)
    anns = fed(data["annotations"], _CocoAnnotations(src, skeleton, kind))
    del data
    anns.flush()
    anns.ids.check(src)
    kept, want = column(anns.kept, np.int64), column(anns.image_ids, np.int64)
    order = np.argsort(image_ids, kind="stable")
    pos = np.minimum(np.searchsorted(image_ids[order], want), max(len(order) - 1, 0))
    known = image_ids[order][pos] == want if len(order) else np.zeros(len(want), bool)
    if not known.all():
        j = int(np.argmin(np.where(known, np.iinfo(np.int64).max, kept)))
        anns._problem(int(kept[j]), 1, f"{src}: annotation id {int(kept[j])} field 'image_id': "
                                       f"no image with id {int(want[j])}")
    if anns.first is not None:
        raise UniError(anns.first[2])
    # Rows by ascending id: each column is taken from its buffer (then freed) and reordered in
    # turn, so sorting costs one column's copy at a time, none when the file is in id order.
    rows = None if (kept[1:] > kept[:-1]).all() else np.argsort(kept, kind="stable")

    def take(name: str, shape: tuple[int, ...] = ()) -> np.ndarray:
        col = column(getattr(anns, name), np.float64, shape)
        setattr(anns, name, None)
        return col if rows is None else col[rows]

    image_index = order[pos].astype(np.int32)
    bboxes = take("bboxes", (4,))
    return Columns(
        image_ids, image_paths, kept if rows is None else kept[rows],
        image_index if rows is None else image_index[rows], bboxes,
        take("keypoints", (skeleton.num_keypoints, 3)), np.full((len(kept), 4), np.nan),
        take("areas"), **images.fields.columns())
