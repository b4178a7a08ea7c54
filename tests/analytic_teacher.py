"""An analytic teacher for stage-two tests: its heatmaps are a closed-form function of the view.

For each native keypoint it draws an anisotropic Gaussian (peak 1) fixed in image space (axes
0.12 and 0.05 × box height, turned 30°), seen through the view's image → grid affine. Like a
real teacher shown a mirrored person, a mirrored view (affine determinant < 0) makes it name
each keypoint after its mirror image: channel c shows native keypoint flip_index[c].
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from uniskel.core.datasets import Dataset
from uniskel.core.geometry import (
    apply,
    bbox_to_center_size,
    compose,
    crop_affine,
    crop_to_heatmap,
)
from uniskel.core.skeletons import (
    SKELETONS,
    native_to_unified,
    unified_skeleton,
    unified_to_native,
)
from uniskel.stores.schema import StoreMeta
from uniskel.stores.writer import write_store

SD = (0.12, 0.05)  # × box height
ANGLE = np.deg2rad(30.0)


def teacher_points(dataset: Dataset, skeleton: str, seed: int = 0) -> dict[int, np.ndarray]:
    """{instance id: (K, 2) native image points}: GT where the dataset labels the keypoint
    (matched by canonical name), random in the box else."""
    rng = np.random.default_rng(seed)
    sk = SKELETONS[skeleton]
    both = unified_skeleton("union", [dataset.skeleton, sk])  # unified21 for COCO / MPII
    out = {}
    for inst in dataset.instances:
        x, y, w, h = inst.bbox
        u = both.num_keypoints
        pts = np.stack([rng.uniform(x, x + w, u), rng.uniform(y, y + h, u)], -1)
        kp = native_to_unified(inst.keypoints, dataset.skeleton, both)
        labelled = kp[:, 2] > 0
        pts[labelled] = kp[labelled, :2]
        out[inst.instance_id] = unified_to_native(pts, sk, both)
    return out


def render(points: np.ndarray, box_h: float, a_view: np.ndarray, grid_wh: tuple[int, int],
           skeleton: str) -> np.ndarray:
    """points: (K, 2) image px; a_view: image → grid (2, 3) → (K, h, w) float32."""
    lin = a_view[:, :2]
    if np.linalg.det(lin) < 0:
        points = points[SKELETONS[skeleton].flip_index]
    c, s = np.cos(ANGLE), np.sin(ANGLE)
    rot = np.array([[c, -s], [s, c]])
    cov_img = rot @ np.diag((np.array(SD) * box_h) ** 2) @ rot.T
    inv = np.linalg.inv(lin @ cov_img @ lin.T)
    w, h = grid_wh
    gx, gy = np.meshgrid(np.arange(w), np.arange(h))
    grid = np.stack([gx, gy], -1).astype(np.float64)  # (h, w, 2)
    d = grid[None] - apply(a_view, points)[:, None, None, :]  # (K, h, w, 2)
    q = np.einsum("khwi,ij,khwj->khw", d, inv, d)
    return np.exp(-0.5 * q).astype(np.float32)


def plain_view(bbox: np.ndarray, input_wh: tuple[int, int], padding: float = 1.25
               ) -> np.ndarray:
    """The un-augmented crop's image → heatmap-grid (input / 4) affine."""
    center, size = bbox_to_center_size(bbox, input_wh[0] / input_wh[1], padding)
    grid_wh = (input_wh[0] // 4, input_wh[1] // 4)
    return compose(crop_to_heatmap(input_wh, grid_wh), crop_affine(center, size, input_wh))


def write_analytic_store(path: Path, dataset: Dataset, skeleton: str, name: str,
                         input_wh: tuple[int, int] = (96, 128), ids: list[int] | None = None,
                         dataset_id: str | None = None, seed: int = 0) -> Path:
    """A complete store of the analytic teacher's un-augmented views of `dataset`."""
    pts = teacher_points(dataset, skeleton, seed)
    grid_wh = (input_wh[0] // 4, input_wh[1] // 4)
    insts = [i for i in dataset.instances if ids is None or i.instance_id in ids]
    affines = np.stack([plain_view(i.bbox, input_wh) for i in insts])
    maps = np.stack([render(pts[i.instance_id], i.bbox[3], a, grid_wh, skeleton)
                     for i, a in zip(insts, affines, strict=True)])
    k = SKELETONS[skeleton].num_keypoints
    meta = StoreMeta(teacher_name=name, teacher_sha256="0" * 64, teacher_metadata={},
                     skeleton=skeleton, dataset_id=dataset_id or dataset.dataset_id,
                     dataset_spec=str(dataset.spec), input_wh=input_wh, padding=1.25,
                     flip_test=False, heatmap_shape=(k, grid_wh[1], grid_wh[0]))
    write_store(path, meta, [i.instance_id for i in insts], maps, affines)
    return path
