"""Per-dataset sampling ratios: counts, purity in (seed, epoch), variety across epochs,
coverage, repetition for factors above 1, and MMPose's stratified rule."""

from __future__ import annotations

import numpy as np
import pytest

from uniskel.core.errors import UniError
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
