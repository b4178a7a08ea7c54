"""Stage-two samples: image → augmented crop, GT heatmaps, and cached teacher targets warped by
the very same augmentation.

Augmentation (student/augment.py): "mmpose", MMPose's RandomFlip + RandomBBoxTransform with the
classic HRNet/SimpleBaseline ranges, or "rtmpose", RTMPose's recipe (half-body, truncated
normals, then pixel-only HSV, blur, coarse dropout on the crop). Either way the crop is one
affine warp, and the GT and cached teacher targets go through that same affine. Each sample's
draws come from an RNG seeded by (seed, epoch, index), so a resumed run replays exactly the
same crops whatever the worker count. With per-dataset sample ratios an epoch's items are a
seeded function of (seed, epoch) too (student/sampling.py).

Keypoint channels: the run's unified skeleton (U keypoints, unified21 by default; a run may
choose another, student/run_data.py). GT keypoints map from each dataset's native order into it by
canonical name (skeleton.to(unified)); a unified keypoint the dataset does not label gets
weight 0. Stores keep each teacher's native channels: they map into the run's unified skeleton
by the store's recorded skeleton definition, so a new unified skeleton never needs stage one
again; a teacher keypoint with no slot in it is dropped.

Keypoint channels on flip (MMPose's rule, applied to GT and teacher targets alike): the crop is
mirrored, then channels are swapped with the unified flip_index, so "left_wrist" names what
looks like a left wrist in the mirrored crop (the person's right wrist). Teacher maps are first
put into unified channels, warped into the student's heatmap grid by
M = A_student ∘ A_teacher⁻¹ (both image → grid, A_student includes the flip), then swapped.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch

from uniskel.core.crops import crop_person, normalize, read_image
from uniskel.core.dataset_cache import FileRows, row_access
from uniskel.core.datasets import Dataset
from uniskel.core.errors import UniError
from uniskel.core.geometry import (
    PADDING,
    apply,
    compose,
    crop_to_heatmap,
    invert,
    visible_mask,
    warp_heatmaps,
)
from uniskel.core.heatmaps import SIGMA, gaussian_heatmaps
from uniskel.core.simcc import SIMCC_SPLIT, simcc_labels, simcc_sigma
from uniskel.core.skeletons import UNIFIED, Skeleton, native_to_unified
from uniskel.student.augment import (
    Augment,
    RTMPoseAugment,
    View,
    body_halves,
    photometric,
    sample_rtmpose_view,
    sample_view,
)
from uniskel.student.sampling import epoch_items
from uniskel.student.sources import TeacherSource

_PEAK_EPS = 1e-6  # a cached map with a lower peak is empty: the teacher saw nothing there


def gt_targets(keypoints: np.ndarray, a_grid: np.ndarray, flip: bool, hm_wh: tuple[int, int],
               unified: Skeleton = UNIFIED, sigma: float = SIGMA
               ) -> tuple[np.ndarray, np.ndarray]:
    """GT for one view. keypoints: (U, 3) [x, y, v] in `unified`'s order; a_grid: image →
    student heatmap grid (2, 3).

    Returns heatmaps (U, h, w) float32 and weights (U,) float32 (0 where unlabelled or off
    the grid).
    """
    pts = apply(a_grid, keypoints[:, :2])  # (U, 2)
    vis = keypoints[:, 2] > 0
    if flip:
        pts, vis = pts[unified.flip_index], vis[unified.flip_index]
    w, h = hm_wh
    inside = (pts[:, 0] >= -0.5) & (pts[:, 0] < w - 0.5) & (pts[:, 1] >= -0.5) & (
        pts[:, 1] < h - 0.5)
    keep = vis & inside
    return gaussian_heatmaps(pts, keep, hm_wh, sigma), keep.astype(np.float32)


def teacher_targets(heatmaps: np.ndarray, a_teacher: np.ndarray, skeleton: Skeleton,
                    a_grid: np.ndarray, flip: bool, hm_wh: tuple[int, int],
                    unified: Skeleton = UNIFIED, power: float = 1.0
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cached maps (K, ht, wt) in `skeleton`'s native order, with their image → teacher grid
    affine → this view's targets in `unified`'s channels.

    power: the peak-normalised maps are raised to it before the warp (SimCC students: β, the
    paper's sharpening, which must precede the warp; student/losses.py simcc_kd).

    Returns targets (U, h, w) float32 peak-normalised (each channel ÷ its cached peak), spatial
    mask (1, h, w) float32 (1 where the teacher's grid covers the pixel), and keypoint weights
    (U,) float32: 0 for keypoints the teacher does not know, else the fraction of the cached
    map's mass still in view (≈1 when the keypoint is well inside the crop, →0 as it leaves).
    """
    # Only the channels with a slot in `unified` are warped: the teacher's others are dropped.
    to = skeleton.to(unified)
    src = [i for i, j in enumerate(to) if j is not None]
    dst = [to[i] for i in src]
    heatmaps = heatmaps[src]
    k, ht, wt = heatmaps.shape
    w, h = hm_wh
    m = compose(a_grid, invert(a_teacher))  # teacher grid → student grid
    targets = np.zeros((unified.num_keypoints, h, w), np.float32)
    weights = np.zeros(unified.num_keypoints, np.float32)
    spatial = visible_mask(m, (wt, ht), hm_wh)[None].astype(np.float32)
    if not src:  # a teacher none of whose keypoints the run's skeleton has
        return targets, spatial, weights
    peak = heatmaps.reshape(k, -1).max(-1)  # (k,)
    alive = peak > _PEAK_EPS
    norm = heatmaps / np.where(alive, peak, 1.0)[:, None, None]
    if power != 1.0:
        norm = norm ** power
    warped = warp_heatmaps(norm.astype(np.float32), m, hm_wh)  # (k, h, w)
    # Mass kept in view; |det| converts teacher-grid area to student-grid area. (The warped
    # peak would under-rate keypoints whenever the student grid is coarser than the teacher's.)
    mass = norm.reshape(k, -1).sum(-1) * abs(np.linalg.det(m[:, :2]))
    presence = np.where(alive, np.clip(warped.reshape(k, -1).sum(-1) / np.maximum(
        mass, 1e-12), 0.0, 1.0), 0.0)
    targets[dst], weights[dst] = warped, presence
    if flip:
        targets, weights = targets[unified.flip_index], weights[unified.flip_index]
    return np.ascontiguousarray(targets), spatial, weights


def simcc_gt(keypoints: np.ndarray, a_crop: np.ndarray, flip: bool, input_wh: tuple[int, int],
             unified: Skeleton = UNIFIED) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """SimCC GT for one view (MMPose's SimCCLabel, core/simcc.py). keypoints: (U, 3) [x, y, v]
    in `unified`'s order; a_crop: image → crop (2, 3).

    Returns x labels (U, W·split), y labels (U, H·split) float32 and weights (U,) float32.
    """
    pts = apply(a_crop, keypoints[:, :2])  # (U, 2) crop px
    vis = keypoints[:, 2] > 0
    if flip:
        pts, vis = pts[unified.flip_index], vis[unified.flip_index]
    return simcc_labels(pts, vis, input_wh, simcc_sigma(input_wh), SIMCC_SPLIT)


@dataclass(frozen=True)
class Persons:
    """The columns a sample reads of one dataset, row by row: each the array itself or, for
    columns memory-mapped from the dataset cache, read with pread (core/dataset_cache.py
    FileRows), so DataLoader workers map none of the file and their memory does not grow with
    the persons they visit."""

    instance_ids: np.ndarray | FileRows
    image_index: np.ndarray | FileRows
    image_paths: np.ndarray | FileRows
    bboxes: np.ndarray | FileRows
    keypoints: np.ndarray | FileRows

    @classmethod
    def of(cls, ds: Dataset) -> Persons:
        return cls(*(row_access(getattr(ds, f.name)) for f in fields(cls)))


class PoseSamples(torch.utils.data.Dataset):
    """All instances of several datasets, as training (augmented) or validation samples.

    Item i → dict: image (3, H, W) float32, gt_heatmaps (U, h, w) — or for head "simcc"
    gt_simcc_x (U, W·2) and gt_simcc_y (U, H·2) — gt_weights (U,),
    kd_targets (T, U, h, w), kd_masks (T, 1, h, w), kd_weights (T, U), index; or
    {"skipped": "path: reason (format instance id)"} when the image cannot be read, or
    {"damaged": "store: reason"} when a cached target fails its checksum (one line, even from
    a DataLoader worker, which would wrap an exception in its traceback).
    T = len(teachers) (fixed order), U = unified.num_keypoints (the run's unified skeleton);
    a teacher with no store for the sample's dataset gives all-zero masks and weights.
    """

    def __init__(self, datasets: list[Dataset], input_wh: tuple[int, int],
                 teachers: list[str] = (), sources: dict[tuple[str, str], TeacherSource] = None,
                 augment: Augment | RTMPoseAugment | None = Augment(), seed: int = 0,
                 padding: float = PADDING, sigma: float = SIGMA,
                 instances: np.ndarray | None = None, unified: Skeleton = UNIFIED,
                 head: str = "heatmap", sample_ratio: list[float] | None = None,
                 stage2_from: int | None = None, kd_power: float = 1.0):
        self.datasets = datasets
        # RTMPose's second stage (mmdet's PipelineSwitchHook): its milder augmentation from
        # epoch stage2_from on.
        self.stage1, self.stage2_from = augment, stage2_from
        self.unified = unified
        self.head = head  # "heatmap": GT heatmaps; "simcc": GT SimCC labels (core/simcc.py)
        self.kd_power = kd_power  # teacher maps ** kd_power before the warp (teacher_targets)
        self.upper, self.lower = body_halves(unified)  # for the half-body transform
        self.input_wh = tuple(input_wh)
        w, h = self.input_wh
        if w % 4 or h % 4:
            raise UniError(f"input size {h}x{w} (HxW): both sides must be multiples of 4")
        self.hm_wh = (w // 4, h // 4)
        self.teachers = list(teachers)
        self.sources = dict(sources or {})  # (teacher, dataset id) → source
        self.augment = augment
        self.seed = seed
        self.epoch = 0
        self.padding = padding
        self.sigma = sigma
        # (M, 2) int64 (dataset index, row) pairs; default: everything. An array, not tuples:
        # forked DataLoader workers read it without touching (and so copying) Python objects.
        self.base_items = (np.asarray(instances, np.int64).reshape(-1, 2)
                           if instances is not None else all_items(datasets))
        # Per-dataset ratios (MMPose's sample_ratio_factor): each epoch takes a seeded window
        # of round(n × ratio) of each dataset's items (student/sampling.py); None: all, once.
        self.sample_ratio = None if sample_ratio is None else list(sample_ratio)
        self._by_dataset = None if sample_ratio is None else [
            self.base_items[self.base_items[:, 0] == d] for d in range(len(datasets))]
        self.items = self._epoch_items()
        self._to_grid = crop_to_heatmap(self.input_wh, self.hm_wh)
        self._persons = [Persons.of(ds) for ds in datasets]

    def __len__(self) -> int:
        return len(self.items)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.items = self._epoch_items()
        if isinstance(self.stage1, RTMPoseAugment) and self.stage2_from is not None:
            self.augment = self.stage1.stage2() if epoch >= self.stage2_from else self.stage1

    def _epoch_items(self) -> np.ndarray:
        """(M, 2) int64 (dataset index, row) of this epoch: every item once, or the windows."""
        if self.sample_ratio is None:
            return self.base_items
        picks = epoch_items([len(b) for b in self._by_dataset], self.sample_ratio, self.seed,
                            self.epoch)  # (M, 2) (dataset, position in its items)
        return np.concatenate([np.zeros((0, 2), np.int64)] + [
            self._by_dataset[d][picks[picks[:, 0] == d, 1]] for d in range(len(self.datasets))])

    def view(self, index: int, rng: np.random.Generator, keypoints: np.ndarray,
             bbox: np.ndarray) -> View:
        """This sample's augmentation (keypoints: (U, 3) unified order, image px)."""
        if self.augment is None:
            return View()
        if isinstance(self.augment, RTMPoseAugment):
            return sample_rtmpose_view(rng, self.augment, keypoints, bbox, self.upper,
                                       self.lower, self.input_wh[0] / self.input_wh[1])
        return sample_view(rng, self.augment)

    def __getitem__(self, index: int) -> dict:
        d, i = self.items[index].tolist()
        ds, p = self.datasets[d], self._persons[d]
        instance_id, bbox = int(p.instance_ids[i]), p.bboxes[i]
        try:
            image = read_image(Path(str(p.image_paths[int(p.image_index[i])])))
        except UniError as e:
            return {"skipped": f"{e} ({ds.kind.name} instance {instance_id})"}
        kp = native_to_unified(p.keypoints[i], ds.skeleton, self.unified)  # (U, 3)
        rng = np.random.default_rng([self.seed, self.epoch, index])
        v = self.view(index, rng, kp, bbox)
        box = bbox if v.box is None else np.asarray(v.box, np.float64)
        crop, a_crop = crop_person(image, box, self.input_wh, self.padding, v.rotation,
                                   v.scale, v.shift, v.flip)
        if isinstance(self.augment, RTMPoseAugment):  # pixels only: the geometry is a_crop
            crop = photometric(crop, rng, self.augment)
        a_grid = compose(self._to_grid, a_crop)
        if self.head == "simcc":
            gt_x, gt_y, gt_w = simcc_gt(kp, a_crop, v.flip, self.input_wh, self.unified)
            gt = {"gt_simcc_x": torch.from_numpy(gt_x), "gt_simcc_y": torch.from_numpy(gt_y)}
        else:
            hm, gt_w = gt_targets(kp, a_grid, v.flip, self.hm_wh, self.unified, self.sigma)
            gt = {"gt_heatmaps": torch.from_numpy(hm)}
        w, h = self.hm_wh
        t, u = len(self.teachers), self.unified.num_keypoints
        kd = np.zeros((t, u, h, w), np.float32)
        kd_mask = np.zeros((t, 1, h, w), np.float32)
        kd_w = np.zeros((t, u), np.float32)
        for j, name in enumerate(self.teachers):
            src = self.sources.get((name, ds.dataset_id))
            if src is None:
                continue
            row = src.reader.row(instance_id)  # -1: not in the store
            if row < 0 or not src.reader.done[row]:
                continue
            try:
                maps, a_teacher = src.reader.read(row)
            except UniError as e:  # damaged since it was checked: the loop refuses or skips it
                return {"damaged": str(e)}
            kd[j], kd_mask[j], kd_w[j] = teacher_targets(maps, a_teacher, src.skeleton, a_grid,
                                                         v.flip, self.hm_wh, self.unified,
                                                         self.kd_power)
        return {"image": torch.from_numpy(normalize(crop[None])[0]), **gt,
                "gt_weights": torch.from_numpy(gt_w),
                "kd_targets": torch.from_numpy(kd), "kd_masks": torch.from_numpy(kd_mask),
                "kd_weights": torch.from_numpy(kd_w), "index": index}


def collate(samples: list[dict]) -> dict:
    """Stack the readable samples; batch["skipped"] lists the unreadable images and
    batch["damaged"] the unreadable cached targets ("path: reason")."""
    good = [s for s in samples if "skipped" not in s and "damaged" not in s]
    batch: dict = {key: [s[key] for s in samples if key in s] for key in ("skipped", "damaged")}
    if good:
        for key in good[0]:
            batch[key] = (torch.tensor([s[key] for s in good]) if key == "index"
                          else torch.stack([s[key] for s in good]))
    return batch


def all_items(datasets: list[Dataset]) -> np.ndarray:
    """(M, 2) int64 (dataset index, row) of every instance of every dataset."""
    return np.concatenate([np.zeros((0, 2), np.int64)] + [
        np.stack([np.full(len(ds.instance_ids), d), np.arange(len(ds.instance_ids))], axis=1)
        for d, ds in enumerate(datasets)]).astype(np.int64)


def split_items(datasets: list[Dataset], val_fraction: float, seed: int
                ) -> tuple[np.ndarray, np.ndarray]:
    """(training items, held-out items), each (M, 2) int64 (dataset index, instance index): a
    seeded random `val_fraction` of all instances held out (at least one; none when it is 0).
    Arrays, not lists of tuples: no Python object per person in the trainer or its workers."""
    items = all_items(datasets)
    if val_fraction == 0.0:
        return items, items[:0]
    rng = np.random.default_rng(seed)
    held = np.zeros(len(items), bool)
    held[rng.permutation(len(items))[:max(1, round(len(items) * val_fraction))]] = True
    return items[~held], items[held]
