"""Checking a store (StoreReader.check), and recording that a check found it clean, so the next
start reads only what is new.

The record is ``<store>.verified``, JSON written atomically beside the store: the file's identity
(size, mtime_ns, inode, device) and the rows found clean (a packed mask of done rows). A trusting
check reads no recorded row again while the identity is unchanged, and every row once it has
changed — except through the store's own writer, which carries the record across its writes:
opening the store it clears the recorded identity (a kill then leaves a record that vouches for
nothing), and closing it cleanly it records the new identity with the rows it rewrote or reset
taken out and the rows it vouches for put in (`WriterRecord`). The writer vouches for a row it
wrote when it computed the row's row_crc from the scales and affine it wrote and checked the
heatmap chunk's fletcher32 against the chunk bytes it wrote (`chunk_checksum_ok`) — what a check's
read would find, short of the disk changing them since. Rows an earlier, killed run wrote are
vouched for by nobody and read by the next check. So a store written to the end by its writer
starts trusted, a resumed store is read only for the rows no writer vouched for, and any other
change to the file (a copy, a bit flipped by hand, another program) means a full read.

Every check, trusting or not, checks every done row's metadata (done value, row_crc, finite
scales and affines) — a vectorised pass — and HDF5 still checks each chunk's fletcher32 whenever
training reads it. A check writes the record only when no writer holds the store's lock and
the file did not change while it read; a read-only folder just means the next start reads again.
"""

from __future__ import annotations

import base64
import json
import os
import sys
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from uniskel.core.errors import UniError
from uniskel.core.files import atomic_write
from uniskel.stores.encode import row_crcs
from uniskel.stores.lock import held_by_live_writer
from uniskel.stores.schema import FORMAT_VERSION

RECORD_VERSION = 1


@dataclass
class StoreCheck:
    """What a check of a store found (StoreReader.check)."""

    problems: list[str]  # every problem, one line each
    damaged: dict[int, str]  # {row: problem} for the rows marked done among them
    rows_read: int = 0  # chunks read by this check (the rest were vouched for by the record)


def record_path(path: Path) -> Path:
    return Path(str(path) + ".verified")


def _identity(path: Path) -> list[int]:
    st = os.stat(path)
    return [st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev]


def _allocated(reader) -> np.ndarray:
    """(N,) bool: rows whose heatmap chunk exists in the file."""
    out = np.zeros(len(reader), bool)

    def seen(info) -> None:
        out[info.chunk_offset[0]] = True

    reader._hm.id.chunk_iter(seen)
    return out


def _pack(mask: np.ndarray) -> str:
    return base64.b64encode(np.packbits(mask).tobytes()).decode()


def _unpack(text: str, n: int) -> np.ndarray:
    return np.unpackbits(np.frombuffer(base64.b64decode(text), np.uint8), count=n).astype(bool)


def load_record(path: Path) -> dict | None:
    """The store's verification record, or None (absent, unreadable or of another version)."""
    try:
        rec = json.loads(record_path(path).read_text())
        return rec if rec.get("record_version") == RECORD_VERSION else None
    except (OSError, ValueError, AttributeError):
        return None


def _write_record(path: Path, rec: dict) -> None:
    """Atomically, through a temp file of this process's own (two checkers may race)."""
    target = record_path(path)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        atomic_write(target, lambda t: t.write_text(json.dumps(rec) + "\n"), tmp=tmp)
    except (OSError, UniError):  # cannot write: then no stale one may stay either
        try:
            record_path(path).unlink(missing_ok=True)
        except OSError:
            pass


def _new_record(path: Path, identity: list[int] | None, clean: np.ndarray,
                allocated: np.ndarray | None = None) -> dict:
    rec = {"record_version": RECORD_VERSION, "store": path.name, "rows": len(clean),
           "format_version": FORMAT_VERSION, "identity": identity, "verified": _pack(clean)}
    if allocated is not None:  # spares the next check HDF5's chunk index walk
        rec["allocated"] = _pack(allocated)
    return rec


_WEIGHTS = np.arange(1 << 18, 0, -1, dtype=np.float64)  # n .. 1 for a chunk of ≤ 2**18 words


def chunk_checksum_ok(chunk: bytes) -> bool:
    """Whether a heatmap chunk's trailing fletcher32 (HDF5's H5_checksum_fletcher32 of the bytes
    before it as big-endian 16-bit words, stored little-endian) matches those bytes, as HDF5's
    read compares it, modulo 65535 (the one ambiguity fletcher32 has: 0x0000 ≡ 0xffff)."""
    if len(chunk) < 4:
        return False
    body = memoryview(chunk)[:-4]
    even = len(body) & ~1
    w = np.frombuffer(body[:even], ">u2")
    n = len(w)
    if n <= len(_WEIGHTS):  # exact in float64: every sum stays below 2**53
        w = w.astype(np.float64)
        s1, s2 = int(w.sum()), int(w @ _WEIGHTS[len(_WEIGHTS) - n:])
    else:
        w = w.astype(np.int64)
        s1, s2 = int(w.sum()), int(w @ np.arange(n, 0, -1, dtype=np.int64))
    if len(body) & 1:  # an odd last byte counts as its word's high byte
        s1 += body[-1] << 8
        s2 += s1
    stored = int.from_bytes(chunk[-4:], "little")
    return s1 % 65535 == (stored & 0xFFFF) % 65535 and s2 % 65535 == (stored >> 16) % 65535


def chunk_checksums_ok(chunks: list[bytes]) -> np.ndarray:
    """chunk_checksum_ok of every chunk at once → (n,) bool: one pass over their joined words
    (the writer checks every batch it writes; per chunk in Python it cost a third of its time).
    A body of odd length is padded with a zero byte, which makes its last word byte << 8, as
    fletcher32 counts an odd last byte."""
    n = len(chunks)
    if n == 0:
        return np.zeros(0, bool)
    short = np.array([len(c) < 4 for c in chunks])
    bodies = [b"" if bad else (c[:-4] + b"\0" if len(c) & 1 else c[:-4])
              for c, bad in zip(chunks, short, strict=True)]
    words = np.array([len(b) // 2 for b in bodies], np.int64)  # (n,)
    w = np.frombuffer(b"".join(bodies), ">u2").astype(np.int64)  # every body's words
    starts = np.concatenate([[0], np.cumsum(words)[:-1]])
    local = np.arange(len(w), dtype=np.int64) - np.repeat(starts, words)  # i within its chunk
    nonempty = words > 0
    s1, iw = np.zeros(n, np.int64), np.zeros(n, np.int64)
    if nonempty.any():
        at = starts[nonempty]
        s1[nonempty] = np.add.reduceat(w, at)
        iw[nonempty] = np.add.reduceat(local * w, at)
    s2 = words * s1 - iw  # Σ w_i (n - i)
    stored = np.array([int.from_bytes(c[-4:], "little") if len(c) >= 4 else 0 for c in chunks],
                      np.int64)
    ok = (s1 % 65535 == (stored & 0xFFFF) % 65535) & (s2 % 65535 == (stored >> 16) % 65535)
    return ok & ~short


class WriterRecord:
    """The verification record as the store's writer carries it across its writes."""

    def __init__(self, path: Path):
        """Before the writer opens the file: keep the record's rows if it still matches the
        file, and clear its identity on disk until `close`."""
        self.path = path
        rec = load_record(path)
        self.rec = rec if rec is not None and rec.get("identity") == _identity(path) else None
        if rec is not None:
            rec["identity"] = None
            _write_record(path, rec)

    def close(self, touched: np.ndarray, vouched: np.ndarray) -> None:
        """After the writer closed the file cleanly (and it is still the file at the path): the
        record for the file as it is now — the recorded rows less those the writer wrote or
        reset (`touched` (N,) bool), plus those it vouches for (`vouched` (N,) bool, ⊆ touched:
        see the module docstring). None when it vouches for nothing and nothing was recorded."""
        rec = self.rec
        n = len(touched)
        kept = np.zeros(n, bool)
        if rec is not None and rec.get("rows") == n:
            try:
                kept = _unpack(rec["verified"], n)
            except (KeyError, ValueError, TypeError):
                rec = None
        clean = (kept & ~touched) | vouched
        if rec is None and not clean.any():
            return
        try:  # the chunks the record knew of, and any the writer may have added (a superset)
            allocated = _unpack(rec["allocated"], n) | touched
        except (KeyError, ValueError, TypeError):
            allocated = None
        _write_record(self.path, _new_record(self.path, _identity(self.path), clean, allocated))


def record_new_store(path: Path, n: int) -> None:
    """The record of a store just created (no row done, no chunk): its writer carries it on, so
    the first check after it neither reads a row it vouched for nor walks the chunk index."""
    none = np.zeros(n, bool)
    _write_record(path, _new_record(path, _identity(path), none, none))


def move_record(src: Path, dst: Path) -> None:
    """After the store at `src` was renamed to `dst` (identity unchanged): its record goes with
    it, and whatever record `dst` had (of the file it replaced) goes."""
    rec = load_record(src)
    record_path(dst).unlink(missing_ok=True)
    if rec is not None:
        rec["store"] = dst.name
        _write_record(dst, rec)
    record_path(src).unlink(missing_ok=True)


def _covered(reader, rec: dict | None, identity: list[int]) -> np.ndarray:
    """(N,) bool: the done rows this record still vouches for."""
    n = len(reader)
    if rec is None or rec.get("rows") != n or rec.get("identity") != identity:
        return np.zeros(n, bool)
    try:
        return _unpack(rec["verified"], n) & reader.done
    except (KeyError, ValueError, TypeError):
        return np.zeros(n, bool)


def missing_instances(instance_ids, store_ids: np.ndarray, done: np.ndarray,
                      skipped: Collection[int]) -> list[int]:
    """Those of `instance_ids` neither done (a row whose done is 1) nor skipped, in
    order: what a complete store may not lack. store_ids: the store's instance_ids (row r holds
    store_ids[r]). Vectorised: a COCO-size store costs no Python object per row."""
    ids = np.asarray(instance_ids, dtype=np.int64).reshape(-1)
    store_ids = np.asarray(store_ids, dtype=np.int64).reshape(-1)
    ok = np.zeros(len(ids), bool)
    if len(store_ids):
        order = np.argsort(store_ids, kind="stable")
        rows = order[np.minimum(np.searchsorted(store_ids[order], ids), len(order) - 1)]
        ok = (store_ids[rows] == ids) & np.asarray(done, bool)[rows]
    gone = ids[~ok]
    if len(gone) and len(skipped):
        gone = gone[~np.isin(gone, np.fromiter(map(int, skipped), np.int64, len(skipped)))]
    return gone.tolist()


def meta_problems(reader) -> dict[int, str]:
    """{row: problem} from the row metadata alone, for the rows marked done: done value,
    row_crc, scales finite and ≥ 0, affine finite. Vectorised; every check runs it."""
    done, out = reader.done, {}
    s, a = reader._scales, reader._affines
    bad_s = done & ~(np.isfinite(s) & (s >= 0)).all(axis=1)
    bad_a = done & ~np.isfinite(a).all(axis=(1, 2))
    bad_crc = np.zeros(len(done), bool)
    rows = np.flatnonzero(done)
    want = row_crcs(s[rows], a[rows], reader.instance_ids[rows], reader.done_raw[rows])
    bad_crc[rows[want != reader._crc[rows]]] = True
    for mask, text in ((bad_a, "affine not finite"), (bad_s, "scales not finite and ≥ 0"),
                       (bad_crc, "row metadata (scales, affine, done) fails its row_crc")):
        out.update((int(r), text) for r in np.flatnonzero(mask))
    for r in np.flatnonzero(reader.done_raw > 1):
        out[int(r)] = f"done is {reader.done_raw[r]}, not 0 or 1 (damaged row metadata)"
    return out


def _scan_row(reader, row: int, allocated: bool) -> str | None:
    """What reading one row's chunk finds wrong, or None."""
    if not allocated:
        return "marked done but has no data" if reader.done[row] else None
    try:
        out = reader._read_chunk(row)
    except OSError:
        return "heatmap chunk fails its checksum"
    if not reader.done[row]:
        return None
    s = reader._scales[row]
    peak = out[0].reshape(reader.meta.heatmap_shape[0], -1).max(-1)
    wrong = np.flatnonzero((s > 0) != (peak == 255))
    if len(wrong):
        return (f"keypoint {wrong[0]} peak {peak[wrong[0]]} does not match its scale "
                f"{s[wrong[0]]}")
    return None


def check_store(reader, progress: bool = False, trust: bool = True) -> StoreCheck:
    """StoreReader.check: see the module docstring."""
    reader._open()
    path = reader.path
    before = _identity(path)
    rec = load_record(path) if trust else None
    covered = _covered(reader, rec, before)
    try:  # the file is as recorded: so is its chunk index
        allocated = _unpack(rec["allocated"], len(reader)) if covered.any() else None
    except (KeyError, ValueError, TypeError):
        allocated = None
    allocated = _allocated(reader) if allocated is None else allocated
    found = meta_problems(reader)
    to_read = np.flatnonzero((allocated | reader.done) & ~covered)
    for row in tqdm(to_read, desc=f"verify {path.name}", unit="inst", disable=not progress,
                    file=sys.stderr, delay=1.0):  # quiet when quick
        problem = _scan_row(reader, int(row), bool(allocated[row]))
        if problem:
            found.setdefault(int(row), problem)  # a metadata problem is the cause of the rest
    out = StoreCheck([], {}, len(to_read))
    for row in sorted(found):
        out.problems.append(f"instance {int(reader.instance_ids[row])} (row {row}): "
                            f"{found[row]}")
        if reader.done[row]:
            out.damaged[row] = out.problems[-1]
    if reader.complete:
        missing = missing_instances(reader.instance_ids, reader.instance_ids, reader.done,
                                    reader.skipped)
        if missing:
            out.problems.append(f"marked complete but {len(missing)} instances neither done "
                                f"nor skipped (first: instance {missing[0]})")
    if len(to_read) or rec is None or rec.get("identity") != before:
        clean = reader.done.copy()
        clean[list(found)] = False
        # Never beside a writer at work, nor for a file that changed while it was read.
        if not held_by_live_writer(path) and _identity(path) == before:
            _write_record(path, _new_record(path, before, clean, allocated))
    return out
