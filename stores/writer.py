"""Writing a soft-label store (format: stores/schema.py; created by stores/create.py):
lock it, write rows crash-safely, mend what a kill tore, finalize.

Kill safety: a batch writes its heatmap chunks, scales, affines and row_crc, flushes, then sets
done and flushes again, so after a SIGKILL done ⊆ rows really written. One writer at a time:
StoreWriter holds ``<store>.lock`` (stores/lock.py). The file uses HDF5's default (earliest)
format: the "latest" format marks files open for writing in the superblock, and a killed writer
leaves a file HDF5 then refuses to open. Linux ends a write at a page boundary when SIGKILL
arrives, and each batch rewrites a scales / affines / done / row_crc chunk (up to create.META_CHUNK
rows), so a kill can leave one failing its checksum: the next writer resets that chunk's rows,
and any done row whose row_crc fails (they are computed again), so a resumed store still ends
equal to an uninterrupted one.

Finished rows survive a failed write (a disk filled by someone else, a quota, a file size
limit), by two rules:
1. Room first. Before each batch the writer reserves, with posix_fallocate on the store itself,
   more than the batch can take (twice its chunk bytes, a chunk of each small dataset and
   RESERVE_SLACK for HDF5's own metadata); every byte HDF5 then writes lands in space already
   allocated, so it cannot fail for room. When the reservation fails nothing of the batch was
   written: a one-line UniError, the store closed cleanly, resumable. (Checked after every
   batch: HDF5's end of file never passed the reservation in the tests.)
2. Nothing after a failure. Should an HDF5 write fail anyway (an I/O error, a file system that
   does not honour fallocate), HDF5 has only written what the last flush committed plus data in
   unreferenced space — its metadata cache holds every change until the flush (evictions off) —
   and the writer at once points HDF5's file descriptor at an anonymous in-memory file, so no
   later flush (close, interpreter exit) can write half a batch's metadata: the file on disk
   stays as of the last batch, and the next run resumes it (StoreWriteFailed; exit 2).
Disk almost full: a write also stops cleanly while MIN_FREE_BYTES are still free.
The kill tests' log is in BENCHMARKS.md "Design measurements (earlier runs)".

Should the file be replaced or removed at its path while a writer writes it, its next batch and
its finish fail in one line, never reporting rows the store at the path lacks. Closing cleanly,
it records the rows it vouches for: a store it wrote to the end starts trusted (stores/verify.py).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import fields
from pathlib import Path

import h5py
import numpy as np

from uniskel.core.errors import UniError
from uniskel.core.killpoints import kill_point
from uniskel.stores.create import create_store, now, write_failed
from uniskel.stores.encode import (
    EncodedRows,
    encode_rows,
    filter_pipeline,
    row_crcs,
    twin_filters,
)
from uniskel.stores.lock import release_lock, take_lock
from uniskel.stores.schema import STORE_ATTRS, StoreMeta, check_file, check_layout, open_h5
from uniskel.stores.verify import WriterRecord, chunk_checksums_ok, missing_instances
from uniskel.stores.write_guard import WRITE_ERRORS, WriteGuard

log = logging.getLogger(__name__)

# A writer stops cleanly while this much disk is still free (plus the batch itself).
MIN_FREE_BYTES = 64 << 20
RESERVE_SLACK = 1 << 20  # bytes reserved per batch for HDF5's metadata (index nodes, headers)
# HDF5's metadata cache evicts nothing while a writer writes (rule 2), so it would keep every
# node of the heatmaps' chunk index it ever touched: ~450 B of RSS per row written, 65 MB at
# 150k rows. Once it holds more than this (HDF5's count of the entries' bytes on disk), the
# writer closes the file after a batch, its cache clean, and opens it again, which empties it.
MDC_REOPEN_BYTES = 1 << 20


def _text(v) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _write_runs(ds: h5py.Dataset, runs: list[tuple[int, int]], data: np.ndarray) -> None:
    """data (n, ...) into the rows of `runs` ((first row, length), ascending, n rows in all),
    in one HDF5 write; h5py's indexing costs ~10× more per call than the write itself."""
    fspace, tail = ds.id.get_space(), ds.shape[1:]
    for i, (start, length) in enumerate(runs):
        fspace.select_hyperslab((start, *(0,) * len(tail)), (length, *tail),
                                op=h5py.h5s.SELECT_OR if i else h5py.h5s.SELECT_SET)
    ds.id.write(h5py.h5s.create_simple(data.shape), fspace,
                np.ascontiguousarray(data, dtype=ds.dtype))


def _runs(rows: np.ndarray) -> list[tuple[int, int]]:
    """(first row, length) of each run of consecutive rows; rows ascending."""
    cut = np.flatnonzero(np.diff(rows) != 1) + 1
    return [(int(r[0]), len(r)) for r in np.split(rows, cut)]


class StoreWriter:
    """The single writer of a store (a context manager); holds ``<store>.lock`` while open.
    Opening it resets the rows of chunks a killed writer tore and of done rows whose row_crc
    fails (`rows_reset` says how many)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        check_file(self.path)
        self._lock = take_lock(self.path)
        self._guard = None
        self._record = None
        # An attribute set, or rows written or reset (_touched): a writer that changed nothing
        # (a resume's repair that found nothing torn) leaves the file as it was.
        self._attrs_set = False
        try:
            self._record = WriterRecord(self.path)  # before the file changes
            self._f = f = open_h5(self.path, "r+")
            self.meta = check_layout(f, str(self.path))
            k = self.meta.heatmap_shape[0]  # a chunk of each small dataset, checksums too:
            small = f["done"].chunks[0] * (4 * k + 48 + 1 + 4) + 16
            self._guard = WriteGuard(self.path, f, small)
        except BaseException:
            self.close()
            raise
        self._hm, self._done = f["heatmaps"], f["done"]
        self._scales, self._affines = f["scales"], f["affines"]
        self._ids = f["instance_ids"][:]
        self._touched = np.zeros(len(self._ids), bool)  # rows written or reset: not verified
        self._vouched = np.zeros(len(self._ids), bool)  # ⊆ _touched: see stores/verify.py
        self._lost = False  # the file was replaced or removed at its path (said once)
        self.threshold = float(f.attrs["threshold"])
        self.codec = _text(f.attrs["codec"])
        self._filters_checked = False
        try:
            self.rows_reset = self._mend()
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> StoreWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ----------------------------------------------------------------------- mending

    def _mend(self) -> int:
        """Reset torn chunks' rows and done rows whose row_crc fails. Returns how many rows it
        reset; they are computed again."""
        f, n, c, k = self._f, len(self._ids), self._done.chunks[0], self.meta.heatmap_shape[0]
        self._crc = f["row_crc"]
        torn = []
        for start in range(0, n, c):
            try:
                for d in (self._done, self._scales, self._affines, self._crc):
                    d[start:start + c]
            except OSError:  # checksum or decode failure
                torn.append(slice(start, min(start + c, n)))
        if torn:
            self._guard.reserve(RESERVE_SLACK + 4 * n)
        reset = np.zeros(n, bool)
        with self._guard.writing():
            for sl in torn:  # whole chunks, in their stored dtypes: HDF5 replaces them
                m = sl.stop - sl.start  # without reading the torn ones
                self._scales[sl] = np.zeros((m, k), np.float32)
                self._affines[sl] = np.zeros((m, 2, 3))
                self._done[sl] = np.zeros(m, np.uint8)
                self._crc[sl] = np.zeros(m, np.uint32)
                reset[sl] = True
            done, crc = self._done[:], self._crc[:]
            rows = np.flatnonzero(done)
            crcs = row_crcs(self._scales[:][rows], self._affines[:][rows], self._ids[rows],
                            done[rows])
            bad = rows[(done[rows] > 1) | (crcs != crc[rows])]
            if len(bad):
                if not torn:
                    self._guard.reserve(RESERVE_SLACK)
                done[bad] = 0
                self._done[:] = done
                reset[bad] = True
            if len(bad) or torn:
                f.flush()
        self._is_done = done == 1  # (N,) bool, kept in step with the file
        self._touched |= reset
        if reset.any():
            log.warning("%s: %d rows torn by an interrupted write will be computed again",
                        self.path, int(reset.sum()))
        return int(reset.sum())

    # ----------------------------------------------------------------------- writing

    def write(self, rows: np.ndarray, heatmaps: np.ndarray, affines: np.ndarray) -> None:
        """rows (n,) int, heatmaps (n, K, H, W) float ≥ 0, affines (n, 2, 3) image → grid.
        Encodes here (encode_rows), then write_encoded."""
        rows = np.asarray(rows, np.int64).reshape(-1)
        heatmaps = np.asarray(heatmaps)
        n = len(rows)
        if heatmaps.shape != (n, *self.meta.heatmap_shape):
            raise UniError(f"{self.path}: write of {n} rows got heatmaps {heatmaps.shape}, "
                           f"expected (n, {self.meta.heatmap_shape})")
        self._check_rows(rows)
        bad = np.flatnonzero(~np.isfinite(heatmaps).all(axis=(1, 2, 3)))
        if len(bad):
            raise UniError(f"{self.path}: instance {self._ids[rows[bad[0]]]}: heatmaps or "
                           "affine not finite")
        self.write_encoded(rows, encode_rows(heatmaps, self.threshold, self.codec), affines)

    def write_encoded(self, rows: np.ndarray, encoded: EncodedRows, affines: np.ndarray
                      ) -> None:
        """rows (n,) int, their finished chunks and scales (encode_rows), affines (n, 2, 3)
        image → grid. The chunks go to disk as they are (write_direct_chunk): the writer only
        writes. Order: room reserved; chunks, scales, affines, row_crc; flush; done; flush."""
        rows = np.asarray(rows, np.int64).reshape(-1)
        affines = np.asarray(affines, np.float64)
        self._check_encoded(rows, encoded, affines)
        n = len(rows)
        if n == 0:
            return
        self._guard.refuse_if_stopped()
        self.check_still_here()
        chunk_bytes = sum(map(len, encoded.chunks))
        self._check_space(chunk_bytes)
        order = np.argsort(rows)
        rows, affines = rows[order], affines[order]
        scales = np.asarray(encoded.scales, np.float32)[order]
        masks = np.asarray(encoded.filter_masks, np.uint32)[order]
        crcs = row_crcs(scales, affines, self._ids[rows], np.ones(n, np.uint8))
        # Vouched for once done: row_crc computed here, the chunk's checksum matches its bytes.
        sound = (masks == 0) & chunk_checksums_ok([encoded.chunks[i] for i in order])
        runs = _runs(rows)
        reserved_to = self._guard.reserve(2 * chunk_bytes + RESERVE_SLACK)
        self._touched[rows] = True
        with self._guard.writing():
            again = rows[self._is_done[rows]]
            if len(again):  # rewritten rows are not done until their new data is flushed:
                _write_runs(self._done, _runs(again), np.zeros(len(again), np.uint8))
                self._f.flush()  # their old chunks' space may be reused in this batch
                self._is_done[again] = False
            write_chunk = self._hm.id.write_direct_chunk
            for j, r in enumerate(rows):  # ascending; order[j]: its place in `encoded`
                write_chunk((int(r), 0, 0, 0), encoded.chunks[order[j]], int(masks[j]))
                if j == 0:
                    kill_point("store-chunk")  # test hook: a failure here lands mid-batch
            _write_runs(self._scales, runs, scales)
            _write_runs(self._affines, runs, affines)
            _write_runs(self._crc, runs, crcs)
            self._f.flush()  # data on disk before it is marked done
        self._guard.check_reserved(reserved_to)
        reserved_to = self._guard.reserve(RESERVE_SLACK)  # should the flush have trimmed it
        with self._guard.writing():
            _write_runs(self._done, runs, np.ones(n, np.uint8))
            self._f.flush()
        self._is_done[rows] = True
        self._vouched[rows] = sound
        self._guard.check_reserved(reserved_to)
        if self._f.id.get_mdc_size()[2] > MDC_REOPEN_BYTES:
            self._empty_metadata_cache()

    def _empty_metadata_cache(self) -> None:
        """Close and open the file again (between batches: everything flushed), on the same
        file and with the same cache settings (rule 2's)."""
        self.check_still_here()
        cfg = self._f.id.get_mdc_config()
        with self._guard.writing():
            self._f.close()
        self._f = f = open_h5(self.path, "r+")
        self._guard.f = f
        if not os.path.samestat(os.fstat(f.id.get_vfd_handle()), self._guard.file):
            f.close()  # another process's file, left unchanged
            self.check_still_here(replaced=True)
        f.id.set_mdc_config(cfg)
        self._hm, self._done, self._crc = f["heatmaps"], f["done"], f["row_crc"]
        self._scales, self._affines = f["scales"], f["affines"]

    def check_still_here(self, replaced: bool = False) -> None:
        """UniError when the file this writer writes is no longer the one at its path
        (replaced or removed by another process): what it wrote is not in the store there."""
        if replaced or self._guard.replaced():
            self._lost = True
            raise UniError(f"{self.path}: was replaced or removed by another process while this "
                           "one wrote it; the rows written here are not in the store at that "
                           "path: run again when no other process writes it")

    def _check_rows(self, rows: np.ndarray) -> None:
        if len(rows) and (rows.min() < 0 or rows.max() >= len(self._ids)
                          or len(np.unique(rows)) != len(rows)):
            raise UniError(f"{self.path}: write rows out of range or repeated")

    def _check_encoded(self, rows: np.ndarray, enc: EncodedRows, affines: np.ndarray) -> None:
        """UniError unless `enc` was encoded for this store and matches rows and affines; the
        filter pipeline is compared once per writer."""
        shape = tuple(self.meta.heatmap_shape)
        problem = enc.mismatch(len(rows), shape, self.codec, self.threshold)
        if problem is None and affines.shape != (len(rows), 2, 3):
            problem = f"affines of shape {affines.shape} for {len(rows)} rows"
        if problem:
            raise UniError(f"{self.path}: {problem}")
        self._check_rows(rows)
        bad = ~np.isfinite(affines).all(axis=(1, 2)) | ~(np.isfinite(enc.scales)
                                                         & (enc.scales >= 0)).all(axis=1)
        if bad.any():
            raise UniError(f"{self.path}: instance {self._ids[rows[bad][0]]}: heatmaps or "
                           "affine not finite")
        if not self._filters_checked:
            if filter_pipeline(self._hm) != twin_filters(shape, self.codec):
                raise UniError(f"{self.path}: the heatmaps' filters {filter_pipeline(self._hm)}"
                               f" are not codec {self.codec!r}'s")
            self._filters_checked = True

    def _check_space(self, chunk_bytes: int) -> None:
        """Stop, store intact, before the disk fills up (see MIN_FREE_BYTES)."""
        need = MIN_FREE_BYTES + 2 * chunk_bytes
        free = shutil.disk_usage(self.path.parent).free
        if free < need:
            raise UniError(f"{self.path}: disk full ({free / 1e6:.0f} MB free, {need / 1e6:.0f}"
                           " MB needed to write safely); the store is intact: free some space "
                           "and run again to resume")

    def set_attr(self, name: str, value: str | int | float) -> None:
        """Set one store attribute of the writer's own (e.g. which providers computed it),
        flushed at once; the attributes of the format and the store's identity are refused."""
        if name in STORE_ATTRS or name in {f.name for f in fields(StoreMeta)}:
            raise UniError(f"{self.path}: attribute {name!r} belongs to the store format")
        self._guard.refuse_if_stopped()
        self.check_still_here()
        self._guard.reserve(RESERVE_SLACK + len(str(value)))
        with self._guard.writing():
            self._attrs_set = True
            self._f.attrs[name] = value
            self._f.flush()

    # ----------------------------------------------------------------------- finishing

    def finalize(self, skipped: dict[int, str] | None = None) -> bool:
        """End a pass in which every row was done or skipped ({instance id: reason}): record
        the skipped and mark the store complete when none was; whether it is complete. Skipped
        rows stay not done, so the next run retries them (the image may be mended by then);
        readers take a row that is done or listed as skipped as covered."""
        self.check_still_here()
        skipped = {int(k): str(v) for k, v in (skipped or {}).items()}
        done = self._done[:].astype(bool)
        asked = np.fromiter(skipped, np.int64, len(skipped))
        order = np.argsort(self._ids)  # arrays, not a dict per row: stage one stays small
        at = order[np.minimum(np.searchsorted(self._ids[order], asked), len(order) - 1)]
        unknown = asked[self._ids[at] != asked]
        if len(unknown):
            raise UniError(f"{self.path}: skipped instance {unknown[0]} is not in the store")
        skipped = {i: r for (i, r), row in zip(skipped.items(), at, strict=True) if not done[row]}
        missing = missing_instances(self._ids, self._ids, done, skipped)
        if missing:
            raise UniError(f"{self.path}: cannot finalize, {len(missing)} instances neither "
                           f"written nor skipped (first: {missing[0]})")
        self._guard.reserve(RESERVE_SLACK + len(json.dumps(skipped)))
        with self._guard.writing():
            self._attrs_set = True
            a = self._f.attrs
            a["skipped"] = json.dumps({str(k): v for k, v in sorted(skipped.items())})
            kill_point("store-finalize")
            if not skipped:
                a["complete"] = 1
                a["completed"] = a["updated"] = now()
            self._f.flush()
        return not skipped

    def reopen(self) -> None:
        """Mark a complete store partial again, e.g. one finished with skipped rows by a uni
        that did not retry them; its skipped list stays until a pass replaces it."""
        self._guard.refuse_if_stopped()
        self.check_still_here()
        self._guard.reserve(RESERVE_SLACK)
        with self._guard.writing():
            self._attrs_set = True
            a = self._f.attrs
            a["complete"], a["completed"], a["updated"] = 0, "", now()
            self._f.flush()

    def close(self) -> None:
        """Flush and close (a cut-off handle closes onto nothing), trim the reservation's
        unused tail, carry the verification record over, release the lock. UniError when the
        file was replaced or removed at its path meanwhile (unless a write already said so)."""
        f, guard = getattr(self, "_f", None), self._guard
        try:
            end = None
            try:
                if f is not None and f.id.valid:
                    end = self._close_file(f)
            finally:
                if guard is not None:
                    guard.close(end)  # None after a failure: no trimming
            if guard is not None and not guard.failed and hasattr(self, "_touched"):
                said, self._lost = self._lost, False
                try:
                    self.check_still_here()
                except UniError:
                    if not said:
                        raise
                else:  # the record only ever describes the file at the path
                    self._record.close(self._touched, self._vouched)
        finally:
            self._guard = None
            release_lock(getattr(self, "_lock", None))
            self._lock = None

    def _close_file(self, f) -> int | None:
        """Close HDF5's file; its end of file at the last flush (None after a failure)."""
        guard = self._guard
        failed = guard is not None and guard.failed
        end, error = None, None
        try:
            changed = self._attrs_set or getattr(self, "_touched", np.zeros(0)).any()
            if guard is not None and not (failed or guard.short or int(f.attrs["complete"])) \
                    and changed:
                f.attrs["updated"] = now()
            f.flush()
            end = f.id.get_filesize()
        except WRITE_ERRORS as e:
            if guard is not None and not failed:  # else the first failure is the one reported
                guard.cut_off()
                error, end = e, None
        try:
            f.close()  # a cut-off handle may complain: its writes went nowhere, as meant
        except WRITE_ERRORS as e:
            error = error or (None if failed else e)
        if error is not None:
            raise write_failed(self.path, error) from None
        return None if failed else end


def repair_store(path: Path) -> int:
    """Reset the rows of chunks a killed writer tore in a partial store; how many it reset.
    A complete store is left alone: nothing writes to it after it is finalized."""
    with open_h5(Path(path)) as f:
        if int(f.attrs.get("complete", 0)):
            return 0
    with StoreWriter(path) as w:
        return w.rows_reset


def write_store(path: Path, meta, instance_ids, heatmaps: np.ndarray,
                affines: np.ndarray) -> None:
    """One shot: a complete store of these instances (heatmaps (N, K, H, W), affines (N, 2, 3))."""
    create_store(path, meta, instance_ids)
    with StoreWriter(path) as w:
        w.write(np.arange(len(heatmaps)), heatmaps, affines)
        w.finalize()
