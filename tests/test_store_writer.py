"""The store's writer: rows in any order from maps or from ready chunks, finalizing, resuming,
and what a kill, a failed HDF5 write or a full disk leave behind."""

from __future__ import annotations

import errno
import logging
import os
import pickle
import signal
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from store_helpers import H, K, W, corrupt_chunk, sample_affines, sample_maps, sample_meta

from uniskel.core.errors import UniError
from uniskel.stores import writer as sw
from uniskel.stores.create import META_CHUNK, StoreWriteFailed, create_store
from uniskel.stores.encode import dequantize, encode_rows, quantize
from uniskel.stores.reader import check_compatible, open_store
from uniskel.stores.writer import StoreWriter, repair_store, write_store

# --------------------------------------------------------------------------- writing rows


def test_write_encoded_store_equals_the_float_path_and_fletcher_still_checks(tmp_path):
    """A store written from ready chunks reads back, with plain h5py + hdf5plugin, exactly as
    one written from float32 maps; a flipped byte in a chunk still fails its checksum."""
    ids, maps, aff = np.arange(9) + 50, sample_maps(9, seed=4), sample_affines(9)
    write_store(tmp_path / "float.h5", sample_meta(), ids, maps, aff)
    path = tmp_path / "enc.h5"
    create_store(path, sample_meta(), ids)
    with StoreWriter(path) as w:
        for rows in (np.array([4, 0, 2]), np.arange(5, 9), np.array([1, 3])):  # any order
            enc = pickle.loads(pickle.dumps(encode_rows(maps[rows])))  # as a worker ships it
            w.write_encoded(rows, enc, aff[rows])
        w.finalize()
    with h5py.File(tmp_path / "float.h5") as a, h5py.File(path) as b:
        for name in ("heatmaps", "scales", "affines", "instance_ids", "done"):
            np.testing.assert_array_equal(a[name][:], b[name][:])
        for row in range(9):
            assert (a["heatmaps"].id.read_direct_chunk((row, 0, 0, 0))
                    == b["heatmaps"].id.read_direct_chunk((row, 0, 0, 0)))
    r = open_store(path)
    assert r.complete and r.verify() == []
    r.close()  # else this process's HDF5 keeps serving the chunk from its cache
    corrupt_chunk(path, 6)
    problems = open_store(path).verify()
    assert [p.split(":")[0] for p in problems] == [f"instance {ids[6]} (row 6)"]


def test_write_encoded_refuses_rows_encoded_for_another_store(tmp_path):
    path = tmp_path / "s.h5"
    create_store(path, sample_meta(), np.arange(4))
    with StoreWriter(path) as w:
        for enc, match in ((encode_rows(sample_maps(2), codec="lz4"), "codec 'lz4'"),
                           (encode_rows(sample_maps(2), threshold=0.1), "threshold 0.1"),
                           (encode_rows(sample_maps(2)[:, :, :8]), "shape")):
            with pytest.raises(UniError, match=match):
                w.write_encoded(np.arange(2), enc, sample_affines(2))
        with pytest.raises(UniError, match="out of range"):
            w.write_encoded(np.array([3, 4]), encode_rows(sample_maps(2)), sample_affines(2))
    assert not open_store(path).done.any()


def test_partial_store_rows_and_finalize(tmp_path):
    path = tmp_path / "p.h5"
    ids = np.arange(6) + 1
    create_store(path, sample_meta(), ids)
    assert check_compatible(path, sample_meta()) == "partial"
    with StoreWriter(path) as w:
        w.write(np.array([4, 1]), sample_maps(2), sample_affines(2))  # any order
        with pytest.raises(UniError, match="neither written nor skipped"):
            w.finalize({3: "unreadable"})
        w.write(np.array([0, 2, 5]), sample_maps(3, 1), sample_affines(3))
        # instance 3 (row 2) was written; a skipped row keeps the store partial (retried)
        assert not w.finalize({4: "bad image", 3: "unreadable"})
    r = open_store(path)
    assert not r.complete and r.skipped == {4: "bad image"}
    np.testing.assert_array_equal(r.done, [1, 1, 1, 0, 1, 1])
    np.testing.assert_array_equal(r.read(4)[0], dequantize(*quantize(sample_maps(2)[:1]))[0])
    np.testing.assert_array_equal(r.read(1)[1], sample_affines(2)[1])
    with pytest.raises(UniError, match="instance 4 .*not in the store"):
        r.read(3)
    assert check_compatible(path, sample_meta()) == "partial" and r.verify() == []
    r.close()
    with StoreWriter(path) as w:  # the retry: the image was mended
        w.write(np.array([3]), sample_maps(1, 2), sample_affines(1))
        assert w.finalize({})
    r = open_store(path)
    assert r.complete and r.skipped == {} and r.done.all()
    assert check_compatible(path, sample_meta()) == "complete"
    r.close()
    with StoreWriter(path) as w:  # reopened (a store an older uni froze with skips)
        w.reopen()
    assert check_compatible(path, sample_meta()) == "partial"


def test_rewriting_done_rows_replaces_them(tmp_path):
    """A row written again (done already) holds the new data; it is unmarked and flushed first,
    so a kill in between never pairs its old metadata with reused chunk space."""
    path = tmp_path / "w.h5"
    create_store(path, sample_meta(), np.arange(6))
    with StoreWriter(path) as w:
        w.write(np.arange(4), sample_maps(4, seed=1), sample_affines(4))
        w.write(np.array([3, 2, 5]), sample_maps(3, seed=2), sample_affines(3) + 7)
    r = open_store(path)
    assert np.flatnonzero(r.done).tolist() == [0, 1, 2, 3, 5] and r.verify() == []
    want = dequantize(*quantize(sample_maps(3, seed=2)))
    np.testing.assert_array_equal(r.read(3)[0], want[0])
    np.testing.assert_array_equal(r.read(2)[1], sample_affines(3)[1] + 7)


# --------------------------------------------------------------------------- kill -9


_WRITER = """
import sys
import numpy as np
from uniskel.stores.writer import StoreWriter
with StoreWriter(sys.argv[1]) as w:
    for start in range(0, 4000, 8):
        rows = np.arange(start, start + 8)
        hm = np.random.default_rng(start).random((8, {K}, {H}, {W}), dtype=np.float32)
        hm[:, :, 0, 0] = 2 + rows[:, None] / 1000  # the peak identifies the row
        w.write(rows, hm, np.tile(np.eye(2, 3), (8, 1, 1)) * rows[:, None, None])
"""
# Where the writer is killed (UNI_KILL_AT, core/killpoints.py) once 30 batches of 8 rows are
# done: in the 31st after its first chunk, or with its data flushed but its rows not yet done
# (each batch reserves room twice: before its data, and before done).
KILLS = {"mid-batch": "store-chunk:31", "data-flushed": "store-reserve:62"}


@pytest.mark.parametrize("moment", KILLS)
def test_kill_minus_nine_mid_write_leaves_consistent_store(tmp_path, moment, caplog):
    path = tmp_path / "k.h5"
    create_store(path, sample_meta(), np.arange(4000))
    code = _WRITER.format(K=K, H=H, W=W)
    proc = subprocess.run([sys.executable, "-c", code, str(path)], cwd=tmp_path, timeout=300,
                          env={**os.environ, "UNI_KILL_AT": KILLS[moment]}, capture_output=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    assert Path(str(path) + ".lock").is_file()  # the dead writer's
    r = open_store(path)
    done = np.flatnonzero(r.done)
    assert not r.complete and done.tolist() == list(range(240))
    for row in done:
        heat, a = r.read(row)
        assert abs(heat[:, 0, 0].max() - (2 + row / 1000)) < 0.02
        assert a[0, 0] == row
    assert r.verify() == []
    r.close()  # one process may not hold a store open for reading and writing at once
    with caplog.at_level(logging.WARNING), StoreWriter(path) as w:  # resume: the rest
        assert w.rows_reset == 0
        todo = np.flatnonzero(~r.done)
        w.write(todo, np.ones((len(todo), K, H, W), np.float32), sample_affines(len(todo)))
        w.finalize()
    assert caplog.text.count("taking over the lock of pid") == 1
    assert open_store(path).complete and not Path(str(path) + ".lock").exists()


# --------------------------------------------------------------------------- damage, failures


def _tear(path: Path, name: str, chunk: int = 0) -> None:
    """Damage one chunk of dataset `name` on disk, as a write stopped by SIGKILL does."""
    with h5py.File(path) as f:
        info = f[name].id.get_chunk_info(chunk)
    with open(path, "r+b") as fh:
        fh.seek(info.byte_offset + info.size // 2)
        fh.write(b"\x5a" * 16)  # not 0xff: Fletcher-32 (mod 65535) cannot see 0x0000 → 0xffff


@pytest.mark.parametrize("name", ["scales", "done", "affines", "row_crc"])
def test_chunk_torn_by_a_kill_is_mended_on_resume(tmp_path, name, caplog):
    """A torn scales / affines / done / row_crc chunk makes the partial store unreadable with a
    hint; the next writer resets that chunk's rows (computed again) and the store ends clean."""
    path = tmp_path / "m.h5"
    c = META_CHUNK  # rows 0 … c - 1 share chunk 0 of the small datasets
    n, maps = c + 904, sample_maps(1)
    create_store(path, sample_meta(), np.arange(n))
    rows = np.array([1, 2, c - 1, c, n - 1])
    with StoreWriter(path) as w:
        w.write(rows, np.repeat(maps, 5, 0), sample_affines(5))
    _tear(path, name)
    with pytest.raises(UniError, match="running it again repairs the store"):
        open_store(path).check()  # what every start runs (a row's read finds it too)
    with caplog.at_level(logging.WARNING):
        assert repair_store(path) == c
    assert f"{c} rows torn" in caplog.text
    r = open_store(path)
    assert np.flatnonzero(r.done).tolist() == [c, n - 1]  # chunk 1 kept its rows
    np.testing.assert_array_equal(r.read(c)[1], sample_affines(5)[3])
    r.close()
    with StoreWriter(path) as w:
        todo = np.flatnonzero(~r.done)
        w.write(todo, np.repeat(maps, len(todo), 0), sample_affines(len(todo)))
        w.finalize()
    r = open_store(path)
    assert r.complete and r.verify() == []
    assert repair_store(path) == 0  # a complete store is left alone


def test_hdf5_write_failing_mid_batch_keeps_finished_rows(tmp_path, monkeypatch):
    """An HDF5 write that fails mid-batch (its file descriptor turned read-only after the third
    batch's first chunk: EBADF on the second, as an I/O error) is one StoreWriteFailed; the
    handle is cut off the file, the store opens as of the last batch, and a resume ends equal
    to a store written without failure."""
    ids, maps, aff = np.arange(24) + 7, sample_maps(24, seed=5), sample_affines(24)
    write_store(tmp_path / "clean.h5", sample_meta(), ids, maps, aff)
    path = tmp_path / "f.h5"
    create_store(path, sample_meta(), ids)
    w, batches = StoreWriter(path), []

    def break_in_batch_3(point: str) -> None:  # called after each batch's first chunk
        batches.extend([point] if point == "store-chunk" else [])
        if len(batches) == 3 and point == "store-chunk":
            ro = os.open(path, os.O_RDONLY)
            os.dup2(ro, w._f.id.get_vfd_handle())
            os.close(ro)

    monkeypatch.setattr(sw, "kill_point", break_in_batch_3)
    with pytest.raises(StoreWriteFailed, match="f.h5: write failed"):
        for start in range(0, 24, 8):
            w.write(np.arange(start, start + 8), maps[start:start + 8], aff[start:start + 8])
    assert len(batches) == 3
    with pytest.raises(UniError, match="an earlier write failed"):
        w.write(np.arange(16, 24), maps[16:], aff[16:])
    w.close()  # onto /dev/null: quiet, and nothing reaches the store
    monkeypatch.undo()
    assert not Path(str(path) + ".lock").exists()
    r = open_store(path)
    assert np.flatnonzero(r.done).tolist() == list(range(16)) and r.verify() == []
    r.close()
    with StoreWriter(path) as w:
        assert w.rows_reset == 0
        w.write(np.arange(16, 24), maps[16:], aff[16:])
        w.finalize()
    with h5py.File(tmp_path / "clean.h5") as a, h5py.File(path) as b:
        for name in ("scales", "affines", "done", "row_crc"):
            np.testing.assert_array_equal(a[name][:], b[name][:])
        for row in range(24):
            assert (a["heatmaps"].id.read_direct_chunk((row, 0, 0, 0))
                    == b["heatmaps"].id.read_direct_chunk((row, 0, 0, 0)))


def test_no_room_for_a_batch_stops_before_writing_it(tmp_path, monkeypatch):
    """When the file system refuses the reservation (rule 1 of stores/writer.py) nothing of the
    batch is written: a one-line UniError, the store closes cleanly and resumes."""
    ids, maps, aff = np.arange(16), sample_maps(16, seed=6), sample_affines(16)
    path = tmp_path / "r.h5"
    create_store(path, sample_meta(), ids)
    real, full = os.posix_fallocate, []

    def quota(fd, offset, length):
        if full:
            raise OSError(errno.EDQUOT, os.strerror(errno.EDQUOT))
        return real(fd, offset, length)

    monkeypatch.setattr(os, "posix_fallocate", quota)
    with StoreWriter(path) as w:
        w.write(np.arange(8), maps[:8], aff[:8])
        full.append(True)
        with pytest.raises(UniError, match="no room for the next batch .*quota.*intact"):
            w.write(np.arange(8, 16), maps[8:], aff[8:])
        assert w._guard.overruns == 0
    monkeypatch.undo()
    r = open_store(path)
    assert np.flatnonzero(r.done).tolist() == list(range(8)) and r.verify() == []
    r.close()
    with StoreWriter(path) as w:
        w.write(np.arange(8, 16), maps[8:], aff[8:])
        w.finalize()
    assert open_store(path).verify() == []
