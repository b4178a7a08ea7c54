"""Annotation readers: COCO-style and MPII-style JSON → numpy columns, one record at a time.

The file is streamed (pipeline/json_stream.py): each record is checked and copied into typed
columns as it is parsed, then dropped, so a dataset costs its arrays (~0.5 KB a COCO person) and
never a Python object per person. Problems are collected while streaming and the one raised is
the one a whole-file reader checking in this order would meet first (the order the tests pin):
the file is JSON; the top-level fields; every image id (file order), every image file name; every
annotation id (file order); then each annotation in id order — its keypoints, box, image id, that
the image exists, its area. A bad record never stops the parse, so a file that is not JSON further
on still says so.
"""

from __future__ import annotations

import os
from array import array
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from uniskel.pipeline.errors import UniError
from uniskel.pipeline.files import json_int
from uniskel.pipeline.geometry import mpii_bbox
from uniskel.pipeline.json_stream import Streamed, read_json_stream
from uniskel.pipeline.skeletons import Skeleton

_INT64 = (-(2**63), 2**63 - 1)
_MISSING = object()  # an image record without 'file_name'
_BLOCK = 2048  # annotations checked at once


@dataclass
class Columns:
    """A dataset's persons as arrays (row = person, ascending instance id) and its images."""

    image_ids: np.ndarray  # (I,) int64: the file's image ids (MPII: order of first appearance)
    image_paths: np.ndarray  # (I,) str: each image's resolved path, once
    instance_ids: np.ndarray  # (N,) int64, ascending
    image_index: np.ndarray  # (N,) int32: row into image_ids / image_paths
    bboxes: np.ndarray  # (N, 4) float64 x, y, w, h in image pixels
    keypoints: np.ndarray  # (N, K, 3) float64 native order [x, y, v]
    head_boxes: np.ndarray  # (N, 4) float64 x1, y1, x2, y2; NaN where unknown
    areas: np.ndarray  # (N,) float64


def _image_path(root: Path, name: object, where: str) -> Path:
    if not isinstance(name, str) or not name:
        raise UniError(f"{where}: image file name must be a non-empty string")
    try:
        path = (root / name).resolve()
    except (OSError, ValueError) as e:  # NUL bytes, symlink loops
        raise UniError(f"{where}: bad image file name {name!r:.60} ({e})") from None
    if not path.is_relative_to(root.resolve()):
        raise UniError(f"{where}: image path {name!r} escapes the image root {root}")
    return path


class _Paths:
    """Image file names → resolved paths (str), as `_image_path` gives them, with each folder
    resolved once: Path.resolve costs ~90 µs a file (an lstat per component), ~10 s for COCO
    train's 118k images; here a file costs one lstat, to follow it if it is a symlink. Anything
    unusual (a symlink, '..' last, a folder outside the root) takes `_image_path` itself."""

    def __init__(self, root: Path):
        self.root, self.real_root = root, root.resolve()
        self.folders: dict[str, tuple[str, bool] | None] = {}  # head → (prefix, inside root)

    def _folder(self, head: str) -> tuple[str, bool] | None:
        if head not in self.folders:
            try:
                real = (self.root / head).resolve()
                self.folders[head] = (os.path.join(str(real), ""),
                                      real.is_relative_to(self.real_root))
            except (OSError, ValueError):
                self.folders[head] = None
        return self.folders[head]

    def __call__(self, name: object, where: str) -> str:
        if isinstance(name, str) and name and "\x00" not in name:
            head, base = os.path.split(name)
            folder = self._folder(head) if base not in ("", ".", "..") else None
            if folder is not None and folder[1] and not os.path.islink(folder[0] + base):
                return folder[0] + base
        return str(_image_path(self.root, name, where))  # and its errors, word for word


def _floats(value: object, n: int | None, where: str) -> np.ndarray:
    """A flat list of finite numbers, of length n when given."""
    try:
        arr = np.asarray(value, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError, OverflowError):
        raise UniError(f"{where}: expected a list of numbers") from None
    if n is not None and arr.size != n:
        raise UniError(f"{where}: expected {n} numbers, got {arr.size}")
    if not np.isfinite(arr).all():
        raise UniError(f"{where}: contains NaN or inf")
    return arr


def _field(record: object, key: str, where: str):
    if not isinstance(record, dict):
        raise UniError(f"{where}: expected an object, got {type(record).__name__}")
    if key not in record:
        raise UniError(f"{where}: missing field {key!r}")
    return record[key]


def _id(value: object, where: str) -> int:
    value = json_int(value, where, "an integer id")
    if not _INT64[0] <= value <= _INT64[1]:
        raise UniError(f"{where}: id {value} is outside the 64-bit integer range")
    return value


def _check_box(bbox: np.ndarray, where: str) -> None:
    if bbox[2] <= 0 or bbox[3] <= 0:
        raise UniError(f"{where}: bbox width and height must be positive, got {bbox.tolist()}")


def _fed(value: object, sink):
    """The sink of a streamed list; a list parsed whole (json_stream's fallback) is fed now."""
    if isinstance(value, Streamed):
        return value.sink
    for element in value:
        sink(element)
    return sink


def _column(buf: array, dtype, shape: tuple[int, ...] = ()) -> np.ndarray:
    return np.frombuffer(buf, dtype).reshape(-1, *shape) if len(buf) else np.zeros(
        (0, *shape), dtype)


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
            record_id = _id(_field(record, "id", where), f"{where} field 'id'")
        except UniError as e:
            self.error = str(e)
            return None
        self.ids.append(record_id)
        return record_id

    def check(self, src: str) -> np.ndarray:
        """(M,) int64 ids; UniError for the first problem in file order."""
        ids = _column(self.ids, np.int64)
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
    """Sink of a COCO 'images' list: ids and file names, checked by `check`."""

    def __init__(self, src: str):
        self.src, self.ids, self.names = src, _Ids("images", "image"), []

    def __call__(self, img: object) -> None:
        if self.ids.add(img, f"{self.src}: images[{len(self.ids.ids)}]") is not None:
            self.names.append(img.get("file_name", _MISSING))

    def check(self, root: Path) -> tuple[np.ndarray, np.ndarray]:
        """(ids (I,) int64, paths (I,) str); UniError for the first bad id, then name."""
        ids = self.ids.check(self.src)
        paths, resolve = [], _Paths(root)
        for i, name in enumerate(self.names):
            where = f"{self.src}: images[{i}]"
            if name is _MISSING:
                raise UniError(f"{where}: missing field 'file_name'")
            paths.append(resolve(name, where))
        return ids, np.array(paths, dtype=str)


class _CocoAnnotations:
    """Sink of a COCO / Halpe 'annotations' list: kept persons into columns; crowd and
    unlabeled people skipped; the first problem in id order remembered (see module doc).

    Records are checked a block at a time with numpy (one array per field for the block); a
    block with anything unusual in it goes through `_one`, record by record, which finds the
    problem and words it."""

    def __init__(self, src: str, skeleton: Skeleton, halpe: bool):
        self.src, self.k, self.halpe = src, skeleton.num_keypoints, halpe
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
        for ann_id, ann in block:
            if ann.get("iscrowd", 0) or ann.get("num_keypoints", 1) == 0:
                continue
            if not {"keypoints", "bbox", "image_id"} <= ann.keys() or type(
                    ann["image_id"]) is not int:  # noqa: E721 (bool is not an id)
                return False
            rows.append((ann_id, ann["keypoints"], ann["bbox"], ann["image_id"], "area" in ann,
                         ann.get("area", 0.0)))
        if not rows:
            return True
        ids, kps, boxes, images, has_area, areas = zip(*rows, strict=True)
        n, k = len(ids), self.k
        try:
            kp = np.array(kps, np.float64)  # (n, L)
            box = np.array(boxes, np.float64)  # (n, 4)
            area = np.array(areas, np.float64)  # (n,)
            image = np.array(images, np.int64)  # (n,)
        except (TypeError, ValueError, OverflowError):
            return False
        if kp.ndim != 2 or box.shape != (n, 4) or area.shape != (n,) or not np.isfinite(
                kp).all() or not (kp.shape[1] == 3 * k or self.halpe and kp.shape[1] > 3 * k
                                  and kp.shape[1] % 3 == 0):
            return False
        kp = kp[:, : 3 * k].reshape(n, k, 3)
        keep = (kp[:, :, 2] > 0).any(axis=1)
        has = np.array(has_area) & keep
        if not (np.isfinite(box[keep]).all() and (box[keep][:, 2:] > 0).all()
                and np.isfinite(area[has]).all()):
            return False
        area = np.where(has, area, box[:, 2] * box[:, 3])
        self._add(np.array(ids)[keep], image[keep], box[keep], kp[keep], area[keep])
        return True

    def _one(self, ann_id: int, ann: dict) -> None:
        where = f"{self.src}: annotation id {ann_id}"
        if ann.get("iscrowd", 0) or ann.get("num_keypoints", 1) == 0:
            return
        k = self.k
        try:
            kp = _floats(_field(ann, "keypoints", where), None, f"{where} field 'keypoints'")
            # Halpe ships 136 whole-body keypoints whose first 26 are the body.
            if kp.size % 3 or kp.size < 3 * k or (kp.size != 3 * k and not self.halpe):
                raise UniError(f"{where} field 'keypoints': expected {3 * k} numbers, "
                               f"got {kp.size}")
            kp = kp[: 3 * k]
            if not (kp[2::3] > 0).any():
                return
            bbox = _floats(_field(ann, "bbox", where), 4, f"{where} field 'bbox'")
            _check_box(bbox, f"{where} field 'bbox'")
            image_id = _id(_field(ann, "image_id", where), f"{where} field 'image_id'")
        except UniError as e:
            self._problem(ann_id, 0, str(e))
            return
        area = bbox[2] * bbox[3]
        if "area" in ann:
            try:
                area = _floats(ann["area"], 1, f"{where} field 'area'")[0]
            except UniError as e:  # after the image check: that one speaks first
                self._problem(ann_id, 2, str(e))
        self._add([ann_id], [image_id], bbox, kp, [area])


def coco_columns(path: Path, image_root: Path, skeleton: Skeleton, halpe: bool) -> Columns:
    """COCO and Halpe: COCO-format JSON {images, annotations}."""
    src = str(path)
    data = read_json_stream(path, {"images": lambda: _CocoImages(src),
                                   "annotations": lambda: _CocoAnnotations(src, skeleton, halpe)})
    for key in ("images", "annotations"):
        if not isinstance(_field(data, key, src), list | Streamed):
            raise UniError(f"{src}: field {key!r} must be a list")
    image_ids, image_paths = _fed(data["images"], _CocoImages(src)).check(image_root)
    anns = _fed(data["annotations"], _CocoAnnotations(src, skeleton, halpe))
    del data
    anns.flush()
    anns.ids.check(src)
    kept, want = _column(anns.kept, np.int64), _column(anns.image_ids, np.int64)
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
        col = _column(getattr(anns, name), np.float64, shape)
        setattr(anns, name, None)
        return col if rows is None else col[rows]

    image_index = order[pos].astype(np.int32)
    bboxes = take("bboxes", (4,))
    return Columns(
        image_ids, image_paths, kept if rows is None else kept[rows],
        image_index if rows is None else image_index[rows], bboxes,
        take("keypoints", (skeleton.num_keypoints, 3)), np.full((len(kept), 4), np.nan),
        take("areas"))


class _MpiiRecords:
    """Sink of MMPose's MPII list: persons into columns; the first bad record remembered."""

    def __init__(self, src: str, image_root: Path, head_from_file: bool):
        self.src, self.resolve, self.head_from_file = src, _Paths(image_root), head_from_file
        self.n, self.error = 0, None
        self.images: dict[str, int] = {}  # name → image index
        self.paths: list[str] = []
        self.image_index = array("i")
        self.bboxes, self.keypoints, self.heads = array("d"), array("d"), array("d")

    def __call__(self, rec: object) -> None:
        i, self.n = self.n, self.n + 1
        if self.error is None:
            try:
                self._record(i, rec)
            except UniError as e:
                self.error = str(e)

    def _record(self, i: int, rec: object) -> None:
        """MPII coordinates are 1-based (MATLAB); instances are 0-based like everything else."""
        where = f"{self.src}: record {i}"
        name = _field(rec, "image", where)
        image = self.images.get(name) if isinstance(name, str) else None
        if image is None:  # each image's path is resolved (and checked) once
            path = self.resolve(name, f"{where} field 'image'")
            image = self.images[name] = len(self.paths)
            self.paths.append(path)
        center = _floats(_field(rec, "center", where), 2, f"{where} field 'center'") - 1.0
        scale = _floats(_field(rec, "scale", where), 1, f"{where} field 'scale'")[0]
        if scale <= 0:
            raise UniError(f"{where} field 'scale': must be positive, got {scale}")
        joints = _floats(_field(rec, "joints", where), 32, f"{where} field 'joints'")
        vis = _floats(_field(rec, "joints_vis", where), 16, f"{where} field 'joints_vis'")
        kp = np.zeros((16, 3))
        kp[:, :2] = joints.reshape(16, 2) - 1.0
        kp[:, 2] = np.where(vis > 0, 2.0, 0.0)
        kp[kp[:, 2] == 0, :2] = 0.0
        head = np.full(4, np.nan)
        if not self.head_from_file and "head_box" in rec:
            head = _floats(rec["head_box"], 4, f"{where} field 'head_box'") - 1.0
        self.image_index.append(image)
        self.bboxes.frombytes(mpii_bbox(center, scale).tobytes())
        self.keypoints.frombytes(kp.tobytes())
        self.heads.frombytes(head.tobytes())


def mpii_columns(path: Path, image_root: Path, head_boxes: np.ndarray | None) -> Columns:
    """MMPose's MPII JSON: a list of {image, center, scale, joints, joints_vis[, head_box]};
    head_boxes (N, 4) 0-based, when given, replace the records' own."""
    src = str(path)
    data = read_json_stream(path, {None: lambda: _MpiiRecords(src, image_root,
                                                              head_boxes is not None)})
    if not isinstance(data, list | Streamed):
        raise UniError(f"{src}: expected a list of MPII person records")
    recs = _fed(data, _MpiiRecords(src, image_root, head_boxes is not None))
    if head_boxes is not None and len(head_boxes) != recs.n:
        raise UniError(f"{src}: {recs.n} persons but the head-box file has {len(head_boxes)}")
    if recs.error is not None:
        raise UniError(recs.error)
    bboxes = _column(recs.bboxes, np.float64, (4,))
    heads = (np.asarray(head_boxes, np.float64).reshape(-1, 4) if head_boxes is not None
             else _column(recs.heads, np.float64, (4,)))
    return Columns(np.arange(len(recs.paths), dtype=np.int64), np.array(recs.paths, dtype=str),
                   np.arange(recs.n, dtype=np.int64), _column(recs.image_index, np.int32),
                   bboxes, _column(recs.keypoints, np.float64, (16, 3)), heads,
                   bboxes[:, 2] * bboxes[:, 3])
