"""Datasets: data specs, and a loaded dataset as numpy columns of persons.

A data spec names a dataset everywhere: ``KIND:ANNOTATIONS[:IMAGE_ROOT]`` with KIND a dataset
kind (core/skeletons.toml: coco, mpii, halpe, aic, crowdpose, … or a user's) and IMAGE_ROOT
defaulting to the kind's folder beside the annotation file (``images/``; PoseTrack18: the folder
itself).
An instance is addressed by (dataset id = sha256 of the annotation file, instance id).
Image-level fields some kinds carry (CrowdPose's crowd index, PoseTrack's frame and video ids and
ignore regions) are columns too, one value per image, wherever a file has them.
A loaded dataset holds arrays, not one Python object per person (core/annotations.py and
mpii_reader.py read the files): ~0.5 KB a COCO person, and forked DataLoader workers read the
same pages instead of copying objects whose reference counts they touch (BENCHMARKS.md
"Datasets at scale"). `Dataset.instances` still gives `Instance` objects, made on demand.
"""

from __future__ import annotations

import hashlib
import json
import math
import operator
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from uniskel.core.annotations import coco_columns
from uniskel.core.dataset_cache import cache_key, load_columns, save_columns
from uniskel.core.errors import UniError
from uniskel.core.files import file_sha256, read_json
from uniskel.core.mpii_reader import mpii_columns
from uniskel.core.skeletons import (
    UNIFIED,
    UNIFIED_NAMES,
    DatasetKind,
    Skeleton,
    get_kind,
    get_skeleton,
    known_kinds,
    native_to_unified,
)

# CrowdPose's image classes by crowd index, [lo, hi): crowdposetools' cocoeval.py
# get_type_result(first=0.2, second=0.8) (docs/conventions.md "Metrics").
CROWD_CLASSES = (("easy", -math.inf, 0.2), ("medium", 0.2, 0.8), ("hard", 0.8, math.inf))


@dataclass(frozen=True)
class DataSpec:
    kind: str  # the dataset kind's name
    annotations: Path
    image_root: Path

    def __str__(self) -> str:
        return f"{self.kind}:{self.annotations}:{self.image_root}"


def parse_spec(spec: str | DataSpec) -> DataSpec:
    """'KIND:ANNOTATIONS[:IMAGE_ROOT]' → DataSpec (paths are not checked here)."""
    if isinstance(spec, DataSpec):
        return spec
    parts = spec.split(":")
    if len(parts) not in (2, 3) or not all(parts):
        raise UniError(f"data spec {spec!r}: expected KIND:ANNOTATIONS[:IMAGE_ROOT]")
    kind = parts[0].lower()
    kinds = known_kinds()
    if kind not in kinds:
        raise UniError(f"data spec {spec!r}: unknown dataset kind {parts[0]!r}; "
                       f"use one of {', '.join(kinds)}")
    ann = Path(parts[1])
    root = Path(parts[2]) if len(parts) == 3 else ann.parent / kinds[kind].image_root
    return DataSpec(kind, ann, root)


@dataclass(slots=True)
class Instance:
    """One annotated person, built on demand from a dataset's columns. Keypoint arrays are
    (K, 3) float64 [x, y, v], v in {0, 1, 2}; bbox and keypoints are read-only views."""

    instance_id: int
    image_id: int
    image_path: Path
    bbox: np.ndarray  # (4,) x, y, w, h in image pixels: the person box crops are made from
    keypoints: np.ndarray  # (K, 3) native order
    unified: np.ndarray  # (21, 3); keypoints the dataset does not label have v = 0
    head_box: np.ndarray | None = None  # (4,) x1, y1, x2, y2 (MPII, when known)
    area: float = 0.0


class Instances(Sequence[Instance]):
    """dataset.instances: len, index, slice, iterate; each `Instance` made when asked for."""

    __slots__ = ("_ds",)

    def __init__(self, dataset: Dataset):
        self._ds = dataset

    def __len__(self) -> int:
        return len(self._ds.instance_ids)

    def __getitem__(self, j):
        n = len(self)
        if isinstance(j, slice):
            return [self._ds.instance(r) for r in range(*j.indices(n))]
        j = operator.index(j)
        if not -n <= j < n:
            raise IndexError(f"instance row {j} out of range ({n} instances)")
        return self._ds.instance(j % n)

    def __iter__(self) -> Iterator[Instance]:
        return map(self._ds.instance, range(len(self)))


class InstanceIndex(Mapping[int, Instance]):
    """dataset.by_id(): instance id → Instance, looked up in the sorted id column."""

    __slots__ = ("_ds",)

    def __init__(self, dataset: Dataset):
        self._ds = dataset

    def __getitem__(self, instance_id: int) -> Instance:
        row = self._ds.row_of(instance_id)
        if row is None:
            raise KeyError(instance_id)
        return self._ds.instance(row)

    def __contains__(self, instance_id: object) -> bool:
        return self._ds.row_of(instance_id) is not None

    def __len__(self) -> int:
        return len(self._ds.instance_ids)

    def __iter__(self) -> Iterator[int]:
        return iter(self._ds.instance_ids.tolist())


@dataclass(eq=False)
class Dataset:
    """A dataset's persons as read-only numpy columns (row = person, ascending instance id; see
    core/columns.Columns) and each image path once. Hot paths index the columns;
    `instances` / `by_id()` give `Instance` objects for the rest."""

    spec: DataSpec
    kind: DatasetKind  # reader, metric; `skeleton` is its native skeleton
    skeleton: Skeleton
    dataset_id: str  # sha256 of the annotation file
    image_ids: np.ndarray  # (I,) int64
    image_paths: np.ndarray  # (I,) str, resolved
    instance_ids: np.ndarray  # (N,) int64, ascending
    image_index: np.ndarray  # (N,) int32: row into image_ids / image_paths
    bboxes: np.ndarray  # (N, 4) float64 x, y, w, h
    keypoints: np.ndarray  # (N, K, 3) float64 native order
    head_boxes: np.ndarray  # (N, 4) float64 x1, y1, x2, y2; NaN where unknown
    areas: np.ndarray  # (N,) float64
    # Per image (core/columns.Columns): absent = NaN / -1 / no polygon.
    crowd_index: np.ndarray  # (I,) float64 CrowdPose crowdIndex
    frame_ids: np.ndarray  # (I,) int64 PoseTrack frame_id
    vid_ids: np.ndarray  # (I,) int64 PoseTrack vid_id
    ignore_image: np.ndarray  # (P,) int32: image row of each ignore polygon
    ignore_offsets: np.ndarray  # (P + 1,) int64 into ignore_xy
    ignore_xy: np.ndarray  # (V, 2) float64 polygon vertices

    def __post_init__(self) -> None:
        for a in (self.image_ids, self.image_paths, self.instance_ids, self.image_index,
                  self.bboxes, self.keypoints, self.head_boxes, self.areas, self.crowd_index,
                  self.frame_ids, self.vid_ids, self.ignore_image, self.ignore_offsets,
                  self.ignore_xy):
            a.flags.writeable = False  # shared by every Instance view and forked worker

    @property
    def num_images(self) -> int:
        return len(self.image_paths)

    @property
    def instances(self) -> Instances:
        return Instances(self)

    @cached_property
    def unified(self) -> np.ndarray:
        """(N, 21, 3) float64 keypoints in unified order, made on first use and kept (~0.5 KB a
        person: not made by loading; `unified_rows` converts a few rows without it)."""
        out = self.unified_rows(slice(None))
        out.flags.writeable = False
        return out

    def unified_rows(self, rows, unified: Skeleton = UNIFIED) -> np.ndarray:
        """(…, U, 3) keypoints of `rows` (an index, slice or index array) in `unified`'s order
        (unified21 by default); keypoints the dataset does not label have v = 0."""
        return native_to_unified(self.keypoints[rows], self.skeleton, unified)

    @property
    def has_head_box(self) -> np.ndarray:
        """(N,) bool."""
        return ~np.isnan(self.head_boxes).any(axis=1)

    def ignore_regions(self, image: int) -> list[np.ndarray]:
        """The ignore polygons of image row `image`: [(V, 2) float64 vertices, …]."""
        return [self.ignore_xy[self.ignore_offsets[p]:self.ignore_offsets[p + 1]]
                for p in np.flatnonzero(self.ignore_image == image)]

    def in_ignore_region(self, image: int, points: np.ndarray) -> np.ndarray:
        """(M, 2) points of image row `image` → (M,) bool: inside one of its ignore polygons
        (PoseTrack; a point on an edge may go either way)."""
        points = np.asarray(points, np.float64).reshape(-1, 2)
        inside = np.zeros(len(points), bool)
        polygons = [p for p in self.ignore_regions(image) if len(p) >= 3]
        if polygons and len(points):
            from matplotlib.path import Path as Polygon  # 0.4 s to import: PoseTrack only

            for poly in polygons:
                inside |= Polygon(poly).contains_points(points)
        return inside

    def image_path(self, row: int) -> Path:
        return Path(self.image_paths[self.image_index[row]])

    def instance(self, row: int) -> Instance:
        """The person in `row` as an Instance (views of the columns, no copies)."""
        image = self.image_index[row]
        head = self.head_boxes[row]
        kp = self.keypoints[row]
        return Instance(int(self.instance_ids[row]), int(self.image_ids[image]),
                        Path(self.image_paths[image]), self.bboxes[row], kp,
                        native_to_unified(kp, self.skeleton),
                        None if np.isnan(head).any() else head, float(self.areas[row]))

    def rows_of(self, instance_ids) -> np.ndarray:
        """(M,) int64 rows of these instance ids; -1 for an id the dataset does not have."""
        ids = np.asarray(instance_ids, dtype=np.int64).reshape(-1)
        pos = np.searchsorted(self.instance_ids, ids)
        hit = pos < len(self.instance_ids)
        hit[hit] = self.instance_ids[pos[hit]] == ids[hit]
        return np.where(hit, pos, -1)

    def row_of(self, instance_id: object) -> int | None:
        """The row of one instance id, or None."""
        if isinstance(instance_id, bool) or not isinstance(instance_id, int | np.integer):
            return None
        if not -(2**63) <= int(instance_id) < 2**63:
            return None
        row = int(self.rows_of([instance_id])[0])
        return None if row < 0 else row

    def by_id(self) -> InstanceIndex:
        return InstanceIndex(self)

    def read_annotations(self) -> dict | list:
        """The annotation file as parsed JSON, read again (not kept: it is most of a dataset's
        memory); UniError when the file changed since the dataset was loaded."""
        if file_sha256(self.spec.annotations) != self.dataset_id:
            raise UniError(f"{self.spec.annotations}: changed since it was loaded "
                           "(sha256 differs)")
        return read_json(self.spec.annotations)


def load_mpii_head_boxes(mat_path: Path) -> np.ndarray:
    """Official mpii_gt_val.mat → (N, 4) head boxes x1, y1, x2, y2, 0-based."""
    import scipy.io  # 0.2 s to import, more than the rest of this module: only .mat files need it

    if not Path(mat_path).is_file():
        raise UniError(f"{mat_path}: head-box file not found")
    try:
        mat = scipy.io.loadmat(str(mat_path))
    except Exception as e:  # scipy raises several types for a bad file
        raise UniError(f"{mat_path}: not a readable .mat file ({e})") from None
    if "headboxes_src" not in mat:
        raise UniError(f"{mat_path}: missing field 'headboxes_src'")
    boxes = np.asarray(mat["headboxes_src"], dtype=np.float64)  # (2, 2, N)
    if boxes.ndim != 3 or boxes.shape[:2] != (2, 2):
        raise UniError(f"{mat_path} field 'headboxes_src': expected shape (2, 2, N), "
                       f"got {boxes.shape}")
    return boxes.transpose(2, 0, 1).reshape(-1, 4) - 1.0


def load_dataset(spec: str | DataSpec, head_boxes: Path | None = None) -> Dataset:
    """Read a dataset named by a data spec; raises UniError naming the file and field at fault."""
    spec = parse_spec(spec)
    if spec.image_root.exists() and not spec.image_root.is_dir():  # a missing one is counted
        raise UniError(f"{spec.image_root}: the IMAGE_ROOT of {spec.annotations} is a file, "
                       "not a folder")
    kind = get_kind(spec.kind)
    skeleton = get_skeleton(kind.skeleton)
    cols = key = None
    if spec.annotations.is_file() and (not head_boxes or Path(head_boxes).is_file()):
        # The kind's and skeleton's definitions are part of the key: a user may change them.
        definition = json.dumps([kind.to_json(), skeleton.to_json()], sort_keys=True)
        key = cache_key(file_sha256(spec.annotations),
                        f"{kind.name}:{hashlib.sha256(definition.encode()).hexdigest()[:16]}",
                        spec.image_root, file_sha256(head_boxes) if head_boxes else None)
        cols = load_columns(key)  # core/dataset_cache.py: parsed once, read back after
    if cols is None:
        if kind.reader == "mpii":
            hb = load_mpii_head_boxes(head_boxes) if head_boxes else None
            cols = mpii_columns(spec.annotations, spec.image_root, hb)
        else:
            cols = coco_columns(spec.annotations, spec.image_root, skeleton, kind)
        dataset_id = file_sha256(spec.annotations)
        if key is not None and key["dataset_id"] == dataset_id:  # unchanged while parsed
            save_columns(key, cols)
            cols = load_columns(key) or cols  # memory-mapped, as a later start has them
    else:
        dataset_id = key["dataset_id"]
    return Dataset(spec, kind, skeleton, dataset_id, **vars(cols))


def head_size(head_box: np.ndarray) -> float:
    """MPII head size: 0.6 × the diagonal of the head box (x1, y1, x2, y2)."""
    return 0.6 * math.hypot(head_box[2] - head_box[0], head_box[3] - head_box[1])


def crowd_classes(crowd_index: np.ndarray) -> dict[str, np.ndarray]:
    """(I,) crowd indices → {"easy", "medium", "hard": (I,) bool}; NaN (absent) in none."""
    return {name: (crowd_index >= lo) & (crowd_index < hi) for name, lo, hi in CROWD_CLASSES}


def summarize(dataset: Dataset) -> dict:
    """{"images", "instances", "keypoints": {unified name: labeled (v > 0) count}}, and where the
    file has them: "crowd_index" {class: images}, "videos", "frames", "ignore_regions"."""
    labeled = (dataset.keypoints[:, :, 2:] > 0).sum(axis=0)  # (K, 1) per native keypoint
    counts = native_to_unified(labeled[None], dataset.skeleton)[0, :, 0]  # (21,)
    out = {"images": int(dataset.num_images), "instances": len(dataset.instance_ids),
           "keypoints": {n: int(c) for n, c in zip(UNIFIED_NAMES, counts, strict=True)}}
    if np.isfinite(dataset.crowd_index).any():
        out["crowd_index"] = {k: int(m.sum()) for k, m in crowd_classes(
            dataset.crowd_index).items()}
    if (dataset.vid_ids >= 0).any():
        out["videos"] = len(np.unique(dataset.vid_ids[dataset.vid_ids >= 0]))
    if (dataset.frame_ids >= 0).any():
        out["frames"] = int((dataset.frame_ids >= 0).sum())
    if len(dataset.ignore_image):
        out["ignore_regions"] = len(dataset.ignore_image)
    return out


def missing_images(dataset: Dataset) -> tuple[list[str], int]:
    """(paths of the images with people that are not files, how many images have people)."""
    used = dataset.image_paths[np.unique(dataset.image_index)]  # (I',) str
    return [str(p) for p in used if not os.path.isfile(p)], len(used)  # ~10 µs each here
