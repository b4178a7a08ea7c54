"""A dataset read into columns, and what the readers share (core/annotations.py: COCO-style,
core/mpii_reader.py: MPII): typed buffers turned into arrays, a record's fields checked, and
image file names resolved under the image root."""

from __future__ import annotations

import os
from array import array
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from uniskel.core.errors import UniError
from uniskel.core.json_stream import Streamed


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
    # Per image, where the file has them (README "Dataset kinds"); None here = none known.
    crowd_index: np.ndarray | None = None  # (I,) float64 CrowdPose crowdIndex; NaN: absent
    frame_ids: np.ndarray | None = None  # (I,) int64 PoseTrack frame_id; -1: absent
    vid_ids: np.ndarray | None = None  # (I,) int64 PoseTrack vid_id ("012834" → 12834); -1
    # Ignore regions, P polygons of V vertices in all: polygon p lies in image row
    # ignore_image[p], its vertices are ignore_xy[ignore_offsets[p]:ignore_offsets[p + 1]].
    ignore_image: np.ndarray | None = None  # (P,) int32 row into image_ids
    ignore_offsets: np.ndarray | None = None  # (P + 1,) int64
    ignore_xy: np.ndarray | None = None  # (V, 2) float64 x, y in image pixels

    def __post_init__(self) -> None:
        n = len(self.image_ids)
        defaults = {"crowd_index": lambda: np.full(n, np.nan),
                    "frame_ids": lambda: np.full(n, -1, np.int64),
                    "vid_ids": lambda: np.full(n, -1, np.int64),
                    "ignore_image": lambda: np.zeros(0, np.int32),
                    "ignore_offsets": lambda: np.zeros(1, np.int64),
                    "ignore_xy": lambda: np.zeros((0, 2))}
        for name, make in defaults.items():
            if getattr(self, name) is None:
                setattr(self, name, make())


def column(buf: array, dtype, shape: tuple[int, ...] = ()) -> np.ndarray:
    """A typed buffer as an (n, *shape) array (a view of it; empty: a fresh array)."""
    return np.frombuffer(buf, dtype).reshape(-1, *shape) if len(buf) else np.zeros(
        (0, *shape), dtype)


def fed(value: Any, sink: Callable[[Any], None]) -> Any:
    """The sink of a streamed list; a list parsed whole (json_stream's fallback) is fed now."""
    if isinstance(value, Streamed):
        return value.sink
    for element in value:
        sink(element)
    return sink


def record_field(record: object, key: str, where: str) -> Any:
    """record[key]; UniError naming `where` when the record is not an object or lacks it."""
    if not isinstance(record, dict):
        raise UniError(f"{where}: expected an object, got {type(record).__name__}")
    if key not in record:
        raise UniError(f"{where}: missing field {key!r}")
    return record[key]


def floats(value: object, n: int | None, where: str) -> np.ndarray:
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


def image_path(root: Path, name: object, where: str) -> Path:
    """root / name resolved; UniError when the name is not one or the path leaves the root."""
    if not isinstance(name, str) or not name:
        raise UniError(f"{where}: image file name must be a non-empty string")
    try:
        path = (root / name).resolve()
    except (OSError, ValueError) as e:  # NUL bytes, symlink loops
        raise UniError(f"{where}: bad image file name {name!r:.60} ({e})") from None
    if not path.is_relative_to(root.resolve()):
        raise UniError(f"{where}: image path {name!r} escapes the image root {root}")
    return path


class ImagePaths:
    """Image file names → resolved paths (str), as `image_path` gives them, with each folder
    resolved once: Path.resolve costs an lstat per path component, for every file of a
    COCO-size list (BENCHMARKS.md "Dataset parsing"); here a file costs one lstat, to follow
    it if it is a symlink. Anything unusual (a symlink, '..' last, a folder outside the root)
    takes `image_path` itself."""

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
        return str(image_path(self.root, name, where))  # and its errors, word for word
