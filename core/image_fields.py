"""Image-level fields of COCO-style files, read wherever a file has them (README "Dataset kinds"):
CrowdPose's `crowdIndex`, PoseTrack's `frame_id`, `vid_id` and ignore regions
(`ignore_regions_x` / `ignore_regions_y`: per image a list of polygons, x and y apart).

core/annotations.py feeds each image record here as it streams; the result is a few flat
columns, one value per image, and the polygons as offsets into one vertex array (a PoseTrack
video frame has up to a few hundred vertices; no Python object per polygon is kept).
"""

from __future__ import annotations

import math
from array import array

import numpy as np

from uniskel.core.errors import UniError

FIELDS = frozenset({"crowdIndex", "frame_id", "vid_id", "ignore_regions_x", "ignore_regions_y"})
_REGIONS = ("ignore_regions_x", "ignore_regions_y")


def _number(value: object, where: str) -> float:
    try:
        number = float(value) if isinstance(value, int | float) else math.nan
    except OverflowError:  # an integer beyond float
        number = math.nan
    if isinstance(value, bool) or not math.isfinite(number):
        raise UniError(f"{where}: expected a finite number, got {value!r:.40}")
    return number


def _count(value: object, where: str) -> int:
    """A non-negative integer id: a JSON integer or a string of digits (PoseTrack's vid_id)."""
    if isinstance(value, str) and value.isascii() and value.isdecimal() and len(value) < 20:
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**63:
        raise UniError(f"{where}: expected a non-negative integer (or a string of digits), "
                       f"got {value!r:.40}")
    return value


def _polygons(xs: object, ys: object, where: str) -> list[tuple[array, array]]:
    """ignore_regions_x / _y → [(x, y) float64 arrays of one polygon's vertices, …]."""
    for key, value in zip(_REGIONS, (xs, ys), strict=True):
        if not isinstance(value, list) or not all(isinstance(v, list) for v in value):
            raise UniError(f"{where} field {key!r}: expected a list of polygons (lists of "
                           "numbers)")
    if len(xs) != len(ys):
        raise UniError(f"{where} field 'ignore_regions_y': {len(ys)} polygons but "
                       f"'ignore_regions_x' has {len(xs)}")
    out = []
    for i, (x, y) in enumerate(zip(xs, ys, strict=True)):
        if len(x) != len(y):
            raise UniError(f"{where} field 'ignore_regions_y': polygon {i} has {len(y)} "
                           f"numbers but its 'ignore_regions_x' has {len(x)}")
        try:  # array("d") converts at C speed (~50 ns a number) but takes true for 1
            if bool in set(map(type, x)) or bool in set(map(type, y)):
                raise TypeError
            poly = array("d", x), array("d", y)
        except (TypeError, OverflowError):
            poly = None
        if poly is None or not all(np.isfinite(np.frombuffer(a)).all() for a in poly):
            for key, values in (("ignore_regions_x", x), ("ignore_regions_y", y)):
                for v in values:  # the culprit, named
                    _number(v, f"{where} field {key!r} polygon {i}")
        out.append(poly)
    return out


class ImageFields:
    """The image-level fields of an 'images' list, one image at a time in file order; the first
    bad one is remembered (`error`), for the reader to raise in its turn."""

    def __init__(self, src: str):
        self.src, self.error = src, None
        self.crowd, self.frames, self.videos = array("d"), array("q"), array("q")
        self.poly_image, self.poly_ends = array("i"), array("q")
        self.xs, self.ys = array("d"), array("d")  # (V,) each: every polygon's vertices

    def add(self, img: dict, image_id: int) -> None:
        """One image record (a dict) with its checked id."""
        crowd, frame, video = math.nan, -1, -1
        if self.error is None and not FIELDS.isdisjoint(img.keys()):
            where = f"{self.src}: image id {image_id}"
            try:
                if img.get("crowdIndex") is not None:
                    crowd = _number(img["crowdIndex"], f"{where} field 'crowdIndex'")
                if img.get("frame_id") is not None:
                    frame = _count(img["frame_id"], f"{where} field 'frame_id'")
                if img.get("vid_id") is not None:
                    video = _count(img["vid_id"], f"{where} field 'vid_id'")
                has = [img.get(k) is not None for k in _REGIONS]  # null: absent
                if any(has) and not all(has):
                    raise UniError(f"{where}: missing field {_REGIONS[has.index(False)]!r} "
                                   f"({_REGIONS[has.index(True)]!r} is there)")
                for x, y in _polygons(*(img[k] for k in _REGIONS), where) if all(has) else []:
                    self.poly_image.append(len(self.crowd))
                    self.xs.extend(x)
                    self.ys.extend(y)
                    self.poly_ends.append(len(self.xs))
            except UniError as e:
                self.error = str(e)
        self.crowd.append(crowd)
        self.frames.append(frame)
        self.videos.append(video)

    def columns(self) -> dict[str, np.ndarray]:
        """The image-level columns of core/columns.Columns."""

        def col(buf: array, dtype, shape: tuple[int, ...] = ()) -> np.ndarray:
            return np.frombuffer(buf, dtype).reshape(-1, *shape).copy()

        return {"crowd_index": col(self.crowd, np.float64),
                "frame_ids": col(self.frames, np.int64),
                "vid_ids": col(self.videos, np.int64),
                "ignore_image": col(self.poly_image, np.int32),
                "ignore_offsets": np.r_[np.int64(0), col(self.poly_ends, np.int64)],
                "ignore_xy": np.stack([col(self.xs, np.float64), col(self.ys, np.float64)], 1)}
