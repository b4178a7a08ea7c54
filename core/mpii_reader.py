"""The MPII reader: MMPose's MPII JSON → numpy columns (core/columns.py), streamed one record
at a time (core/json_stream.py); the first bad record is the one raised."""

from __future__ import annotations

from array import array
from pathlib import Path

import numpy as np

from uniskel.core.columns import Columns, ImagePaths, column, fed, floats, record_field
from uniskel.core.errors import UniError
from uniskel.core.geometry import mpii_bbox
from uniskel.core.json_stream import Streamed, read_json_stream


class _MpiiRecords:
    """Sink of MMPose's MPII list: persons into columns; the first bad record remembered."""

    def __init__(self, src: str, image_root: Path, head_from_file: bool):
        self.src, self.resolve, self.head_from_file = src, ImagePaths(image_root), head_from_file
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
        name = record_field(rec, "image", where)
        image = self.images.get(name) if isinstance(name, str) else None
        if image is None:  # each image's path is resolved (and checked) once
            path = self.resolve(name, f"{where} field 'image'")
            image = self.images[name] = len(self.paths)
            self.paths.append(path)
        center = floats(record_field(rec, "center", where), 2, f"{where} field 'center'") - 1.0
        scale = floats(record_field(rec, "scale", where), 1, f"{where} field 'scale'")[0]
        if scale <= 0:
            raise UniError(f"{where} field 'scale': must be positive, got {scale}")
        joints = floats(record_field(rec, "joints", where), 32, f"{where} field 'joints'")
        vis = floats(record_field(rec, "joints_vis", where), 16, f"{where} field 'joints_vis'")
        kp = np.zeros((16, 3))
        kp[:, :2] = joints.reshape(16, 2) - 1.0
        kp[:, 2] = np.where(vis > 0, 2.0, 0.0)
        kp[kp[:, 2] == 0, :2] = 0.0
        head = np.full(4, np.nan)
        if not self.head_from_file and "head_box" in rec:
            head = floats(rec["head_box"], 4, f"{where} field 'head_box'") - 1.0
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
    recs = fed(data, _MpiiRecords(src, image_root, head_boxes is not None))
    if head_boxes is not None and len(head_boxes) != recs.n:
        raise UniError(f"{src}: {recs.n} persons but the head-box file has {len(head_boxes)}")
    if recs.error is not None:
        raise UniError(recs.error)
    bboxes = column(recs.bboxes, np.float64, (4,))
    heads = (np.asarray(head_boxes, np.float64).reshape(-1, 4) if head_boxes is not None
             else column(recs.heads, np.float64, (4,)))
    return Columns(np.arange(len(recs.paths), dtype=np.int64), np.array(recs.paths, dtype=str),
                   np.arange(recs.n, dtype=np.int64), column(recs.image_index, np.int32),
                   bboxes, column(recs.keypoints, np.float64, (16, 3)), heads,
                   bboxes[:, 2] * bboxes[:, 3])
