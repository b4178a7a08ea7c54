"""The HDF5 soft-label store: quantisation, layout, readers in workers, resume, locks, damage."""

from __future__ import annotations

import json
import logging
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from cli import uni
from pipeline.errors import UniError
from pipeline.heatmaps import gaussian_heatmaps
from stores import heatmap_store as hs
from stores import writer as sw

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
        assert a["complete"] == 1 and a["completed"] and a["created"] and a["software_version"]


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
        w.finalize({4: "bad image", 3: "unreadable"})  # instance 3 (row 2) was written
    r = hs.open_store(path)
    assert r.complete and r.skipped == {4: "bad image"}
    np.testing.assert_array_equal(r.done, [1, 1, 1, 0, 1, 1])
    np.testing.assert_array_equal(r.read(4)[0], hs.dequantize(*hs.quantize(_maps(2)[:1]))[0])
    np.testing.assert_array_equal(r.read(1)[1], _affines(2)[1])
    with pytest.raises(UniError, match="instance 4 .*not in the store"):
        r.read(3)
    assert hs.check_compatible(path, _meta()) == "complete"


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
from stores import writer as sw
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
    mended = sw.repair_store(path)  # a chunk the kill tore: all 4000 rows share one, all reset
    r = hs.open_store(path)
    done = np.flatnonzero(r.done)
    assert not r.complete
    assert (mended == 0 and 240 <= len(done) < 4000) or (mended == 4000 and len(done) == 0)
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


@pytest.mark.parametrize("name", ["scales", "done", "affines"])
def test_chunk_torn_by_a_kill_is_mended_on_resume(tmp_path, name, caplog):
    """A torn scales / affines / done chunk makes the partial store unreadable with a hint;
    the next writer resets that chunk's rows (computed again) and the store ends clean."""
    path = tmp_path / "m.h5"
    n, maps = 5000, _maps(1)  # rows 0–4095 share chunk 0 of the small datasets
    sw.create_store(path, _meta(), np.arange(n))
    rows = np.array([1, 2, 4095, 4096, 4999])
    with sw.StoreWriter(path) as w:
        w.write(rows, np.repeat(maps, 5, 0), _affines(5))
    _tear(path, name)
    with pytest.raises(UniError, match="running it again repairs the store"):
        hs.open_store(path)._open()
    with caplog.at_level(logging.WARNING):
        assert sw.repair_store(path) == 4096
    assert "4096 rows torn" in caplog.text
    r = hs.open_store(path)
    assert np.flatnonzero(r.done).tolist() == [4096, 4999]  # chunk 1 kept its rows
    np.testing.assert_array_equal(r.read(4096)[1], _affines(5)[3])
    r.close()
    with sw.StoreWriter(path) as w:
        todo = np.flatnonzero(~r.done)
        w.write(todo, np.repeat(maps, len(todo), 0), _affines(len(todo)))
        w.finalize()
    r = hs.open_store(path)
    assert r.complete and r.verify() == []
    assert sw.repair_store(path) == 0  # a complete store is left alone


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
    res = runner.invoke(uni, ["inspect-store", str(path)])
    assert res.exit_code == 0 and "complete" in res.output and "x smaller" in res.output
    _corrupt_chunk(path, 2)
    res = runner.invoke(uni, ["inspect-store", str(path), "--verify"])
    assert res.exit_code == 1 and f"instance {ids[2]}" in res.output
    res = runner.invoke(uni, ["inspect-store", str(path.with_name("none.h5"))])
    assert res.exit_code == 2 and "store not found" in res.output


def test_inspect_store_draws_on_real_crops(tmp_path, data_dir):
    import cv2

    from pipeline.datasets import load_dataset

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
