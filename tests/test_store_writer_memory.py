"""The writer's memory stays flat with rows written (stores/writer.py MDC_REOPEN_BYTES): HDF5's
metadata cache, which evicts nothing while a writer writes, is emptied by opening the file again
between batches, without changing what the store holds, its kill safety or its lost-file check."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import h5py
import numpy as np
import pytest
from store_helpers import H, K, W, sample_affines, sample_maps, sample_meta

from uniskel.core.errors import UniError
from uniskel.stores import writer as sw
from uniskel.stores.create import create_store
from uniskel.stores.encode import encode_rows
from uniskel.stores.reader import open_store
from uniskel.stores.writer import StoreWriter, write_store

BATCH = 200


def _cache_sizes(path, rows: int) -> list[int]:
    """HDF5's metadata cache size (bytes) after each batch of writing `rows` rows of one map."""
    create_store(path, sample_meta(), np.arange(rows))
    enc = encode_rows(sample_maps(BATCH))
    sizes = []
    with StoreWriter(path) as w:
        for start in range(0, rows, BATCH):
            w.write_encoded(np.arange(start, start + BATCH), enc, sample_affines(BATCH))
            sizes.append(w._f.id.get_mdc_size()[2])
        w.finalize()
    return sizes


def test_metadata_cache_is_emptied_past_its_bound(tmp_path, monkeypatch):
    """Without the bound the cache grows with every batch (the chunk index's nodes); with it,
    it never holds more than the bound plus one batch's nodes, and the store verifies."""
    monkeypatch.setattr(sw, "MDC_REOPEN_BYTES", 1 << 40)
    grown = _cache_sizes(tmp_path / "a.h5", 8000)
    bound = 64 << 10
    monkeypatch.setattr(sw, "MDC_REOPEN_BYTES", bound)
    held = _cache_sizes(tmp_path / "b.h5", 8000)
    per_batch = max(np.diff(grown))
    assert grown[-1] > 4 * (bound + per_batch)  # the growth the bound removes
    assert max(held) <= bound + per_batch
    r = open_store(tmp_path / "b.h5")
    assert r.complete and r.verify() == []


def test_store_written_with_a_reopen_after_every_batch_is_the_same(tmp_path, monkeypatch):
    ids, maps, aff = np.arange(9) + 50, sample_maps(9, seed=4), sample_affines(9)
    write_store(tmp_path / "one.h5", sample_meta(), ids, maps, aff)
    monkeypatch.setattr(sw, "MDC_REOPEN_BYTES", 0)
    path = tmp_path / "reopened.h5"
    create_store(path, sample_meta(), ids)
    with StoreWriter(path) as w:
        for rows in (np.array([4, 0, 2]), np.arange(5, 9), np.array([1, 3]), np.array([2])):
            w.write(rows, maps[rows], aff[rows])
        w.finalize()
    with h5py.File(tmp_path / "one.h5") as a, h5py.File(path) as b:
        for name in ("heatmaps", "scales", "affines", "instance_ids", "done", "row_crc"):
            np.testing.assert_array_equal(a[name][:], b[name][:])
    r = open_store(path)
    assert r.complete and r.verify() == []


def test_file_replaced_as_it_is_opened_again_fails(tmp_path, monkeypatch):
    """Replaced between the writer's last look and its reopening: it fails in one line and
    leaves the file now at the path as it was."""
    monkeypatch.setattr(sw, "MDC_REOPEN_BYTES", 0)
    path, other, maps = tmp_path / "w.h5", tmp_path / "other.h5", sample_maps(6)
    create_store(path, sample_meta(), np.arange(6))
    create_store(other, sample_meta(), np.arange(6))
    real_open = sw.open_h5

    def replaced_first(p, mode="r"):
        os.replace(other, path)
        return real_open(p, mode)

    w = StoreWriter(path)
    monkeypatch.setattr(sw, "open_h5", replaced_first)
    with pytest.raises(UniError, match=f"^{path}: was replaced or removed by another process"):
        w.write(np.arange(3), maps[:3], sample_affines(3))
    w.close()  # said once
    assert not open_store(path).done.any()


_WRITER = """
import sys
import numpy as np
from uniskel.stores import writer as sw
sw.MDC_REOPEN_BYTES = 0
with sw.StoreWriter(sys.argv[1]) as w:
    for start in range(0, 800, 8):
        rows = np.arange(start, start + 8)
        hm = np.random.default_rng(start).random((8, {K}, {H}, {W}), dtype=np.float32)
        w.write(rows, hm, np.tile(np.eye(2, 3), (8, 1, 1)) * rows[:, None, None])
"""


def test_kill_minus_nine_after_reopens_leaves_consistent_store(tmp_path):
    """Killed mid-batch (UNI_KILL_AT, core/killpoints.py) by a writer that reopened the file
    after each of its 30 finished batches: those rows are done and verify."""
    path = tmp_path / "k.h5"
    create_store(path, sample_meta(), np.arange(800))
    proc = subprocess.run([sys.executable, "-c", _WRITER.format(K=K, H=H, W=W), str(path)],
                          cwd=tmp_path, timeout=120, capture_output=True,
                          env={**os.environ, "UNI_KILL_AT": "store-chunk:31"})
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    r = open_store(path)
    assert np.flatnonzero(r.done).tolist() == list(range(240)) and r.verify() == []
    r.close()
    with StoreWriter(path) as w:
        assert w.rows_reset == 0
