"""What the store tests share (tests/test_store_*.py and the damaged-store tests): a meta,
teacher-like maps and affines, a complete sample store, and damage done to a chunk on disk."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

from uniskel.core.heatmaps import gaussian_heatmaps
from uniskel.stores.schema import StoreMeta
from uniskel.stores.writer import write_store

K, H, W = 17, 16, 12


def sample_meta(**change) -> StoreMeta:
    kw = dict(teacher_name="t", teacher_sha256="a" * 64, teacher_metadata={"head": "heatmap"},
              skeleton="coco17", dataset_id="d" * 64, dataset_spec="coco:none.json",
              input_wh=(48, 64), padding=1.25, flip_test=True, heatmap_shape=(K, H, W))
    kw.update(change)
    return StoreMeta(**kw)


def sample_maps(n: int, seed: int = 0) -> np.ndarray:
    """(n, K, H, W) teacher-like maps: Gaussian bumps of varied peak on low noise."""
    rng = np.random.default_rng(seed)
    out = np.empty((n, K, H, W), np.float32)
    for i in range(n):
        pts = rng.uniform((0, 0), (W - 1, H - 1), (K, 2))
        g = gaussian_heatmaps(pts, np.ones(K, bool), (W, H), sigma=rng.uniform(1, 3))
        out[i] = g * rng.uniform(0.05, 1.0, (K, 1, 1)) + rng.uniform(0, 0.01, (K, H, W))
    return out


def sample_affines(n: int) -> np.ndarray:
    return np.stack([np.array([[0.25, 0.0, i], [0.0, 0.25, -i]]) for i in range(n)])


def sample_store(tmp_path: Path) -> tuple[Path, np.ndarray, np.ndarray, np.ndarray]:
    """A complete store of 12 instances: (path, ids, maps, affines)."""
    ids = np.arange(12) * 7 + 100
    maps, aff = sample_maps(12), sample_affines(12)
    path = tmp_path / "s.h5"
    write_store(path, sample_meta(), ids, maps, aff)
    return path, ids, maps, aff


def corrupt_chunk(path: Path, row: int) -> None:
    """Flip four bytes in the middle of row `row`'s heatmap chunk on disk."""
    with h5py.File(path) as f:
        info = f["heatmaps"].id.get_chunk_info_by_coord((row, 0, 0, 0))
    with open(path, "r+b") as fh:
        fh.seek(info.byte_offset + info.size // 2)
        b = fh.read(4)
        fh.seek(info.byte_offset + info.size // 2)
        fh.write(bytes(x ^ 0xFF for x in b))
