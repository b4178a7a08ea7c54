"""The store's format: quantisation, the bytes of a row, the layout plain h5py reads, what a
store must hold to be read, readers in workers, and the checks before a resume."""

from __future__ import annotations

import json
import os
import pickle
from dataclasses import fields
from importlib.metadata import version
from pathlib import Path

import h5py
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from store_helpers import H, K, W, sample_affines, sample_maps, sample_meta, sample_store

from uniskel.core.errors import UniError
from uniskel.stores.create import create_store
from uniskel.stores.encode import (
    CODEC,
    CODECS,
    THRESHOLD,
    dequantize,
    encode_rows,
    quantize,
)
from uniskel.stores.reader import StoreReader, check_compatible, open_store
from uniskel.stores.schema import FORMAT_VERSION, STORE_ATTRS, StoreMeta
from uniskel.stores.writer import StoreWriter

# --------------------------------------------------------------------------- quantisation


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31), peak=st.floats(1e-6, 1e3))
def test_quantize_error_bound_threshold_and_argmax(seed, peak):
    maps = sample_maps(2, seed) * np.float32(peak)
    q, scales = quantize(maps)
    back = dequantize(q, scales)
    top = maps.max(axis=(2, 3))
    np.testing.assert_allclose(scales, top / 255, rtol=1e-6)
    bound = (scales / 2 + THRESHOLD * top)[..., None, None]
    assert (np.abs(back - maps) <= bound * (1 + 1e-5)).all()
    assert (q[maps < THRESHOLD * top[..., None, None]] == 0).all()
    flat_q, flat_m = q.reshape(2, K, -1), maps.reshape(2, K, -1)
    np.testing.assert_array_equal(flat_q.argmax(-1), flat_m.argmax(-1))
    assert (flat_q.max(-1) == 255).all()


def test_quantize_zero_and_negative_channels():
    maps = sample_maps(1)
    maps[0, 3] = 0.0
    maps[0, 4] = -1.0  # a teacher's raw negatives count as zero
    q, scales = quantize(maps)
    assert scales[0, 3] == 0 and scales[0, 4] == 0 and not q[0, 3:5].any()


# --------------------------------------------------------------------------- encoded rows


@pytest.mark.parametrize("codec", ["zstd-1", "blosc-lz4-bitshuffle", "gzip-4"])
def test_encode_rows_bytes_are_what_hdf5_itself_stores(tmp_path, codec):
    """encode_rows' chunks equal the bytes a plain h5py write of the same uint8 map puts on disk
    (codec + fletcher32), for every row of a batch, and its scales are quantize's."""
    maps = sample_maps(5, seed=3)
    enc = encode_rows(maps, THRESHOLD, codec)
    q, scales = quantize(maps)
    np.testing.assert_array_equal(enc.scales, scales)
    assert enc.shape == (K, H, W) and enc.codec == codec and not enc.filter_masks.any()
    with h5py.File(tmp_path / "plain.h5", "w") as f:
        ds = f.create_dataset("h", (5, K, H, W), np.uint8, chunks=(1, K, H, W),
                              fletcher32=True, **dict(CODECS[codec]()))
        ds[:] = q
        for i in range(5):
            mask, chunk = ds.id.read_direct_chunk((i, 0, 0, 0))
            assert mask == 0 and bytes(chunk) == enc.chunks[i]
    again = encode_rows(maps[2:4], THRESHOLD, codec)  # the cached twin, other rows
    assert again.chunks == enc.chunks[2:4]
    assert len(pickle.dumps(enc)) < sum(map(len, enc.chunks)) + 5 * K * 4 + 1000


def test_encode_rows_refuses_maps_that_are_not_finite():
    maps = sample_maps(3)
    maps[1, 2, 3, 4] = np.nan
    with pytest.raises(UniError, match="batch row 1 not finite"):
        encode_rows(maps)

# --------------------------------------------------------------------------- layout


def test_round_trip_and_layout_readable_with_plain_h5py(tmp_path):
    path, ids, maps, aff = sample_store(tmp_path)
    r = open_store(path)
    assert r.complete and r.done.all() and r.meta == sample_meta()
    np.testing.assert_array_equal(r.instance_ids, ids)
    assert r.find(int(ids[5]))[0] == 5 and r.rows(ids[[5, 2]]).tolist() == [5, 2]
    for row in range(len(ids)):
        got, a = r.read(row)
        q, s, a2 = r.read_raw(row)
        assert got.dtype == np.float32 and q.dtype == np.uint8 and got.shape == (K, H, W)
        top = maps[row].max(axis=(1, 2), keepdims=True)
        assert (np.abs(got - maps[row]) <= top / 255 * (0.5 + 255 * THRESHOLD) + 1e-7).all()
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
        assert a["format_version"] == FORMAT_VERSION and a["codec"] == CODEC
        assert set(a) == {*STORE_ATTRS, *(f.name for f in fields(StoreMeta))}
        assert json.loads(a["input_wh"]) == [48, 64] and json.loads(a["heatmap_shape"]) == [K, H, W]
        assert a["complete"] == 1 and a["completed"] and a["created"]
        assert a["software_version"] == version("uniskel")  # the installed distribution's


def test_open_store_errors_name_file(tmp_path):
    with pytest.raises(UniError, match="not found"):
        open_store(tmp_path / "nope.h5")
    text = tmp_path / "text.h5"
    text.write_text("hello")
    with pytest.raises(UniError, match="not an HDF5"):
        open_store(text)


def _rename_attr(f, old: str, new: str) -> None:
    f.attrs[new] = f.attrs[old]
    del f.attrs[old]


@pytest.mark.parametrize("change,match", [
    (lambda f: f.attrs.__setitem__("format_version", FORMAT_VERSION + 1),
     f"format_version {FORMAT_VERSION + 1}, written by a newer uni"),
    (lambda f: (f.__delitem__("row_crc"), f.attrs.__setitem__("format_version", 1)),
     "format_version 1, this uni reads 2"),
    (lambda f: f.__delitem__("row_crc"), "dataset 'row_crc' missing"),
    (lambda f: f.__delitem__("scales"), "dataset 'scales' missing"),
    (lambda f: f.attrs.__delitem__("dataset_id"), "attribute 'dataset_id' missing"),
    (lambda f: f.attrs.__delitem__("skeleton_def"), "attribute 'skeleton_def' missing"),
    (lambda f: _rename_attr(f, "flip_test", "flip"), "attribute 'flip_test' missing"),
    (lambda f: f.attrs.__delitem__("threshold"), "attribute 'threshold' missing"),
    (lambda f: f.attrs.__delitem__("skipped"), "attribute 'skipped' missing"),
], ids=["newer", "format-1", "row_crc", "scales", "dataset_id", "skeleton_def", "flip",
        "threshold", "skipped"])
def test_store_lacking_what_format_2_holds_is_refused_in_one_line(tmp_path, change, match):
    """Read, resumed or checked before a resume: one line naming the file and the field."""
    path = sample_store(tmp_path)[0]
    with h5py.File(path, "r+") as f:
        change(f)
    for use in (open_store, StoreWriter, lambda p: check_compatible(p, sample_meta())):
        with pytest.raises(UniError, match=match) as e:
            use(path)
        assert str(e.value).startswith(f"{path}: ") and "\n" not in str(e.value)
    assert not Path(str(path) + ".lock").exists()


# --------------------------------------------------------------------------- readers in workers


def _sum_rows(reader: StoreReader) -> list[float]:
    return [float(reader.read(r)[0].sum()) for r in range(len(reader))]


class _Rows:
    """A torch-style dataset over a store (what stage two does)."""

    def __init__(self, reader):
        self.reader = reader

    def __len__(self):
        return len(self.reader)

    def __getitem__(self, row):
        return self.reader.read(row)[0], os.getpid()


def test_reader_pickles_as_path_and_reads_in_workers(tmp_path):
    import torch

    path = sample_store(tmp_path)[0]
    r = open_store(path)
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
    assert check_compatible(path, sample_meta()) == "missing"
    create_store(path, sample_meta(), [1, 2])
    assert check_compatible(path, sample_meta(dataset_spec="coco:moved.json")) == "partial"


@pytest.mark.parametrize("field,value", [
    ("teacher_sha256", "b" * 64), ("dataset_id", "e" * 64), ("skeleton", "mpii16"),
    ("input_wh", (64, 64)), ("padding", 1.0), ("flip_test", False), ("heatmap_shape", (K, 8, 6)),
    ("teacher_name", "other"),
])
def test_check_compatible_refuses_each_field(tmp_path, field, value):
    path = tmp_path / "c.h5"
    create_store(path, sample_meta(), [1, 2])
    with pytest.raises(UniError, match=f"{field}") as e:
        check_compatible(path, sample_meta(**{field: value}))
    assert str(path) in str(e.value)


def test_threshold_is_kept_used_and_checked_on_resume(tmp_path):
    path = tmp_path / "t.h5"
    maps = sample_maps(4)
    create_store(path, sample_meta(), np.arange(4), threshold=0.2)
    with StoreWriter(path) as w:
        w.write(np.arange(4), maps, sample_affines(4))
        w.finalize()
    r = open_store(path)
    assert r.attrs["threshold"] == pytest.approx(0.2)
    for row in range(4):
        got, _ = r.read(row)
        top = maps[row].max(axis=(1, 2), keepdims=True)
        assert (got[maps[row] < 0.2 * top] == 0).all()  # zeroed under 0.2 × peak, not 4/255
        assert (got[maps[row] >= 0.21 * top] > 0).all()
    assert check_compatible(path, sample_meta(), 0.2) == "complete"
    with pytest.raises(UniError, match="threshold 0.2, now 0.0156863"):
        check_compatible(path, sample_meta(), THRESHOLD)
    with pytest.raises(UniError, match="threshold"):
        create_store(tmp_path / "bad.h5", sample_meta(), [1], threshold=1.5)
