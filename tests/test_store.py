"""The HDF5 soft-label store: quantisation, layout, readers in workers, resume, locks, damage."""

from __future__ import annotations

import errno
import json
import logging
import os
import pickle
import signal
import socket
import subprocess
import sys
import time
from importlib.metadata import version
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from uniskel.cli import uni
from uniskel.core.errors import UniError
from uniskel.core.heatmaps import gaussian_heatmaps
from uniskel.stores import heatmap_store as hs
from uniskel.stores import writer as sw

REPO = Path(__file__).resolve().parents[1]
K, H, W = 17, 16, 12


def _meta(**change) -> hs.StoreMeta:
    kw = dict(teacher_name="t", teacher_sha256="a" * 64, teacher_metadata={"head": "heatmap"},
              skeleton="coco17", dataset_id="d" * 64, dataset_spec="coco:none.json",
              input_wh=(48, 64), padding=1.25, flip_test=True, heatmap_shape=(K, H, W))
    kw.update(change)
    return hs.StoreMeta(**kw)


def _maps(n: int, seed: int = 0) -> np.ndarray:
    """(n, K, H, W) teacher-like maps: Gaussian bumps of varied peak on low noise."""
    rng = np.random.default_rng(seed)
    out = np.empty((n, K, H, W), np.float32)
    for i in range(n):
        pts = rng.uniform((0, 0), (W - 1, H - 1), (K, 2))
        g = gaussian_heatmaps(pts, np.ones(K, bool), (W, H), sigma=rng.uniform(1, 3))
        out[i] = g * rng.uniform(0.05, 1.0, (K, 1, 1)) + rng.uniform(0, 0.01, (K, H, W))
    return out


def _affines(n: int) -> np.ndarray:
    return np.stack([np.array([[0.25, 0.0, i], [0.0, 0.25, -i]]) for i in range(n)])


@pytest.fixture
def store(tmp_path) -> tuple[Path, np.ndarray, np.ndarray, np.ndarray]:
    """A complete store of 12 instances: (path, ids, maps, affines)."""
    ids = np.arange(12) * 7 + 100
    maps, aff = _maps(12), _affines(12)
    path = tmp_path / "s.h5"
    sw.write_store(path, _meta(), ids, maps, aff)
    return path, ids, maps, aff


# --------------------------------------------------------------------------- quantisation


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31), peak=st.floats(1e-6, 1e3))
def test_quantize_error_bound_threshold_and_argmax(seed, peak):
    maps = _maps(2, seed) * np.float32(peak)
    q, scales = hs.quantize(maps)
    back = hs.dequantize(q, scales)
    top = maps.max(axis=(2, 3))
    np.testing.assert_allclose(scales, top / 255, rtol=1e-6)
    bound = (scales / 2 + hs.THRESHOLD * top)[..., None, None]
    assert (np.abs(back - maps) <= bound * (1 + 1e-5)).all()
    assert (q[maps < hs.THRESHOLD * top[..., None, None]] == 0).all()
    flat_q, flat_m = q.reshape(2, K, -1), maps.reshape(2, K, -1)
    np.testing.assert_array_equal(flat_q.argmax(-1), flat_m.argmax(-1))
    assert (flat_q.max(-1) == 255).all()


def test_quantize_zero_and_negative_channels():
    maps = _maps(1)
    maps[0, 3] = 0.0
    maps[0, 4] = -1.0  # a teacher's raw negatives count as zero
    q, scales = hs.quantize(maps)
    assert scales[0, 3] == 0 and scales[0, 4] == 0 and not q[0, 3:5].any()


# --------------------------------------------------------------------------- encoded rows


@pytest.mark.parametrize("codec", ["zstd-1", "blosc-lz4-bitshuffle", "gzip-4"])
def test_encode_rows_bytes_are_what_hdf5_itself_stores(tmp_path, codec):
    """encode_rows' chunks equal the bytes a plain h5py write of the same uint8 map puts on disk
    (codec + fletcher32), for every row of a batch, and its scales are quantize's."""
    maps = _maps(5, seed=3)
    enc = hs.encode_rows(maps, hs.THRESHOLD, codec)
    q, scales = hs.quantize(maps)
    np.testing.assert_array_equal(enc.scales, scales)
    assert enc.shape == (K, H, W) and enc.codec == codec and not enc.filter_masks.any()
    with h5py.File(tmp_path / "plain.h5", "w") as f:
        ds = f.create_dataset("h", (5, K, H, W), np.uint8, chunks=(1, K, H, W),
                              fletcher32=True, **dict(hs.CODECS[codec]()))
        ds[:] = q
        for i in range(5):
            mask, chunk = ds.id.read_direct_chunk((i, 0, 0, 0))
            assert mask == 0 and bytes(chunk) == enc.chunks[i]
    again = hs.encode_rows(maps[2:4], hs.THRESHOLD, codec)  # the cached twin, other rows
    assert again.chunks == enc.chunks[2:4]
    assert len(pickle.dumps(enc)) < sum(map(len, enc.chunks)) + 5 * K * 4 + 1000


def test_encode_rows_refuses_maps_that_are_not_finite():
    maps = _maps(3)
    maps[1, 2, 3, 4] = np.nan
    with pytest.raises(UniError, match="batch row 1 not finite"):
        hs.encode_rows(maps)


def test_write_encoded_store_equals_the_float_path_and_fletcher_still_checks(tmp_path):
    """A store written from ready chunks reads back, with plain h5py + hdf5plugin, exactly as
    one written from float32 maps; a flipped byte in a chunk still fails its checksum."""
    ids, maps, aff = np.arange(9) + 50, _maps(9, seed=4), _affines(9)
    sw.write_store(tmp_path / "float.h5", _meta(), ids, maps, aff)
    path = tmp_path / "enc.h5"
    sw.create_store(path, _meta(), ids)
    with sw.StoreWriter(path) as w:
        for rows in (np.array([4, 0, 2]), np.arange(5, 9), np.array([1, 3])):  # any order
            enc = pickle.loads(pickle.dumps(hs.encode_rows(maps[rows])))  # as a worker ships it
            w.write_encoded(rows, enc, aff[rows])
        w.finalize()
    with h5py.File(tmp_path / "float.h5") as a, h5py.File(path) as b:
        for name in ("heatmaps", "scales", "affines", "instance_ids", "done"):
            np.testing.assert_array_equal(a[name][:], b[name][:])
        for row in range(9):
            assert (a["heatmaps"].id.read_direct_chunk((row, 0, 0, 0))
                    == b["heatmaps"].id.read_direct_chunk((row, 0, 0, 0)))
    r = hs.open_store(path)
    assert r.complete and r.verify() == []
    r.close()  # else this process's HDF5 keeps serving the chunk from its cache
    _corrupt_chunk(path, 6)
    problems = hs.open_store(path).verify()
    assert [p.split(":")[0] for p in problems] == [f"instance {ids[6]} (row 6)"]


def test_write_encoded_refuses_rows_encoded_for_another_store(tmp_path):
    path = tmp_path / "s.h5"
    sw.create_store(path, _meta(), np.arange(4))
    with sw.StoreWriter(path) as w:
        for enc, match in ((hs.encode_rows(_maps(2), codec="lz4"), "codec 'lz4'"),
                           (hs.encode_rows(_maps(2), threshold=0.1), "threshold 0.1"),
                           (hs.encode_rows(_maps(2)[:, :, :8]), "shape")):
            with pytest.raises(UniError, match=match):
                w.write_encoded(np.arange(2), enc, _affines(2))
        with pytest.raises(UniError, match="out of range"):
            w.write_encoded(np.array([3, 4]), hs.encode_rows(_maps(2)), _affines(2))
    assert not hs.open_store(path).done.any()


# --------------------------------------------------------------------------- layout


def test_round_trip_and_layout_readable_with_plain_h5py(store):
    path, ids, maps, aff = store
    r = hs.open_store(path)
    assert r.complete and r.done.all() and r.meta == _meta()
    np.testing.assert_array_equal(r.instance_ids, ids)
    assert r.row_of[int(ids[5])] == 5
    for row in range(len(ids)):
        got, a = r.read(row)
        q, s, a2 = r.read_raw(row)
        assert got.dtype == np.float32 and q.dtype == np.uint8 and got.shape == (K, H, W)
        top = maps[row].max(axis=(1, 2), keepdims=True)
        assert (np.abs(got - maps[row]) <= top / 255 * (0.5 + 255 * hs.THRESHOLD) + 1e-7).all()
        np.testing.assert_array_equal(a, aff[row])
        np.testing.assert_array_equal(a2, aff[row])
    with h5py.File(path) as f:  # the module docstring's recipe, no uni code
        ds = f["heatmaps"]
        assert ds.chunks == (1, K, H, W) and ds.dtype == np.uint8
        assert ds.fletcher32 and ds.id.get_num_chunks() == len(ids)
        plist = ds.id.get_create_plist()
        filters = [plist.get_filter(i)[0] for i in range(plist.get_nfilters())]
        assert filters[-1] == h5py.h5z.FILTER_FLETCHER32 and len(filters) == 2
        assert filters[0] >= 256 and h5py.h5z.filter_avail(filters[0])  # a registered plugin
        decoded = ds[3].astype(np.float32) * f["scales"][3][:, None, None]
        np.testing.assert_allclose(decoded, r.read(3)[0])
        a = f.attrs
        assert a["format_version"] == hs.FORMAT_VERSION and a["codec"] == hs.CODEC
        assert json.loads(a["to_unified"]) == list(range(17))
        assert json.loads(a["input_wh"]) == [48, 64] and json.loads(a["heatmap_shape"]) == [K, H, W]
        assert a["complete"] == 1 and a["completed"] and a["created"]
        assert a["software_version"] == version("uniskel")  # the installed distribution's


def test_open_store_errors_name_file_and_field(store, tmp_path):
    path = store[0]
    with pytest.raises(UniError, match="not found"):
        hs.open_store(tmp_path / "nope.h5")
    text = tmp_path / "text.h5"
    text.write_text("hello")
    with pytest.raises(UniError, match="not an HDF5"):
        hs.open_store(text)
    for change, match in (
        (lambda f: f.attrs.__setitem__("format_version", 99), "format_version 99"),
        (lambda f: f.__delitem__("scales"), "'scales' missing"),
        (lambda f: f.attrs.__delitem__("dataset_id"), "'dataset_id' missing"),
    ):
        bad = tmp_path / "bad.h5"
        bad.write_bytes(path.read_bytes())
        with h5py.File(bad, "r+") as f:
            change(f)
        with pytest.raises(UniError, match=match) as e:
            hs.open_store(bad)
        assert str(bad) in str(e.value) and "\n" not in str(e.value)


def test_partial_store_rows_and_finalize(tmp_path):
    path = tmp_path / "p.h5"
    ids = np.arange(6) + 1
    sw.create_store(path, _meta(), ids)
    assert hs.check_compatible(path, _meta()) == "partial"
    with sw.StoreWriter(path) as w:
        w.write(np.array([4, 1]), _maps(2), _affines(2))  # any order
        with pytest.raises(UniError, match="neither written nor skipped"):
            w.finalize({3: "unreadable"})
        w.write(np.array([0, 2, 5]), _maps(3, 1), _affines(3))
        # instance 3 (row 2) was written; a skipped row keeps the store partial (retried)
        assert not w.finalize({4: "bad image", 3: "unreadable"})
    r = hs.open_store(path)
    assert not r.complete and r.skipped == {4: "bad image"}
    np.testing.assert_array_equal(r.done, [1, 1, 1, 0, 1, 1])
    np.testing.assert_array_equal(r.read(4)[0], hs.dequantize(*hs.quantize(_maps(2)[:1]))[0])
    np.testing.assert_array_equal(r.read(1)[1], _affines(2)[1])
    with pytest.raises(UniError, match="instance 4 .*not in the store"):
        r.read(3)
    assert hs.check_compatible(path, _meta()) == "partial" and r.verify() == []
    r.close()
    with sw.StoreWriter(path) as w:  # the retry: the image was mended
        w.write(np.array([3]), _maps(1, 2), _affines(1))
        assert w.finalize({})
    r = hs.open_store(path)
    assert r.complete and r.skipped == {} and r.done.all()
    assert hs.check_compatible(path, _meta()) == "complete"
    r.close()
    with sw.StoreWriter(path) as w:  # reopened (a store an older uni froze with skips)
        w.reopen()
    assert hs.check_compatible(path, _meta()) == "partial"


def test_rewriting_done_rows_replaces_them(tmp_path):
    """A row written again (done already) holds the new data; it is unmarked and flushed first,
    so a kill in between never pairs its old metadata with reused chunk space."""
    path = tmp_path / "w.h5"
    sw.create_store(path, _meta(), np.arange(6))
    with sw.StoreWriter(path) as w:
        w.write(np.arange(4), _maps(4, seed=1), _affines(4))
        w.write(np.array([3, 2, 5]), _maps(3, seed=2), _affines(3) + 7)
    r = hs.open_store(path)
    assert np.flatnonzero(r.done).tolist() == [0, 1, 2, 3, 5] and r.verify() == []
    want = hs.dequantize(*hs.quantize(_maps(3, seed=2)))
    np.testing.assert_array_equal(r.read(3)[0], want[0])
    np.testing.assert_array_equal(r.read(2)[1], _affines(3)[1] + 7)


# --------------------------------------------------------------------------- readers in workers


def _sum_rows(reader: hs.StoreReader) -> list[float]:
    return [float(reader.read(r)[0].sum()) for r in range(len(reader))]


class _Rows:
    """A torch-style dataset over a store (what stage two does)."""

    def __init__(self, reader):
        self.reader = reader

    def __len__(self):
        return len(self.reader)

    def __getitem__(self, row):
        return self.reader.read(row)[0], os.getpid()


def test_reader_pickles_as_path_and_reads_in_workers(store):
    import torch

    path, ids, _, _ = store
    r = hs.open_store(path)
    want = _sum_rows(r)  # the parent holds an open handle now; forked children must not use it
    assert len(pickle.dumps(r)) < 500
    loader = torch.utils.data.DataLoader(_Rows(r), batch_size=3, num_workers=2)
    got, pids = [], set()
    for heat, pid in loader:
        got += [float(h.sum()) for h in heat]
        pids |= set(pid.tolist())
    np.testing.assert_allclose(got, want, rtol=1e-6)
    assert len(pids) == 2 and os.getpid() not in pids
    import multiprocessing as mp

    with mp.get_context("spawn").Pool(1) as pool:
        np.testing.assert_allclose(pool.apply(_sum_rows, (r,)), want, rtol=1e-6)


# --------------------------------------------------------------------------- resume checks


def test_check_compatible_states(tmp_path):
    path = tmp_path / "c.h5"
    assert hs.check_compatible(path, _meta()) == "missing"
    sw.create_store(path, _meta(), [1, 2])
    assert hs.check_compatible(path, _meta(dataset_spec="coco:moved.json")) == "partial"


@pytest.mark.parametrize("field,value", [
    ("teacher_sha256", "b" * 64), ("dataset_id", "e" * 64), ("skeleton", "mpii16"),
    ("input_wh", (64, 64)), ("padding", 1.0), ("flip_test", False), ("heatmap_shape", (K, 8, 6)),
    ("teacher_name", "other"),
])
def test_check_compatible_refuses_each_field(tmp_path, field, value):
    path = tmp_path / "c.h5"
    sw.create_store(path, _meta(), [1, 2])
    with pytest.raises(UniError, match=f"{field}") as e:
        hs.check_compatible(path, _meta(**{field: value}))
    assert str(path) in str(e.value)


def test_store_with_the_old_flip_attribute_opens_and_resumes(tmp_path):
    """Stores written before `flip` was renamed `flip_test` hold the old attribute: they open
    with the same meta, are checked on it, and resume to completion."""
    path = tmp_path / "old.h5"
    maps, aff = _maps(4), _affines(4)
    sw.create_store(path, _meta(), np.arange(4))
    with sw.StoreWriter(path) as w:
        w.write(np.arange(2), maps[:2], aff[:2])
    with h5py.File(path, "r+") as f:  # as an earlier uni wrote it
        f.attrs["flip"] = f.attrs["flip_test"]
        del f.attrs["flip_test"]
    r = hs.open_store(path)
    assert r.meta == _meta() and "flip_test" not in r.attrs and r.attrs["flip"]
    assert hs.check_compatible(path, _meta()) == "partial"
    with pytest.raises(UniError, match="flip_test True, now False"):
        hs.check_compatible(path, _meta(flip_test=False))
    with sw.StoreWriter(path) as w:
        w.write(np.arange(2, 4), maps[2:], aff[2:])
        w.finalize()
    r = hs.open_store(path)
    assert r.complete and r.meta.flip_test and r.verify() == []
    np.testing.assert_array_equal(r.read(3)[1], aff[3])


def test_threshold_is_kept_used_and_checked_on_resume(tmp_path):
    path = tmp_path / "t.h5"
    maps = _maps(4)
    sw.create_store(path, _meta(), np.arange(4), threshold=0.2)
    with sw.StoreWriter(path) as w:
        w.write(np.arange(4), maps, _affines(4))
        w.finalize()
    r = hs.open_store(path)
    assert r.attrs["threshold"] == pytest.approx(0.2)
    for row in range(4):
        got, _ = r.read(row)
        top = maps[row].max(axis=(1, 2), keepdims=True)
        assert (got[maps[row] < 0.2 * top] == 0).all()  # zeroed under 0.2 × peak, not 4/255
        assert (got[maps[row] >= 0.21 * top] > 0).all()
    assert hs.check_compatible(path, _meta(), 0.2) == "complete"
    with pytest.raises(UniError, match="threshold 0.2, now 0.0156863"):
        hs.check_compatible(path, _meta(), hs.THRESHOLD)
    with pytest.raises(UniError, match="threshold"):
        sw.create_store(tmp_path / "bad.h5", _meta(), [1], threshold=1.5)


# --------------------------------------------------------------------------- locks


def test_lock_refuses_live_writer_and_takes_over_stale(store, caplog):
    path = store[0]
    lock = Path(str(path) + ".lock")
    with sw.StoreWriter(path):
        assert lock.read_text().split()[0] == str(os.getpid())
        with pytest.raises(UniError, match=f"being written by pid {os.getpid()}"):
            sw.StoreWriter(path)
    assert not lock.exists()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock.write_text(f"{sleeper.pid}\n")
        with pytest.raises(UniError, match=f"being written by pid {sleeper.pid}"):
            sw.StoreWriter(path)
    finally:
        sleeper.kill()
        sleeper.wait()
    caplog.set_level(logging.WARNING)
    with sw.StoreWriter(path):  # sleeper is gone: its lock is stale
        assert lock.read_text().split()[0] == str(os.getpid())
    assert f"lock of pid {sleeper.pid}" in caplog.text
    assert not lock.exists()


# --------------------------------------------------------------------------- damage


def _corrupt_chunk(path: Path, row: int) -> None:
    with h5py.File(path) as f:
        info = f["heatmaps"].id.get_chunk_info_by_coord((row, 0, 0, 0))
    with open(path, "r+b") as fh:
        fh.seek(info.byte_offset + info.size // 2)
        b = fh.read(4)
        fh.seek(info.byte_offset + info.size // 2)
        fh.write(bytes(x ^ 0xFF for x in b))


def test_corrupt_chunk_named_by_verify_and_read(store):
    path, ids, _, _ = store
    assert hs.open_store(path).verify() == []
    _corrupt_chunk(path, 7)
    r = hs.open_store(path)
    problems = r.verify()
    assert len(problems) == 1 and f"instance {ids[7]}" in problems[0]
    with pytest.raises(UniError, match=f"instance {ids[7]}"):
        r.read(7)
    r.read(6)  # its neighbours are fine


_WRITER = """
import sys, numpy as np
from uniskel.stores import writer as sw
path = sys.argv[1]
with sw.StoreWriter(path) as w:
    for start in range(0, 4000, 8):
        rows = np.arange(start, start + 8)
        hm = np.random.default_rng(start).random((8, {K}, {H}, {W}), dtype=np.float32)
        hm[:, :, 0, 0] = 2 + rows[:, None] / 1000  # the peak identifies the row
        w.write(rows, hm, np.tile(np.eye(2, 3), (8, 1, 1)) * rows[:, None, None])
        print(start, flush=True)
"""


def test_kill_minus_nine_mid_write_leaves_consistent_store(tmp_path):
    path = tmp_path / "k.h5"
    sw.create_store(path, _meta(), np.arange(4000))
    code = _WRITER.format(K=K, H=H, W=W)
    proc = subprocess.Popen([sys.executable, "-c", code, str(path)], stdout=subprocess.PIPE,
                            cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    for _ in range(30):  # let it write a few batches, then kill it mid-flight
        proc.stdout.readline()
    time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    mended = sw.repair_store(path)  # a chunk the kill tore: its rows are reset
    r = hs.open_store(path)
    done = np.flatnonzero(r.done)
    assert not r.complete
    assert mended in (0, sw.META_CHUNK) and 240 - mended <= len(done) < 4000
    for row in done:
        heat, a = r.read(row)
        assert abs(heat[:, 0, 0].max() - (2 + row / 1000)) < 0.02
        assert a[0, 0] == row
    assert r.verify() == []
    r.close()  # one process may not hold a store open for reading and writing at once
    with sw.StoreWriter(path) as w:  # resume: stale lock taken over, the rest written
        todo = np.flatnonzero(~r.done)
        w.write(todo, np.ones((len(todo), K, H, W), np.float32), _affines(len(todo)))
        w.finalize()
    assert hs.open_store(path).complete


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
    c = sw.META_CHUNK  # rows 0 … c - 1 share chunk 0 of the small datasets
    n, maps = c + 904, _maps(1)
    sw.create_store(path, _meta(), np.arange(n))
    rows = np.array([1, 2, c - 1, c, n - 1])
    with sw.StoreWriter(path) as w:
        w.write(rows, np.repeat(maps, 5, 0), _affines(5))
    _tear(path, name)
    with pytest.raises(UniError, match="running it again repairs the store"):
        hs.open_store(path)._open()
    with caplog.at_level(logging.WARNING):
        assert sw.repair_store(path) == c
    assert f"{c} rows torn" in caplog.text
    r = hs.open_store(path)
    assert np.flatnonzero(r.done).tolist() == [c, n - 1]  # chunk 1 kept its rows
    np.testing.assert_array_equal(r.read(c)[1], _affines(5)[3])
    r.close()
    with sw.StoreWriter(path) as w:
        todo = np.flatnonzero(~r.done)
        w.write(todo, np.repeat(maps, len(todo), 0), _affines(len(todo)))
        w.finalize()
    r = hs.open_store(path)
    assert r.complete and r.verify() == []
    assert sw.repair_store(path) == 0  # a complete store is left alone


def test_hdf5_write_failing_mid_batch_keeps_finished_rows(tmp_path, monkeypatch):
    """An HDF5 write that fails mid-batch (its file descriptor turned read-only after the third
    batch's first chunk: EBADF on the second, as an I/O error) is one StoreWriteFailed; the
    handle is cut off the file, the store opens as of the last batch, and a resume ends equal
    to a store written without failure."""
    ids, maps, aff = np.arange(24) + 7, _maps(24, seed=5), _affines(24)
    sw.write_store(tmp_path / "clean.h5", _meta(), ids, maps, aff)
    path = tmp_path / "f.h5"
    sw.create_store(path, _meta(), ids)
    w, batches = sw.StoreWriter(path), []

    def break_in_batch_3(point: str) -> None:  # called after each batch's first chunk
        batches.extend([point] if point == "store-chunk" else [])
        if len(batches) == 3 and point == "store-chunk":
            ro = os.open(path, os.O_RDONLY)
            os.dup2(ro, w._f.id.get_vfd_handle())
            os.close(ro)

    monkeypatch.setattr(sw, "fault", break_in_batch_3)
    with pytest.raises(sw.StoreWriteFailed, match="f.h5: write failed"):
        for start in range(0, 24, 8):
            w.write(np.arange(start, start + 8), maps[start:start + 8], aff[start:start + 8])
    assert len(batches) == 3
    with pytest.raises(UniError, match="an earlier write failed"):
        w.write(np.arange(16, 24), maps[16:], aff[16:])
    w.close()  # onto /dev/null: quiet, and nothing reaches the store
    monkeypatch.undo()
    assert not Path(str(path) + ".lock").exists()
    r = hs.open_store(path)
    assert np.flatnonzero(r.done).tolist() == list(range(16)) and r.verify() == []
    r.close()
    with sw.StoreWriter(path) as w:
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
    ids, maps, aff = np.arange(16), _maps(16, seed=6), _affines(16)
    path = tmp_path / "r.h5"
    sw.create_store(path, _meta(), ids)
    real, full = os.posix_fallocate, []

    def quota(fd, offset, length):
        if full:
            raise OSError(errno.EDQUOT, os.strerror(errno.EDQUOT))
        return real(fd, offset, length)

    monkeypatch.setattr(os, "posix_fallocate", quota)
    with sw.StoreWriter(path) as w:
        w.write(np.arange(8), maps[:8], aff[:8])
        full.append(True)
        with pytest.raises(UniError, match="no room for the next batch .*quota.*intact"):
            w.write(np.arange(8, 16), maps[8:], aff[8:])
        assert w._guard.overruns == 0
    monkeypatch.undo()
    r = hs.open_store(path)
    assert np.flatnonzero(r.done).tolist() == list(range(8)) and r.verify() == []
    r.close()
    with sw.StoreWriter(path) as w:
        w.write(np.arange(8, 16), maps[8:], aff[8:])
        w.finalize()
    assert hs.open_store(path).verify() == []


# --------------------------------------------------------------------------- row metadata


def _chunk_word(path: Path, name: str, byte: int) -> int:
    """File offset of byte `byte` of chunk 0 of dataset `name`."""
    with h5py.File(path) as f:
        return f[name].id.get_chunk_info(0).byte_offset + byte


def _poke(path: Path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as fh:
        fh.seek(offset)
        fh.write(data)


def test_row_crc_sees_what_fletcher32_cannot(tmp_path):
    """A 16-bit word of row metadata going 0x0000 → 0xffff passes fletcher32 (plain h5py reads
    it) but fails the row's row_crc: reads refuse the row, every check names it, and a writer
    resuming the store computes it again."""
    ids, maps = np.arange(8) + 10, _maps(8, seed=7)
    maps[2, 3] = 0.0  # scale 0.0: four zero bytes in row 2's scales
    path = tmp_path / "s.h5"
    sw.create_store(path, _meta(), ids)
    with sw.StoreWriter(path) as w:
        w.write(np.arange(5), maps[:5], _affines(5))
    _poke(path, _chunk_word(path, "scales", (2 * K + 3) * 4), b"\xff\xff")  # scale ≈ 1e-40
    with h5py.File(path) as f:
        assert 0 < f["scales"][2, 3] < 1e-30  # fletcher32 passed it
    _poke(path, _chunk_word(path, "done", 6), b"\xff\xff")  # rows 6 and 7 (not done)
    with h5py.File(path) as f:
        np.testing.assert_array_equal(f["done"][:], [1, 1, 1, 1, 1, 0, 255, 255])
    r = hs.open_store(path)
    with pytest.raises(UniError, match=f"instance {ids[2]} \\(row 2\\) fails its row_crc"):
        r.read(2)
    r.read(1)
    for trust in (True, False):
        found = r.check(trust=trust)
        assert sorted(found.damaged) == [2, 6, 7], found.problems
        assert "row_crc" in found.damaged[2] and "done is 255" in found.damaged[7]
    r.close()
    with sw.StoreWriter(path) as w:
        assert w.rows_reset == 3
    assert np.flatnonzero(hs.open_store(path).done).tolist() == [0, 1, 3, 4]


def _as_version_1(path: Path) -> None:
    """Make a store what uni wrote before format 2: no row_crc, format_version 1."""
    with h5py.File(path, "r+") as f:
        del f["row_crc"]
        f.attrs["format_version"] = 1


def test_format_1_store_is_read_and_a_resume_upgrades_it(tmp_path):
    ids, maps, aff = np.arange(8) + 3, _maps(8, seed=8), _affines(8)
    sw.write_store(tmp_path / "clean.h5", _meta(), ids, maps, aff)
    old = tmp_path / "old.h5"
    sw.write_store(old, _meta(), ids, maps, aff)
    _as_version_1(old)
    before = old.read_bytes()
    r = hs.open_store(old)  # complete: read as it is, never written again
    assert r.version == 1 and r.verify() == [] and r.check().problems == []
    np.testing.assert_array_equal(r.read(5)[1], aff[5])
    assert sw.repair_store(old) == 0 and old.read_bytes() == before
    part = tmp_path / "part.h5"
    sw.create_store(part, _meta(), ids)
    with sw.StoreWriter(part) as w:
        w.write(np.arange(5), maps[:5], aff[:5])
    _as_version_1(part)
    assert hs.check_compatible(part, _meta()) == "partial"
    with sw.StoreWriter(part) as w:  # the resume adds row_crc for the rows it finds
        w.write(np.arange(5, 8), maps[5:], aff[5:])
        w.finalize()
    r = hs.open_store(part)
    assert r.version == 2 and r.verify() == []
    with h5py.File(tmp_path / "clean.h5") as a, h5py.File(part) as b:
        assert b.attrs["format_version"] == 2
        for name in ("scales", "affines", "done", "row_crc", "heatmaps"):
            np.testing.assert_array_equal(a[name][:], b[name][:])


def test_store_of_a_newer_format_is_refused_in_one_line(store):
    path = store[0]
    with h5py.File(path, "r+") as f:
        f.attrs["format_version"] = hs.FORMAT_VERSION + 1
    with pytest.raises(UniError, match=f"format_version {hs.FORMAT_VERSION + 1}, written by a "
                                       "newer uni") as e:
        hs.open_store(path)
    assert "\n" not in str(e.value)
    with pytest.raises(UniError, match="newer uni"):
        sw.StoreWriter(path)
    assert not Path(str(path) + ".lock").exists()


# --------------------------------------------------------------------------- verified once


def test_a_clean_check_is_recorded_and_trusted_until_the_file_changes(tmp_path):
    path = tmp_path / "v.h5"
    ids, maps, aff = np.arange(10) + 1, _maps(10, seed=9), _affines(10)
    sw.create_store(path, _meta(), ids)
    with sw.StoreWriter(path) as w:
        w.write(np.arange(6), maps[:6], aff[:6])
    record = Path(str(path) + ".verified")
    r = hs.open_store(path)
    first = r.check()
    assert first.problems == [] and first.rows_read == 6 and record.is_file()
    assert r.check().rows_read == 0  # trusted: nothing read again
    assert r.check(trust=False).rows_read == 6  # inspect-store --verify reads everything
    r.close()
    # A resume by the store's writer: only its new rows are read next time.
    with sw.StoreWriter(path) as w:
        w.write(np.arange(6, 10), maps[6:], aff[6:])
        w.finalize()
    r = hs.open_store(path)
    assert r.check().rows_read == 4 and r.check().rows_read == 0
    r.close()
    # Any other change (here a chunk damaged in place): everything is read again.
    _corrupt_chunk(path, 3)
    r = hs.open_store(path)
    found = r.check()
    assert found.rows_read == 10 and list(found.damaged) == [3]
    assert r.check().rows_read == 1  # the damaged row is never vouched for
    r.close()


def test_no_record_beside_a_writer_and_none_from_a_killed_one(tmp_path):
    path = tmp_path / "v.h5"
    ids, maps, aff = np.arange(4), _maps(4), _affines(4)
    sw.write_store(path, _meta(), ids, maps, aff)
    record = Path(str(path) + ".verified")
    lock = Path(str(path) + ".lock")
    lock.write_text(f"{os.getpid()} {socket.gethostname()}\n")  # a live writer holds it
    assert hs.open_store(path).check().rows_read == 4 and not record.exists()
    lock.unlink()
    r = hs.open_store(path)
    r.check()
    assert json.loads(record.read_text())["identity"] is not None
    r.close()
    w = sw.StoreWriter(path)  # opening clears the identity: killed now, the record vouches
    assert json.loads(record.read_text())["identity"] is None  # for nothing
    w.close()
    assert hs.open_store(path).check().rows_read == 0  # closed cleanly: carried over


# --------------------------------------------------------------------------- CLI


def test_inspect_store_cli(store):
    path, ids, maps, _ = store
    runner = CliRunner()
    res = runner.invoke(uni, ["inspect-store", str(path), "--json", "--verify"])
    assert res.exit_code == 0, res.output
    s = json.loads(res.stdout)
    assert s["instances"] == s["done"] == len(ids) and s["complete"] and s["problems"] == []
    assert s["heatmap_shape"] == [K, H, W] and s["teacher_sha256"] == "a" * 64
    assert s["raw_fp16_bytes"] == 2 * maps[0].size * len(ids) and s["codec"] == hs.CODEC
    assert s["compression_ratio_fp16"] == pytest.approx(s["raw_fp16_bytes"] / path.stat().st_size)
    # Issue 16: attributes holding JSON come out as JSON values, no JSON inside strings.
    a = s["attrs"]
    assert a["heatmap_shape"] == [K, H, W] and a["skipped"] == {} and a["complete"] == 1
    assert isinstance(a["teacher_metadata"], dict) and isinstance(a["to_unified"], list)
    assert not [k for k, v in a.items() if isinstance(v, str) and v[:1] in ("[", "{")]
    res = runner.invoke(uni, ["inspect-store", str(path)])
    assert res.exit_code == 0 and "complete" in res.output and "x smaller" in res.output
    _corrupt_chunk(path, 2)
    res = runner.invoke(uni, ["inspect-store", str(path), "--verify"])
    assert res.exit_code == 1 and f"instance {ids[2]}" in res.output
    res = runner.invoke(uni, ["inspect-store", str(path.with_name("none.h5"))])
    assert res.exit_code == 2 and "store not found" in res.output


def test_inspect_store_draws_on_real_crops(tmp_path, data_dir):
    import cv2

    from uniskel.core.datasets import load_dataset

    spec = f"coco:{data_dir / 'coco/test_coco.json'}"
    ds = load_dataset(spec)
    ids = [i.instance_id for i in ds.instances][:3]
    meta = _meta(dataset_id=ds.dataset_id, dataset_spec=spec)
    path = tmp_path / "real.h5"
    sw.write_store(path, meta, ids, _maps(3), _affines(3))
    res = CliRunner().invoke(uni, ["inspect-store", str(path), "--draw", "2", "--out",
                                   str(tmp_path / "draw")])
    assert res.exit_code == 0, res.output
    pngs = sorted((tmp_path / "draw").glob("*.png"))
    assert len(pngs) == 2
    img = cv2.imread(str(pngs[0]))
    assert img.shape == (64, 48, 3)
    # Over a real crop, not just the colour map: the same store without the dataset differs.
    sw.write_store(tmp_path / "alone.h5", _meta(dataset_spec="coco:/nowhere.json"), ids,
                   _maps(3), _affines(3))
    res = CliRunner().invoke(uni, ["inspect-store", str(tmp_path / "alone.h5"), "--draw", "1",
                                   "--out", str(tmp_path / "alone")])
    assert res.exit_code == 0, res.output
    alone = cv2.imread(str(next((tmp_path / "alone").glob("*.png"))))
    assert np.abs(alone.astype(int) - img).mean() > 5
