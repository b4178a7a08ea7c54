"""Checking a store: damaged chunks and row metadata named by reads and checks, the record of a
clean check (stores/verify.py), and `uni inspect-store`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner
from store_helpers import (
    H,
    K,
    W,
    corrupt_chunk,
    sample_affines,
    sample_maps,
    sample_meta,
    sample_store,
)

from uniskel.cli import uni
from uniskel.core.errors import UniError
from uniskel.stores import verify
from uniskel.stores.create import create_store, replace_store
from uniskel.stores.encode import CODEC, THRESHOLD, encode_rows
from uniskel.stores.lock import release_lock, take_lock
from uniskel.stores.reader import open_store
from uniskel.stores.verify import chunk_checksum_ok, chunk_checksums_ok, record_path
from uniskel.stores.writer import StoreWriter, write_store

# --------------------------------------------------------------------------- damaged chunks


def test_corrupt_chunk_named_by_verify_and_read(tmp_path):
    path, ids, _, _ = sample_store(tmp_path)
    assert open_store(path).verify() == []
    corrupt_chunk(path, 7)
    r = open_store(path)
    problems = r.verify()
    assert len(problems) == 1 and f"instance {ids[7]}" in problems[0]
    with pytest.raises(UniError, match=f"instance {ids[7]}"):
        r.read(7)
    r.read(6)  # its neighbours are fine


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
    ids, maps = np.arange(8) + 10, sample_maps(8, seed=7)
    maps[2, 3] = 0.0  # scale 0.0: four zero bytes in row 2's scales
    path = tmp_path / "s.h5"
    create_store(path, sample_meta(), ids)
    with StoreWriter(path) as w:
        w.write(np.arange(5), maps[:5], sample_affines(5))
    _poke(path, _chunk_word(path, "scales", (2 * K + 3) * 4), b"\xff\xff")  # scale ≈ 1e-40
    with h5py.File(path) as f:
        assert 0 < f["scales"][2, 3] < 1e-30  # fletcher32 passed it
    _poke(path, _chunk_word(path, "done", 6), b"\xff\xff")  # rows 6 and 7 (not done)
    with h5py.File(path) as f:
        np.testing.assert_array_equal(f["done"][:], [1, 1, 1, 1, 1, 0, 255, 255])
    r = open_store(path)
    with pytest.raises(UniError, match=f"instance {ids[2]} \\(row 2\\) fails its row_crc"):
        r.read(2)
    r.read(1)
    for trust in (True, False):
        found = r.check(trust=trust)
        assert sorted(found.damaged) == [2, 6, 7], found.problems
        assert "row_crc" in found.damaged[2] and "done is 255" in found.damaged[7]
    r.close()
    with StoreWriter(path) as w:
        assert w.rows_reset == 3
    assert np.flatnonzero(open_store(path).done).tolist() == [0, 1, 3, 4]






def test_a_clean_check_is_recorded_and_trusted_until_the_file_changes(tmp_path):
    path = tmp_path / "v.h5"
    ids, maps, aff = np.arange(10) + 1, sample_maps(10, seed=9), sample_affines(10)
    create_store(path, sample_meta(), ids)
    with StoreWriter(path) as w:
        w.write(np.arange(6), maps[:6], aff[:6])
    record = Path(str(path) + ".verified")
    record.unlink()  # as a store from elsewhere comes: no record
    r = open_store(path)
    first = r.check()
    assert first.problems == [] and first.rows_read == 6 and record.is_file()
    assert r.check().rows_read == 0  # trusted: nothing read again
    assert r.check(trust=False).rows_read == 6  # inspect-store --verify reads everything
    r.close()
    # A resume by the store's writer: the record carried over, its new rows vouched for.
    with StoreWriter(path) as w:
        w.write(np.arange(6, 10), maps[6:], aff[6:])
        w.finalize()
    r = open_store(path)
    assert r.check().rows_read == 0 and r.check(trust=False).rows_read == 10
    r.close()
    # Any other change (here a chunk damaged in place): everything is read again.
    corrupt_chunk(path, 3)
    r = open_store(path)
    found = r.check()
    assert found.rows_read == 10 and list(found.damaged) == [3]
    assert r.check().rows_read == 1  # the damaged row is never vouched for
    r.close()


def test_no_record_beside_a_writer_and_none_from_a_killed_one(tmp_path):
    path = tmp_path / "v.h5"
    ids, maps, aff = np.arange(4), sample_maps(4), sample_affines(4)
    write_store(path, sample_meta(), ids, maps, aff)
    record = Path(str(path) + ".verified")
    record.unlink()
    lock = take_lock(path)  # as a writer at work holds it
    assert open_store(path).check().rows_read == 4 and not record.exists()
    release_lock(lock)
    r = open_store(path)
    r.check()
    assert json.loads(record.read_text())["identity"] is not None
    r.close()
    w = StoreWriter(path)  # opening clears the identity: killed now, the record vouches
    assert json.loads(record.read_text())["identity"] is None  # for nothing
    w.close()
    assert open_store(path).check().rows_read == 0  # closed cleanly: carried over


_KILLED_WRITER = """
import os, signal, sys
import numpy as np
sys.path.insert(0, sys.argv[2])
from store_helpers import sample_affines, sample_maps
from uniskel.stores.writer import StoreWriter
w = StoreWriter(sys.argv[1])
w.write(np.arange(4), sample_maps(10, seed=9)[:4], sample_affines(4))
os.kill(os.getpid(), signal.SIGKILL)
"""


def _counting_reads(monkeypatch) -> list[int]:
    """The rows a check reads (stores/verify.py's _scan_row), recorded as it reads them, and -1
    for each walk of the chunk index."""
    seen, scan, walk = [], verify._scan_row, verify._allocated
    monkeypatch.setattr(verify, "_scan_row", lambda r, row, a: seen.append(row) or scan(r, row, a))
    monkeypatch.setattr(verify, "_allocated", lambda r: seen.append(-1) or walk(r))
    return seen


def test_a_store_written_to_the_end_starts_trusted(tmp_path, monkeypatch):
    """Written to the end by its own writer (batches, then finalize), a store's first check
    reads no row; `--verify` still reads every row and finds damage the record cannot see."""
    path = tmp_path / "t.h5"
    ids, maps, aff = np.arange(20) + 3, sample_maps(20, seed=4), sample_affines(20)
    create_store(path, sample_meta(), ids)
    with StoreWriter(path) as w:
        for start in range(0, 20, 8):
            w.write(np.arange(start, min(start + 8, 20)), maps[start:start + 8],
                    aff[start:start + 8])
        w.finalize()
    reads = _counting_reads(monkeypatch)
    found = open_store(path).check()
    assert found.problems == [] and found.rows_read == 0 and reads == []
    assert open_store(path).check(trust=False).rows_read == 20 and reads == [-1, *range(20)]
    st = path.stat()  # bit rot: the bytes change, the size and mtime do not
    corrupt_chunk(path, 11)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert open_store(path).check().problems == []  # what trust means: the record vouches
    res = CliRunner().invoke(uni, ["inspect-store", str(path), "--verify"])
    assert res.exit_code == 1 and f"instance {ids[11]} (row 11)" in res.output, res.output


def test_the_writer_vouches_only_for_rows_it_checked(tmp_path, monkeypatch):
    """Rows a killed writer wrote, and a row whose chunk came with a wrong checksum, are vouched
    for by nobody: the next check reads exactly those rows (and names the bad one)."""
    path = tmp_path / "k.h5"
    ids, maps, aff = np.arange(10) + 3, sample_maps(10, seed=9), sample_affines(10)
    create_store(path, sample_meta(), ids)
    killed = subprocess.run([sys.executable, "-c", _KILLED_WRITER, str(path),
                             str(Path(__file__).parent)], capture_output=True, text=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    enc = encode_rows(maps[4:], THRESHOLD, CODEC)
    bad = bytearray(enc.chunks[2])  # row 6: one payload byte changed after its checksum
    bad[len(bad) // 2] ^= 0x10
    enc.chunks[2] = bytes(bad)
    assert not chunk_checksum_ok(enc.chunks[2]) and chunk_checksum_ok(enc.chunks[3])
    with StoreWriter(path) as w:
        w.write_encoded(np.arange(4, 10), enc, aff[4:])
        w.finalize()
    reads = _counting_reads(monkeypatch)
    found = open_store(path).check()
    assert sorted(reads) == [-1, 0, 1, 2, 3, 6] and found.rows_read == 5  # and the index
    assert list(found.damaged) == [6] and "checksum" in found.damaged[6]


def test_a_rebuild_renamed_into_place_brings_its_record(tmp_path):
    """replace_store (a --overwrite rebuild's last step): the old store's record goes, the
    rebuild's comes along, so the rebuilt store starts trusted too."""
    path, ids, maps, aff = sample_store(tmp_path)
    open_store(path).check(trust=False)
    old = json.loads(record_path(path).read_text())
    work = path.with_name(path.name + ".tmp")
    create_store(work, sample_meta(), ids)
    with StoreWriter(work) as w:
        w.write(np.arange(len(ids)), maps[::-1], aff)
        w.finalize()
    replace_store(work, path)
    rec = json.loads(record_path(path).read_text())
    assert rec["identity"] != old["identity"] and rec["store"] == path.name
    assert not record_path(work).exists() and not work.exists()
    r = open_store(path)
    assert r.check().rows_read == 0 and r.check(trust=False).problems == []
    got = r.read(0)[0].reshape(K, -1).argmax(-1)  # the rebuild's rows, not the old ones
    np.testing.assert_array_equal(got, maps[-1].reshape(K, -1).argmax(-1))


@pytest.mark.parametrize("codec", ["zstd-1", "gzip-4", "blosc-lz4"])
def test_chunk_checksum_as_hdf5_computes_it(codec):
    """chunk_checksum_ok agrees with the fletcher32 HDF5 wrote, for chunks of odd and even
    length, and sees a changed byte."""
    chunks = encode_rows(sample_maps(16, seed=1), THRESHOLD, codec).chunks
    assert {len(c) % 2 for c in chunks} == {0, 1}
    assert all(chunk_checksum_ok(c) for c in chunks)
    changed = []
    for c in chunks[:4]:
        for at in (0, len(c) // 3, len(c) - 5):
            b = bytearray(c)
            b[at] ^= 0x01
            assert not chunk_checksum_ok(bytes(b))
            changed.append(bytes(b))
    # The writer's batched form (one pass over a batch's chunks) says the same of each chunk.
    mixed = [x for pair in zip(chunks[:12], changed, strict=True) for x in pair] + [b"", b"ab"]
    assert chunk_checksums_ok(mixed).tolist() == [chunk_checksum_ok(c) for c in mixed]


# --------------------------------------------------------------------------- CLI


def test_inspect_store_cli(tmp_path):
    path, ids, maps, _ = sample_store(tmp_path)
    runner = CliRunner()
    res = runner.invoke(uni, ["inspect-store", str(path), "--json", "--verify"])
    assert res.exit_code == 0, res.output
    s = json.loads(res.stdout)
    assert s["instances"] == s["done"] == len(ids) and s["complete"] and s["problems"] == []
    assert s["heatmap_shape"] == [K, H, W] and s["teacher_sha256"] == "a" * 64
    assert s["raw_fp16_bytes"] == 2 * maps[0].size * len(ids) and s["codec"] == CODEC
    assert s["compression_ratio_fp16"] == pytest.approx(s["raw_fp16_bytes"] / path.stat().st_size)
    # Issue 16: attributes holding JSON come out as JSON values, no JSON inside strings.
    a = s["attrs"]
    assert a["heatmap_shape"] == [K, H, W] and a["skipped"] == {} and a["complete"] == 1
    assert isinstance(a["teacher_metadata"], dict) and isinstance(a["skeleton_def"], dict)
    assert not [k for k, v in a.items() if isinstance(v, str) and v[:1] in ("[", "{")]
    res = runner.invoke(uni, ["inspect-store", str(path)])
    assert res.exit_code == 0 and "complete" in res.output and "x smaller" in res.output
    corrupt_chunk(path, 2)
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
    meta = sample_meta(dataset_id=ds.dataset_id, dataset_spec=spec)
    path = tmp_path / "real.h5"
    write_store(path, meta, ids, sample_maps(3), sample_affines(3))
    res = CliRunner().invoke(uni, ["inspect-store", str(path), "--draw", "2", "--out",
                                   str(tmp_path / "draw")])
    assert res.exit_code == 0, res.output
    pngs = sorted((tmp_path / "draw").glob("*.png"))
    assert len(pngs) == 2
    img = cv2.imread(str(pngs[0]))
    assert img.shape == (64, 48, 3)
    # Over a real crop, not just the colour map: the same store without the dataset differs.
    write_store(tmp_path / "alone.h5", sample_meta(dataset_spec="coco:/nowhere.json"), ids,
                   sample_maps(3), sample_affines(3))
    res = CliRunner().invoke(uni, ["inspect-store", str(tmp_path / "alone.h5"), "--draw", "1",
                                   "--out", str(tmp_path / "alone")])
    assert res.exit_code == 0, res.output
    alone = cv2.imread(str(next((tmp_path / "alone").glob("*.png"))))
    assert np.abs(alone.astype(int) - img).mean() > 5
