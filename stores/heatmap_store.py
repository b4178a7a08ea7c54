"""The soft-label store: one HDF5 file of teacher heatmaps per (teacher, dataset).

Schema (format_version 1) — readable with plain h5py (``import hdf5plugin`` first, for the
compression filter); N instances, K keypoints in the teacher's native order, H×W heatmap grid:

  heatmaps      (N, K, H, W) uint8    chunks (1, K, H, W): one instance per chunk, so a shuffled
                                      read decodes exactly one chunk; compressed (CODEC below),
                                      fletcher32 checksum on every chunk.
  scales        (N, K) float32        value = uint8 × scale; scale = channel max / 255 (0 for an
                                      all-zero channel), so each channel's peak is stored as 255.
  affines       (N, 2, 3) float64     image pixels → heatmap grid pixels (pipeline.geometry
                                      conventions); a target is only valid for this view.
  instance_ids  (N,) int64            the dataset's instance ids; row r holds instance_ids[r].
  done          (N,) uint8            1 = row r is written (data flushed before done is set).

  attributes    format_version (int), every StoreMeta field (dicts and tuples as JSON strings,
                flip as a bool), to_unified (JSON list: native channel → unified index or null,
                from pipeline.skeletons), software_version, created / updated / completed (UTC
                ISO 8601, completed "" until finished), complete (0/1), skipped (JSON object
                {instance id: reason}), codec (a CODECS key), threshold (float).
  A reader must not use rows whose done is 0 (StoreReader.read raises UniError for them).

Decoding row r:  heatmaps[r].astype(float32) * scales[r][:, None, None].

Quantisation: per instance and keypoint, values under THRESHOLD × channel max are zeroed first
(teacher background noise would otherwise fill every byte and ruin compression), then
round(value / scale), capped at 254 except the first maximum (255). Error per value ≤ scale / 2
above the threshold (≤ scale next to the peak), ≤ THRESHOLD × max under it.

Why these choices — measured by bench/store_codecs.py on the 2-core dev machine (shared, load
≈4, so rates are pessimistic and noisy), 1000 synthetic teacher instances, one per chunk,
fletcher32 on, reads in shuffled order from the page cache through StoreReader:

  codec                  sigmoid-head 17×64×48        SimCC-grid 16×64×64
                         B/inst  ×fp16  raw-read/s    B/inst  ×fp16  raw-read/s   write/s*
  fp16, no quantisation  75,130   1.4   (blosc-lz4)   51,052   2.6   (zstd-3)
  zstd-1 (chosen)        10,353  10.1   11,753         1,380  95.0   27,689       ~1,300
  zstd-3                 10,052  10.4    9,469         1,405  93.3   23,429       ~1,000
  blosc-zstd (shuffle)    9,638  10.8   12,195         1,424  92.1   18,752       ~1,000
  lz4                    17,230   6.1   18,953         2,219  59.1   27,658       ~1,200
  blosc-lz4 (shuffle)    17,735   5.9   18,338         2,330  56.2   27,331       ~1,400
  blosc-lz4 (bitshuffle) 14,628   7.1   15,638         3,634  36.1   11,829       ~1,200
  gzip-4                  9,825  10.6    5,536         1,569  83.6    3,930         ~750
  (B/inst = file bytes per instance; raw fp32 is 208,896 / 262,144 B, fp16 half that;
  *write/s of the SimCC maps; the noisier sigmoid maps write at about the same rate.)
zstd-1 is within 3-7 % of the smallest codec, and decodes as fast as any zstd; lz4 reads up to
1.6× faster but stores 1.6× more — at COCO scale (150k instances) 1.5 GB against 2.6 GB per
teacher, while a training step's JPEG decode costs far more than either read. Byte shuffle is a
no-op on uint8. Per-read cost is mostly HDF5's own overhead (read_direct_chunk without decoding
reaches ~170k/s), so the reader caches the dataset handle, file space and memory type (the
last alone doubles the rate). Write speed includes quantising and two flushes per 32-row call.

Threshold (default 4/255 of the channel max; `cache-teachers --threshold`, kept in attribute
"threshold" and checked on resume): error ≤ 1.6 % of the peak, and under the paper's KD (β = 10
sharpening) such values weigh (4/255)^10 ≈ 0. Measured by bench/store.py (zstd-1, heatmap bytes
vs fp16; KL of the β = 10 softmax; the argmax refined decode did not move at any threshold):
  threshold              1/255   2/255   4/255   8/255
  BlazePose-full 33×64×64 14.3×   17.0×   21.2×   27.6×   (real pretrained, COCO + MPII samples)
  KL mean                4.3e-5  4.6e-5  5.6e-5  8.9e-5
  demo teacher 17×32×24   3.6×    3.9×    4.8×    6.4×   (MSE-trained on synthetic data)
KL is dominated by uint8 rounding, not by the threshold. The demo teachers' maps stay large:
their blobs are broad and noisy (10 % of all values are above 0.19 of the peak), which neither
the threshold nor a delta filter (measured: ≤ 5 % smaller) removes. The argmax pixel alone keeps
level 255 (near-ties drop to 254), so decoding a stored map gives the teacher's argmax exactly.

Kill safety: the writer writes heatmaps / scales / affines, flushes, then sets done and flushes
again, so after a SIGKILL done ⊆ rows really written. One writer at a time: StoreWriter holds
``<store>.lock`` (its pid); a lock left by a dead process is taken over with a warning. The
file uses HDF5's default (earliest) format: the "latest" format marks files open for writing in
the superblock, and a killed writer leaves a file HDF5 then refuses to open (checked).
60 SIGKILLs at random moments of a 30,000-row write: every store reopened, verify() clean,
every done row held its own data. But Linux ends a write at a page boundary when SIGKILL
arrives, and each batch rewrites a scales / affines / done chunk (4096 rows): on a loaded
machine about 1 kill in 12 left one failing its checksum. The next writer mends it
(StoreWriter._mend, `mend`): that chunk's rows are marked not done and computed again, so a
resumed store still ends equal to an uninterrupted one; readers meanwhile say to rerun.
Disk full: a write stops with a one-line UniError while MIN_FREE_BYTES are still free, store
intact and resumable. A write HDF5 itself fails (quota, a disk filled by someone else) is one
line too, but HDF5 may leave that file unopenable (resume then says to --overwrite it).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import sys
import time
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from pathlib import Path

import h5py
import hdf5plugin
import numpy as np

from pipeline.errors import UniError, io_reason
from pipeline.faults import fault
from pipeline.skeletons import get_skeleton

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
THRESHOLD = 4.0 / 255.0  # default × channel max under which values are zeroed (see above)
# Compression filters for the heatmaps (hdf5plugin); stores record the name in attr "codec".
CODECS = {
    "zstd-1": lambda: hdf5plugin.Zstd(clevel=1),
    "zstd-3": lambda: hdf5plugin.Zstd(clevel=3),
    "zstd-9": lambda: hdf5plugin.Zstd(clevel=9),
    "lz4": lambda: hdf5plugin.LZ4(),
    "blosc-lz4": lambda: hdf5plugin.Blosc(cname="lz4", clevel=5,
                                          shuffle=hdf5plugin.Blosc.SHUFFLE),
    "blosc-lz4-bitshuffle": lambda: hdf5plugin.Blosc(cname="lz4", clevel=5,
                                                     shuffle=hdf5plugin.Blosc.BITSHUFFLE),
    "blosc-zstd": lambda: hdf5plugin.Blosc(cname="zstd", clevel=3,
                                           shuffle=hdf5plugin.Blosc.SHUFFLE),
    "blosc-zstd-bitshuffle": lambda: hdf5plugin.Blosc(cname="zstd", clevel=3,
                                                      shuffle=hdf5plugin.Blosc.BITSHUFFLE),
    "gzip-4": lambda: {"compression": "gzip", "compression_opts": 4},
}
CODEC = "zstd-1"
DATASETS = ("heatmaps", "scales", "affines", "instance_ids", "done")
_META_CHUNK = 4096  # rows per chunk of the small per-instance datasets
# A writer stops cleanly while this much disk is still free (plus the batch itself): HDF5
# cannot recover a file whose writes failed (it may be left unopenable, and crashes at exit).
MIN_FREE_BYTES = 64 << 20
_write_failed = False  # an HDF5 write failed in this process (see hdf5_write_failed)


@dataclass
class StoreMeta:
    """What identifies a store's contents; two stores with equal meta hold the same targets."""

    teacher_name: str
    teacher_sha256: str
    teacher_metadata: dict  # the teacher's ONNX metadata (JSON-able)
    skeleton: str  # the teacher's native skeleton (pipeline.skeletons.SKELETONS key)
    dataset_id: str  # sha256 of the annotation file
    dataset_spec: str
    input_wh: tuple[int, int]  # teacher crop size (w, h)
    padding: float  # crop box = person box × padding
    flip: bool  # flip test used
    heatmap_shape: tuple[int, int, int]  # (K, H, W)

    def __post_init__(self) -> None:
        self.input_wh = tuple(int(v) for v in self.input_wh)
        self.heatmap_shape = tuple(int(v) for v in self.heatmap_shape)
        self.padding = float(self.padding)
        self.flip = bool(self.flip)


# Fields that must match for a store to be resumed or reused (dataset_spec may move).
_IDENTITY = ("teacher_name", "teacher_sha256", "skeleton", "dataset_id", "input_wh", "padding",
             "flip", "heatmap_shape")


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _software_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("uni")
    except PackageNotFoundError:
        return "unknown"


def _meta_to_attrs(meta: StoreMeta) -> dict:
    out = {}
    for f in fields(StoreMeta):
        v = getattr(meta, f.name)
        out[f.name] = (json.dumps(list(v) if isinstance(v, tuple) else v)
                       if isinstance(v, dict | tuple | list) else v)
    return out


def _meta_from_attrs(attrs, where: str) -> StoreMeta:
    kw = {}
    for f in fields(StoreMeta):
        if f.name not in attrs:
            raise UniError(f"{where}: attribute {f.name!r} missing")
        v = attrs[f.name]
        if isinstance(v, bytes):
            v = v.decode()
        if f.name in ("teacher_metadata", "input_wh", "heatmap_shape"):
            try:
                v = json.loads(v)
            except (TypeError, ValueError):
                raise UniError(f"{where}: attribute {f.name!r} is not JSON") from None
        kw[f.name] = v.item() if isinstance(v, np.generic) else v
    try:
        return StoreMeta(**kw)
    except (TypeError, ValueError) as e:
        raise UniError(f"{where}: bad attributes ({e})") from None


# --------------------------------------------------------------------------- quantisation


def quantize(heatmaps: np.ndarray, threshold: float = THRESHOLD
             ) -> tuple[np.ndarray, np.ndarray]:
    """heatmaps: (n, K, H, W) float ≥ 0 → (uint8 (n, K, H, W), scales (n, K) float32)."""
    hm = np.maximum(np.asarray(heatmaps, np.float32), 0.0)
    peak = hm.max(axis=(2, 3))  # (n, K)
    scales = (peak / 255.0).astype(np.float32)
    inv = np.divide(1.0, scales, out=np.zeros_like(scales), where=scales > 0)
    q = np.rint(hm * inv[:, :, None, None])
    q[hm < (threshold * peak)[:, :, None, None]] = 0
    q = np.clip(q, 0, 254).astype(np.uint8)
    # Only the first maximum gets 255, so the argmax (the decoded keypoint) survives exactly.
    n, k = peak.shape
    top = hm.reshape(n, k, -1).argmax(-1)
    q.reshape(n, k, -1)[np.arange(n)[:, None], np.arange(k), top] = np.where(peak > 0, 255, 0)
    return q, scales


def dequantize(q: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """uint8 (..., K, H, W), scales (..., K) → float32 (..., K, H, W)."""
    return np.multiply(q, scales[..., None, None], dtype=np.float32)


# --------------------------------------------------------------------------- checks


def _hdf5_failed(path: Path, e: BaseException) -> UniError:
    """Note that HDF5 failed to write a file this process holds open; the error to raise."""
    global _write_failed
    _write_failed = True
    return UniError(f"{path}: write failed ({io_reason(e)})")


def hdf5_write_failed() -> bool:
    """True once an HDF5 write failed here: HDF5 then crashes at interpreter exit (SIGSEGV,
    seen with a full disk), so the CLI leaves with os._exit after its one-line error."""
    return _write_failed


def _check_file(path: Path) -> None:
    if not path.exists():
        raise UniError(f"{path}: store not found")
    if not h5py.is_hdf5(str(path)):
        raise UniError(f"{path}: not an HDF5 file")


def _open_h5(path: Path, mode: str = "r") -> h5py.File:
    _check_file(path)
    try:
        return h5py.File(str(path), mode)
    except OSError as e:
        msg = str(e)
        if "already open" in msg:
            raise UniError(f"{path}: already open in this process (close its reader before "
                           "writing)") from None
        if "unable to lock file" in msg:
            raise UniError(f"{path}: cannot open, another process has it open ({msg})") from None
        raise UniError(f"{path}: cannot open as HDF5 ({msg})") from None


def _check_layout(f: h5py.File, where: str) -> StoreMeta:
    """Format version, datasets and attributes present and consistent; returns the meta."""
    version = f.attrs.get("format_version")
    if version is None:
        raise UniError(f"{where}: attribute 'format_version' missing (not a uni store?)")
    if int(version) != FORMAT_VERSION:
        raise UniError(f"{where}: format_version {int(version)}, this uni reads "
                       f"{FORMAT_VERSION}")
    for name in DATASETS:
        if name not in f:
            raise UniError(f"{where}: dataset {name!r} missing")
    meta = _meta_from_attrs(f.attrs, where)
    n = f["instance_ids"].shape[0]
    want = {"heatmaps": (n, *meta.heatmap_shape), "scales": (n, meta.heatmap_shape[0]),
            "affines": (n, 2, 3), "done": (n,)}
    for name, shape in want.items():
        if f[name].shape != shape:
            raise UniError(f"{where}: dataset {name!r} has shape {f[name].shape}, "
                           f"expected {shape}")
    return meta


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
    get_skeleton(meta.skeleton)  # UniError for an unknown skeleton
    n = len(ids)
    c = min(n, _META_CHUNK)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.creating")
        f = h5py.File(str(tmp), "w")
    except OSError as e:
        raise UniError(f"{path}: cannot create the store ({io_reason(e)})") from None
    try:
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
            for key, value in _meta_to_attrs(meta).items():
                a[key] = value
            a["to_unified"] = json.dumps(list(get_skeleton(meta.skeleton).to_unified))
            a["software_version"] = _software_version()
            a["created"] = a["updated"] = _now()
            a["completed"] = ""
            a["complete"] = 0
            a["skipped"] = "{}"
            a["codec"] = codec
            a["threshold"] = float(threshold)
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:  # h5py raises both for failed writes
        raise _hdf5_failed(path, e) from None
    finally:
        tmp.unlink(missing_ok=True)


# --------------------------------------------------------------------------- writing


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


class StoreWriter:
    """The single writer of a store (a context manager); holds ``<store>.lock`` while open."""

    def __init__(self, path: Path, flush_every_s: float = 0.0):
        self.path = Path(path)
        _check_file(self.path)
        self._lock = _take_lock(self.path)
        try:
            self._f = _open_h5(self.path, "r+")
            self.meta = _check_layout(self._f, str(self.path))
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
            self.mended = self._mend()
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> StoreWriter:
        return self

    def _mend(self) -> int:
        """Reset the scales / affines / done chunks a kill tore; returns how many rows it reset.

        Every batch rewrites those chunks (up to 4096 rows each), and Linux ends a write at a
        page boundary when SIGKILL arrives, so a killed writer can leave one failing its
        checksum. Its rows are marked not done and computed again; heatmap chunks are written
        once per row, before the row is marked done, so they need nothing."""
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
                raise _hdf5_failed(self.path, e) from None
            reset += m
        if reset:
            self._f.flush()
            log.warning("%s: %d rows torn by an interrupted write will be computed again",
                        self.path, reset)
        return reset

    def __exit__(self, *exc) -> None:
        self.close()

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
            raise _hdf5_failed(self.path, e) from None

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
        known = set(self._ids.tolist())
        unknown = [i for i in skipped if i not in known]
        if unknown:
            raise UniError(f"{self.path}: skipped instance {unknown[0]} is not in the store")
        skipped = {i: r for i, r in skipped.items() if not done[self._row(i)]}
        missing = [int(i) for i, d in zip(self._ids, done, strict=True)
                   if not d and int(i) not in skipped]
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
            raise _hdf5_failed(self.path, e) from None

    def _row(self, instance_id: int) -> int:
        if not hasattr(self, "_row_of"):
            self._row_of = {int(i): r for r, i in enumerate(self._ids)}
        return self._row_of[instance_id]

    def close(self) -> None:
        f = getattr(self, "_f", None)
        try:
            if f is not None and f.id.valid:
                try:
                    if not self._failed and not int(f.attrs["complete"]):
                        f.attrs["updated"] = _now()
                    f.close()
                except (OSError, RuntimeError) as e:
                    err = _hdf5_failed(self.path, e)
                    if not self._failed:  # else the first failure is the one to report
                        self._failed = True
                        raise err from None
        finally:
            self._release()

    def _release(self) -> None:
        lock = getattr(self, "_lock", None)
        if lock is not None:
            held = _read_lock(lock)
            if held is not None and held[0] == os.getpid():
                lock.unlink(missing_ok=True)
            self._lock = None


def write_store(path: Path, meta: StoreMeta, instance_ids, heatmaps: np.ndarray,
                affines: np.ndarray) -> None:
    """One shot: a complete store of these instances (heatmaps (N, K, H, W), affines (N, 2, 3))."""
    create_store(path, meta, instance_ids)
    with StoreWriter(path) as w:
        w.write(np.arange(len(heatmaps)), heatmaps, affines)
        w.finalize()


# --------------------------------------------------------------------------- reading


_MEND_HINT = ("; if a cache-teachers run was killed while writing it, running it again "
              "repairs the store")


def mend(path: Path) -> int:
    """Repair what a killed writer tore in a partial store (see StoreWriter._mend); rows reset.
    A complete store is left alone: nothing writes to it after it is finalized."""
    with _open_h5(Path(path)) as f:
        if int(f.attrs.get("complete", 0)):
            return 0
    with StoreWriter(path) as w:
        return w.mended


class StoreReader:
    """Random access to a store's rows. Pickles as its path; each process opens its own handle."""

    def __init__(self, path: Path):
        self.path = Path(path)
        with _open_h5(self.path) as f:
            self.meta = _check_layout(f, str(self.path))
            try:
                self.instance_ids = f["instance_ids"][:].astype(np.int64)
                self.done = f["done"][:].astype(bool)
            except OSError as e:
                raise UniError(f"{self.path}: instance_ids / done unreadable ({e}){_MEND_HINT}"
                               ) from None
            a = f.attrs
            self.complete = bool(int(a.get("complete", 0)))
            self.attrs = {k: (v.item() if isinstance(v, np.generic) else v)
                          for k, v in a.items()}
        try:
            self.skipped = {int(k): v for k, v in json.loads(self.attrs["skipped"]).items()}
        except (KeyError, ValueError, AttributeError):
            raise UniError(f"{self.path}: attribute 'skipped' missing or not JSON") from None
        self.row_of = {int(i): r for r, i in enumerate(self.instance_ids)}
        self._pid = None  # the process whose handle _f is

    def __getstate__(self) -> dict:
        return {"path": str(self.path)}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["path"])

    def __len__(self) -> int:
        return len(self.instance_ids)

    def _open(self) -> None:
        """Open (or, after a fork, reopen) this process's handle; cache what every read needs."""
        if self._pid == os.getpid():
            return
        f = _open_h5(self.path)
        self._f = f
        self._hm = f["heatmaps"]
        try:
            self._scales = f["scales"][:]
            self._affines = f["affines"][:]
        except OSError as e:
            raise UniError(f"{self.path}: scales / affines unreadable ({e}){_MEND_HINT}"
                           ) from None
        k, h, w = self.meta.heatmap_shape
        self._fspace = self._hm.id.get_space()
        self._mspace = h5py.h5s.create_simple((1, k, h, w))
        self._mtype = self._hm.id.get_type()  # cached: deriving it per read halves the rate
        self._count = (1, k, h, w)
        self._pid = os.getpid()

    def _read_chunk(self, row: int) -> np.ndarray:
        """uint8 (1, K, H, W): the row's heatmap chunk, decoded; OSError when its checksum or
        decoding fails. The one read path of read_raw and verify."""
        self._open()
        out = np.empty(self._count, np.uint8)
        self._fspace.select_hyperslab((row, 0, 0, 0), self._count)
        self._hm.id.read(self._mspace, self._fspace, out, self._mtype)
        return out

    def read_raw(self, row: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Row → (uint8 (K, H, W), scales (K,) float32, affine (2, 3) float64)."""
        self._open()
        if not self.done[row]:
            raise UniError(f"{self.path}: instance {self.instance_ids[row]} (row {row}) is "
                           "not in the store (skipped or not computed yet)")
        try:
            out = self._read_chunk(row)
        except OSError as e:
            raise UniError(f"{self.path}: heatmaps of instance {self.instance_ids[row]} "
                           f"(row {row}) unreadable, checksum or decode failed ({e})") from None
        return out[0], self._scales[row], self._affines[row]

    def read(self, row: int) -> tuple[np.ndarray, np.ndarray]:
        """Row → (heatmaps (K, H, W) float32 dequantised, affine (2, 3) float64)."""
        q, scales, affine = self.read_raw(row)
        return dequantize(q, scales), affine

    def close(self) -> None:
        if self._pid == os.getpid():
            self._f.close()
        self._pid = None

    def verify(self, progress: bool = False) -> list[str]:
        """Read every chunk (checksums) and check done mask and attributes; problems found."""
        return _verify(self, progress)[0]

    def damaged(self, progress: bool = False) -> dict[int, str]:
        """{row: problem} for rows marked done whose data verify() finds unusable."""
        return _verify(self, progress)[1]

    def summary(self) -> dict:
        return _summary(self)


def open_store(path: Path) -> StoreReader:
    return StoreReader(Path(path))


def check_compatible(path: Path, meta: StoreMeta, threshold: float | None = None) -> str:
    """'missing', 'complete' or 'partial'; UniError naming the field when built differently
    (also the quantisation threshold, when given)."""
    path = Path(path)
    if not path.exists():
        return "missing"
    r = open_store(path)
    for name in _IDENTITY:
        have, want = getattr(r.meta, name), getattr(meta, name)
        if have != want:
            raise UniError(f"{path}: built with {name} {have!r}, now {want!r}")
    have = float(r.attrs.get("threshold", THRESHOLD))
    if threshold is not None and not np.isclose(have, threshold, rtol=0, atol=1e-9):
        raise UniError(f"{path}: built with threshold {have:.6g}, now {threshold:.6g}")
    return "complete" if r.complete else "partial"


# --------------------------------------------------------------------------- verify, summary


def _verify(r: StoreReader, progress: bool) -> tuple[list[str], dict[int, str]]:
    """(every problem, {row: problem} for the done rows among them)."""
    from tqdm import tqdm

    problems = []
    damaged = {}
    r._open()
    k = r.meta.heatmap_shape[0]
    allocated = np.zeros(len(r), bool)

    def seen(info) -> None:
        allocated[info.chunk_offset[0]] = True

    r._hm.id.chunk_iter(seen)
    for row in tqdm(range(len(r)), desc=f"verify {r.path.name}", unit="inst",
                    disable=not progress, file=sys.stderr, delay=1.0):  # quiet when quick
        problem = _check_row(r, row, bool(allocated[row]), k)
        if problem:
            problems.append(f"instance {int(r.instance_ids[row])} (row {row}): {problem}")
            if r.done[row]:
                damaged[row] = problems[-1]
    if r.complete:
        missing = [int(i) for i, d in zip(r.instance_ids, r.done, strict=True)
                   if not d and int(i) not in r.skipped]
        if missing:
            problems.append(f"marked complete but {len(missing)} instances neither done nor "
                            f"skipped (first: instance {missing[0]})")
    return problems, damaged


def _check_row(r: StoreReader, row: int, allocated: bool, k: int) -> str | None:
    """What is wrong with one row, or None."""
    if not allocated:
        return "marked done but has no data" if r.done[row] else None
    try:
        out = r._read_chunk(row)
    except OSError:
        return "heatmap chunk fails its checksum"
    if not r.done[row]:
        return None
    s = r._scales[row]
    if not (np.isfinite(s).all() and (s >= 0).all()):
        return "scales not finite and ≥ 0"
    if not np.isfinite(r._affines[row]).all():
        return "affine not finite"
    peak = out[0].reshape(k, -1).max(-1)
    wrong = np.flatnonzero((s > 0) != (peak == 255))
    if len(wrong):
        return (f"keypoint {wrong[0]} peak {peak[wrong[0]]} does not match its scale "
                f"{s[wrong[0]]}")
    return None


def _summary(r: StoreReader) -> dict:
    r._open()
    k, h, w = r.meta.heatmap_shape
    n_done = int(r.done.sum())
    size = r.path.stat().st_size
    raw16 = 2 * k * h * w * n_done
    attrs = {key: (v.decode() if isinstance(v, bytes) else v) for key, v in r.attrs.items()}
    return {
        "path": str(r.path),
        "instances": len(r), "done": n_done, "skipped": len(r.skipped), "complete": r.complete,
        "teacher": r.meta.teacher_name, "teacher_sha256": r.meta.teacher_sha256,
        "skeleton": r.meta.skeleton, "dataset_id": r.meta.dataset_id,
        "dataset_spec": r.meta.dataset_spec, "input_wh": list(r.meta.input_wh),
        "padding": r.meta.padding, "flip": r.meta.flip, "heatmap_shape": [k, h, w],
        "bytes_on_disk": size, "heatmap_bytes": int(r._hm.id.get_storage_size()),
        "bytes_per_instance": size / n_done if n_done else None,
        "raw_fp32_bytes": 2 * raw16, "raw_fp16_bytes": raw16,
        "compression_ratio_fp16": raw16 / size if n_done else None,
        "codec": attrs.get("codec"), "format_version": attrs.get("format_version"),
        "attrs": {key: (v.tolist() if isinstance(v, np.ndarray) else v)
                  for key, v in attrs.items()},
    }

