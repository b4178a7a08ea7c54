"""Per-dataset sampling ratios: counts, purity in (seed, epoch), variety across epochs,
coverage, repetition for factors above 1, and MMPose's stratified rule."""

from __future__ import annotations

import numpy as np
import pytest

from uniskel.core.errors import UniError
from uniskel.student.data import PoseSamples
from uniskel.student.sampling import BODY7_FACTORS, epoch_items

SIZES = [50, 37, 11, 0]
FACTORS = [1.0, 0.3, 2.5, 0.5]


def test_counts_and_ranges():
    items = epoch_items(SIZES, FACTORS, seed=0, epoch=0)
    assert items.dtype == np.int64 and items.shape[1] == 2
    for d, (n, f) in enumerate(zip(SIZES, FACTORS, strict=True)):
        rows = items[items[:, 0] == d, 1]
        assert len(rows) == round(n * f)
        assert (rows >= 0).all() and (rows < max(n, 1)).all()
    full = items[items[:, 0] == 0, 1]
    assert sorted(full.tolist()) == list(range(50))  # factor 1: every row once


def test_pure_in_seed_and_epoch():
    a = epoch_items(SIZES, FACTORS, 3, 4)
    np.testing.assert_array_equal(a, epoch_items(SIZES, FACTORS, 3, 4))
    assert not np.array_equal(a, epoch_items(SIZES, FACTORS, 3, 5))
    assert not np.array_equal(a, epoch_items(SIZES, FACTORS, 4, 4))


def test_stratified_and_covering():
    size, factor = 37, 0.3
    n = round(size * factor)
    gap = (size - 1e-4) / n
    seen = set()
    for epoch in range(60):
        rows = epoch_items([size], [factor], 1, epoch)[:, 1]
        # Slot j reads a row of its own stratum (MMPose: round(gap·j + U·gap - 0.5)).
        j = np.arange(n)
        assert ((rows >= np.floor(gap * j - 0.5)) & (rows <= np.ceil(gap * (j + 1) - 0.5))).all()
        seen.update(rows.tolist())
    assert seen == set(range(size))


def test_factor_above_one_repeats_rows():
    rows = epoch_items([11], [2.5], 0, 0)[:, 1]
    counts = np.bincount(rows, minlength=11)
    # Each row spans 1 / gap = 2.5 slots' worth of jittered positions: 1 to 4 reads of it.
    assert len(rows) == 28 and counts.min() >= 1 and counts.max() <= 4


def test_bad_arguments():
    with pytest.raises(UniError, match="factors"):
        epoch_items([1, 2], [1.0], 0, 0)
    with pytest.raises(UniError, match="≥ 0"):
        epoch_items([1], [-1.0], 0, 0)


def test_body7_factors():
    assert list(BODY7_FACTORS.values()) == [1, 0.3, 0.5, 0.3, 0.3, 0.4, 0.3]


class _Ids:
    """Just what PoseSamples reads to list items (a dataset's instance ids) and the columns it
    reads persons from, empty of meaning here."""

    def __init__(self, n: int):
        self.instance_ids = np.arange(n)
        self.image_index = np.zeros(n, np.int64)
        self.image_paths = np.array(["none.jpg"])
        self.bboxes = np.zeros((n, 4))
        self.keypoints = np.zeros((n, 17, 3))


def test_pose_samples_take_each_epochs_windows_of_their_training_items():
    sets = [_Ids(40), _Ids(10)]
    held = {(0, 3), (1, 7)}  # e.g. the validation slice: never trained on
    items = [(d, i) for d, ds in enumerate(sets) for i in range(len(ds.instance_ids))
             if (d, i) not in held]
    ds = PoseSamples(sets, (48, 64), instances=items, sample_ratio=[0.5, 2.0], seed=3)
    lengths = set()
    for epoch in range(3):
        ds.set_epoch(epoch)
        lengths.add(len(ds))
        got = ds.items.tolist()
        assert sum(d == 0 for d, _ in got) == round(39 * 0.5)
        assert sum(d == 1 for d, _ in got) == round(9 * 2.0)
        assert not held & {tuple(x) for x in got}
        again = PoseSamples(sets, (48, 64), instances=items, sample_ratio=[0.5, 2.0], seed=3)
        again.set_epoch(epoch)  # a resumed run (or another DDP rank) gets the same items
        assert again.items.tolist() == got
    assert lengths == {round(39 * 0.5) + round(9 * 2.0)}  # the sampler's length never changes
