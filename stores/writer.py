"""Writing a soft-label store (the format is stores/heatmap_store.py's): create it, lock it,
write rows crash-safely, repair what a kill tore, finalize.

Kill safety: the writer writes heatmaps / scales / affines, flushes, then sets done and flushes
again, so after a SIGKILL done ⊆ rows really written. One writer at a time: StoreWriter holds
``<store>.lock`` (its pid and host); a lock left by a dead process is taken over with a warning.
The file uses HDF5's default (earliest) format: the "latest" format marks files open for
writing in the superblock, and a killed writer leaves a file HDF5 then refuses to open.
Linux ends a write at a page boundary when SIGKILL arrives, and each batch rewrites a scales /
affines / done chunk (up to META_CHUNK rows), so a kill can leave one failing its checksum: the
next writer resets that chunk's rows (they are computed again), so a resumed store still ends
equal to an uninterrupted one. Disk full: a write stops with a one-line UniError while
MIN_FREE_BYTES are still free, store intact and resumable. A write HDF5 itself fails (quota, a
disk filled by someone else) raises StoreWriteFailed; HDF5 may leave that file unopenable
(resume then says to --overwrite it). The kill tests' log is in BENCHMARKS.md "Store design
measurements".
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import time
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import h5py
import numpy as np

from pipeline.errors import UniError, io_reason
from pipeline.faults import fault
from pipeline.files import atomic_write
from pipeline.skeletons import get_skeleton
from stores.heatmap_store import (
    CODEC,
    CODECS,
    FORMAT_VERSION,
    THRESHOLD,
    StoreMeta,
    check_file,
    check_layout,
    meta_to_attrs,
    missing_instances,
    open_h5,
    quantize,
)

log = logging.getLogger(__name__)

META_CHUNK = 4096  # rows per chunk of the small per-instance datasets
# A writer stops cleanly while this much disk is still free (plus the batch itself): HDF5
# cannot recover a file whose writes failed (it may be left unopenable, and crashes at exit).
MIN_FREE_BYTES = 64 << 20


class StoreWriteFailed(UniError):
    """HDF5 failed to write a store this process holds open. HDF5 then crashes at interpreter
    exit (SIGSEGV, seen with a full disk), so the CLI leaves with os._exit after its line."""

    exit_hard = True


def _write_failed(path: Path, e: BaseException) -> StoreWriteFailed:
    return StoreWriteFailed(f"{path}: write failed ({io_reason(e)})")


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _software_version() -> str:
    try:
        return version("uni")
    except PackageNotFoundError:
        return "unknown"


# --------------------------------------------------------------------------- creating


def create_store(path: Path, meta: StoreMeta, instance_ids, codec: str = CODEC,
                 threshold: float = THRESHOLD) -> None:
    """Write an empty store for these instances (done all 0): a temp file, then renamed."""
    path = Path(path)
    if codec not in CODECS:
        raise UniError(f"unknown store codec {codec!r}; known: {', '.join(CODECS)}")
    if not 0.0 <= threshold < 1.0:
        raise UniError(f"store threshold must be in [0, 1) of the channel peak, got {threshold}")
    ids = np.asarray(instance_ids, dtype=np.int64).reshape(-1)
    if len(ids) == 0:
        raise UniError(f"{path}: no instances to store")
    if len(np.unique(ids)) != len(ids):
        raise UniError(f"{path}: instance ids are not unique")
    k, h, w = meta.heatmap_shape
    to_unified = get_skeleton(meta.skeleton).to_unified  # UniError for an unknown skeleton
    n = len(ids)
    c = min(n, META_CHUNK)

    def write(tmp: Path) -> None:
        try:
            f = h5py.File(str(tmp), "w")
        except OSError as e:
            raise UniError(f"{path}: cannot create the store ({io_reason(e)})") from None
        with f:
            f.create_dataset("heatmaps", (n, k, h, w), np.uint8, chunks=(1, k, h, w),
                             fletcher32=True, fillvalue=0, **dict(CODECS[codec]()))
            f.create_dataset("scales", (n, k), np.float32, chunks=(c, k), fletcher32=True)
            f.create_dataset("affines", (n, 2, 3), np.float64, chunks=(c, 2, 3),
                             fletcher32=True)
            f.create_dataset("instance_ids", data=ids, chunks=(c,), fletcher32=True)
            f.create_dataset("done", (n,), np.uint8, chunks=(c,), fletcher32=True, fillvalue=0)
            a = f.attrs
            a["format_version"] = FORMAT_VERSION
            for key, value in meta_to_attrs(meta).items():
                a[key] = value
            a["to_unified"] = json.dumps(list(to_unified))
            a["software_version"] = _software_version()
            a["created"] = a["updated"] = _now()
            a["completed"] = ""
            a["complete"] = 0
            a["skipped"] = "{}"
            a["codec"] = codec
            a["threshold"] = float(threshold)

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UniError(f"{path}: cannot create the store ({io_reason(e)})") from None
    # Not <store>.tmp: pipeline.cache rebuilds a store under that name.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.creating")
    try:
        atomic_write(path, write, tmp=tmp)
    except (OSError, RuntimeError) as e:  # h5py raises both for failed writes
        raise _write_failed(path, e) from None


# --------------------------------------------------------------------------- the lock


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _read_lock(lock: Path) -> tuple[int, str] | None:
    try:
        text = lock.read_text().split()
        return int(text[0]), (text[1] if len(text) > 1 else "")
    except (FileNotFoundError, ValueError, IndexError):
        return None


def _take_lock(path: Path) -> Path:
    """Create <path>.lock holding our pid; take over a lock whose process is gone."""
    lock = Path(str(path) + ".lock")
    host = socket.gethostname()
    for _ in range(3):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            held = _read_lock(lock)
            if held is None:  # being written this instant, or garbage: look again
                time.sleep(0.05)
                held = _read_lock(lock)
            if held is not None:
                pid, owner_host = held
                if owner_host and owner_host != host:
                    raise UniError(f"{path}: is being written by pid {pid} on {owner_host} "
                                   f"(remove {lock} if that is not true)") from None
                if _pid_alive(pid):
                    raise UniError(f"{path}: is being written by pid {pid}") from None
            log.warning("%s: taking over the lock of pid %s, which is gone", path,
                        held[0] if held else "?")
            lock.unlink(missing_ok=True)
            continue
        except OSError as e:  # a read-only directory, say
            raise UniError(f"{path}: cannot take the lock {lock} ({io_reason(e)})") from None
        try:
            with os.fdopen(fd, "w") as fh:
                fh.write(f"{os.getpid()} {host}\n")
        except OSError as e:
            lock.unlink(missing_ok=True)
            raise UniError(f"{path}: cannot take the lock {lock} ({io_reason(e)})") from None
        return lock
    raise UniError(f"{path}: could not take {lock}")


# --------------------------------------------------------------------------- writing


class StoreWriter:
    """The single writer of a store (a context manager); holds ``<store>.lock`` while open.
    Opening it resets the rows of chunks a killed writer tore (`rows_reset` says how many)."""

    def __init__(self, path: Path, flush_every_s: float = 0.0):
        self.path = Path(path)
        check_file(self.path)
        self._lock = _take_lock(self.path)
        try:
            self._f = open_h5(self.path, "r+")
            self.meta = check_layout(self._f, str(self.path))
        except BaseException:
            self._release()
            raise
        self._hm = self._f["heatmaps"]
        self._scales = self._f["scales"]
        self._affines = self._f["affines"]
        self._done = self._f["done"]
        self._ids = self._f["instance_ids"][:]
        self.threshold = float(self._f.attrs.get("threshold", THRESHOLD))
        self.flush_every_s = flush_every_s
        self._failed = False
        try:
            self.rows_reset = self._reset_torn_chunks()
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> StoreWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _reset_torn_chunks(self) -> int:
        """Reset the scales / affines / done chunks a kill tore; returns how many rows it reset.

        Their rows are marked not done and computed again; heatmap chunks are written once per
        row, before the row is marked done, so they need nothing."""
        n, c, k = len(self._ids), self._done.chunks[0], self.meta.heatmap_shape[0]
        reset = 0
        for start in range(0, n, c):
            sl = slice(start, min(start + c, n))
            try:
                self._done[sl], self._scales[sl], self._affines[sl]
                continue
            except OSError:  # checksum or decode failure
                pass
            m = sl.stop - sl.start
            try:  # whole chunks: HDF5 replaces them without reading the torn ones
                self._scales[sl] = np.zeros((m, k), np.float32)
                self._affines[sl] = np.zeros((m, 2, 3))
                self._done[sl] = np.zeros(m, np.uint8)
            except (OSError, RuntimeError) as e:
                self._failed = True
                raise _write_failed(self.path, e) from None
            reset += m
        if reset:
            self._f.flush()
            log.warning("%s: %d rows torn by an interrupted write will be computed again",
                        self.path, reset)
        return reset

    def write(self, rows: np.ndarray, heatmaps: np.ndarray, affines: np.ndarray) -> None:
        """rows (n,) int, heatmaps (n, K, H, W) float ≥ 0, affines (n, 2, 3) image → grid."""
        rows = np.asarray(rows, np.int64).reshape(-1)
        heatmaps = np.asarray(heatmaps)
        affines = np.asarray(affines, np.float64)
        n = len(rows)
        if heatmaps.shape != (n, *self.meta.heatmap_shape) or affines.shape != (n, 2, 3):
            raise UniError(f"{self.path}: write of {n} rows got heatmaps {heatmaps.shape} and "
                           f"affines {affines.shape}, expected (n, {self.meta.heatmap_shape}) "
                           "and (n, 2, 3)")
        if n == 0:
            return
        if rows.min() < 0 or rows.max() >= len(self._ids) or len(np.unique(rows)) != n:
            raise UniError(f"{self.path}: write rows out of range or repeated")
        bad = ~np.isfinite(heatmaps).all(axis=(1, 2, 3)) | ~np.isfinite(affines).all(axis=(1, 2))
        if bad.any():
            raise UniError(f"{self.path}: instance {self._ids[rows[bad][0]]}: heatmaps or "
                           "affine not finite")
        self._check_space(n)
        q, scales = quantize(heatmaps, self.threshold)
        order = np.argsort(rows)
        rows, q, scales, affines = rows[order], q[order], scales[order], affines[order]
        try:
            for i, r in enumerate(rows):
                self._hm[r] = q[i]
            self._scales[rows] = scales
            self._affines[rows] = affines
            self._f.flush()  # data on disk before it is marked done
            self._done[rows] = 1
            self._f.flush()
        except (OSError, RuntimeError) as e:  # h5py raises both for failed writes
            self._failed = True
            raise _write_failed(self.path, e) from None

    def _check_space(self, n: int) -> None:
        """Stop, store intact, before the disk fills up (see MIN_FREE_BYTES)."""
        need = MIN_FREE_BYTES + 2 * n * int(np.prod(self.meta.heatmap_shape))
        free = shutil.disk_usage(self.path.parent).free
        if free < need:
            raise UniError(f"{self.path}: disk full ({free / 1e6:.0f} MB free, {need / 1e6:.0f}"
                           " MB needed to write safely); the store is intact: free some space "
                           "and run again to resume")

    def finalize(self, skipped: dict[int, str] | None = None) -> None:
        """Mark the store complete: every row done or skipped ({instance id: reason})."""
        skipped = {int(k): str(v) for k, v in (skipped or {}).items()}
        done = self._done[:].astype(bool)
        row_of = {int(i): r for r, i in enumerate(self._ids)}
        unknown = [i for i in skipped if i not in row_of]
        if unknown:
            raise UniError(f"{self.path}: skipped instance {unknown[0]} is not in the store")
        skipped = {i: r for i, r in skipped.items() if not done[row_of[i]]}
        missing = missing_instances(self._ids, row_of, done, skipped)
        if missing:
            raise UniError(f"{self.path}: cannot finalize, {len(missing)} instances neither "
                           f"written nor skipped (first: {missing[0]})")
        try:
            a = self._f.attrs
            a["skipped"] = json.dumps({str(k): v for k, v in sorted(skipped.items())})
            fault("store-finalize")
            a["complete"] = 1
            a["completed"] = a["updated"] = _now()
            self._f.flush()
        except (OSError, RuntimeError) as e:
            self._failed = True
            raise _write_failed(self.path, e) from None

    def close(self) -> None:
        f = getattr(self, "_f", None)
        try:
            if f is not None and f.id.valid:
                try:
                    if not self._failed and not int(f.attrs["complete"]):
                        f.attrs["updated"] = _now()
                    f.close()
                except (OSError, RuntimeError) as e:
                    if not self._failed:  # else the first failure is the one to report
                        self._failed = True
                        raise _write_failed(self.path, e) from None
        finally:
            self._release()

    def _release(self) -> None:
        lock = getattr(self, "_lock", None)
        if lock is not None:
            held = _read_lock(lock)
            if held is not None and held[0] == os.getpid():
                lock.unlink(missing_ok=True)
            self._lock = None


def repair_store(path: Path) -> int:
    """Reset the rows of chunks a killed writer tore in a partial store; how many it reset.
    A complete store is left alone: nothing writes to it after it is finalized."""
    with open_h5(Path(path)) as f:
        if int(f.attrs.get("complete", 0)):
            return 0
    with StoreWriter(path) as w:
        return w.rows_reset


def write_store(path: Path, meta: StoreMeta, instance_ids, heatmaps: np.ndarray,
                affines: np.ndarray) -> None:
    """One shot: a complete store of these instances (heatmaps (N, K, H, W), affines (N, 2, 3))."""
    create_store(path, meta, instance_ids)
    with StoreWriter(path) as w:
        w.write(np.arange(len(heatmaps)), heatmaps, affines)
        w.finalize()
