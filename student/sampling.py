"""Per-dataset sampling ratios: each epoch takes round(len × factor) persons of each dataset, as
MMPose's CombinedDataset(sample_ratio_factor=…) does, but as a pure function of (seed, epoch).

MMPose (open-mmlab/mmpose v1.3.2 mmpose/datasets/dataset_wrappers.py, CombinedDataset):
dataset d contributes n = round(L × f) slots (`_lens`); slot j reads row
round(gap · j + U · gap - 0.5) with gap = (L - 1e-4) / n and U = np.random.rand() drawn afresh
at every read (`_get_subset_index`): stratified sampling, one row from each run of about
L / n consecutive rows. f > 1 gives gap < 1, so every row comes about f times.
uni draws the same U's from a Generator seeded by (seed, epoch, dataset index): every DDP rank
computes the same list and a resumed epoch replays it exactly. (The sampler shuffles it.)
"""

from __future__ import annotations

import numpy as np

from uniskel.core.errors import UniError

# RTMO's body7 configs (configs/body_2d_keypoint/rtmo/body7/rtmo-*_body7-*.py, train_dataset,
# line 324/327: datasets=[coco, aic, crowdpose, mpii, jhmdb, halpe, posetrack],
# sample_ratio_factor=[1, 0.3, 0.5, 0.3, 0.3, 0.4, 0.3]). RTMPose's own body8 configs combine
# the same seven datasets without ratios (every person every epoch).
BODY7_FACTORS = {"coco": 1, "aic": 0.3, "crowdpose": 0.5, "mpii": 0.3, "jhmdb": 0.3,
                 "halpe": 0.4, "posetrack18": 0.3}


def epoch_items(sizes: list[int], factors: list[float], seed: int, epoch: int) -> np.ndarray:
    """(M, 2) int64 (dataset index, row) for one epoch: round(size × factor) rows of each
    dataset, one from each of as many equal strata (MMPose's rule, see the module docstring)."""
    if len(sizes) != len(factors):
        raise UniError(f"sampling: {len(factors)} sampling factors for {len(sizes)} datasets")
    if any(f < 0 for f in factors) or any(n < 0 for n in sizes):
        raise UniError("sampling: sampling factors and dataset sizes must be ≥ 0")
    parts = [np.zeros((0, 2), np.int64)]
    for d, (size, factor) in enumerate(zip(sizes, factors, strict=True)):
        n = round(size * factor)
        if n == 0 or size == 0:
            continue
        u = np.random.default_rng([seed, epoch, d]).random(n)  # (n,) MMPose's np.random.rand()
        gap = (size - 1e-4) / n
        rows = np.clip(np.rint(gap * np.arange(n) + u * gap - 0.5), 0, size - 1).astype(np.int64)
        parts.append(np.stack([np.full(n, d, np.int64), rows], axis=1))
    return np.concatenate(parts)
