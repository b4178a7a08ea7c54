"""The soft-label store's format and its reader: one HDF5 file of teacher heatmaps per
(teacher, dataset). stores/writer.py creates and writes stores, stores/encode.py makes the bytes
of a row, stores/verify.py checks stores and records that it did.

Schema (format_version 2; 1 is still read) — readable with plain h5py (``import hdf5plugin``
first, for the compression filter); N instances, K keypoints in the teacher's native order,
H×W heatmap grid:

  heatmaps      (N, K, H, W) uint8    chunks (1, K, H, W): one instance per chunk, so a shuffled
                                      read decodes exactly one chunk; compressed (CODEC below),
                                      fletcher32 checksum on every chunk.
  scales        (N, K) float32        value = uint8 × scale; scale = channel max / 255 (0 for an
                                      all-zero channel), so each channel's peak is stored as 255.
  affines       (N, 2, 3) float64     image pixels → heatmap grid pixels (core.geometry
                                      conventions); a target is only valid for this view.
  instance_ids  (N,) int64            the dataset's instance ids; row r holds instance_ids[r].
  done          (N,) uint8            1 = row r is written (data flushed before done is set).
  row_crc       (N,) uint32           (version 2) CRC-32 of row r's scales, affine, instance id
                                      and done (encode.row_crcs); checked by every read.

  attributes    format_version (int), every StoreMeta field (dicts and tuples as JSON strings,
                flip_test as a bool; stores written before its rename hold it as "flip"),
                skeleton_def (JSON: the teacher's whole skeleton definition,
                core.skeletons Skeleton.to_json; stores written before it have none and
                read the known skeleton of that name), to_unified (JSON list: native channel
                → unified21 index or null, kept for older readers), software_version,
                created / updated / completed (UTC ISO 8601, completed "" until finished),
                complete (0/1: 1 once every row is done), skipped (JSON object {instance id:
                reason}: rows whose image could not be read, not done, retried by the next
                run), codec (a CODECS key), threshold (float).
  A reader must not use rows whose done is 0 (StoreReader.read raises UniError for them).
  All small datasets carry fletcher32 too, which misses a 16-bit word going 0x0000 ↔ 0xffff
  (its sums are mod 65535): row_crc sees that. Version 1 stores lack row_crc and are read
  without that check; a writer resuming one adds it (stores/writer.py).

Decoding row r:  heatmaps[r].astype(float32) * scales[r][:, None, None].

Quantisation: per instance and keypoint, values under THRESHOLD × channel max are zeroed first
(teacher background noise would otherwise fill every byte and ruin compression), then
round(value / scale), capped at 254 except the first maximum (255). Error per value ≤ scale / 2
above the threshold (≤ scale next to the peak), ≤ THRESHOLD × max under it.

Why (docs/conventions.md "Caching soft labels"; figures: BENCHMARKS.md "Store design
measurements"): zstd-1 stores within a few % of the smallest codec and decodes as fast as any
zstd; lz4 reads faster but stores 1.6× more, and a training step's JPEG decode costs far more
than either read. The default threshold (4/255, attribute "threshold", checked on resume) errs
≤ 1.6 % of the peak, and the KD loss's β = 10 sharpening weighs such values (4/255)^10 ≈ 0.

Who encodes (tables: BENCHMARKS.md "Scale", bench/store_scale.py): workers quantise and
compress (encode.encode_rows: HDF5 filters the chunk in an in-memory twin of the store's dataset
and hands the bytes back), the one writer only writes them (StoreWriter.write_encoded:
write_direct_chunk). Chosen over shards that workers write and a join merges: the bytes are the
store's own, so plain h5py reads every store and fletcher32 checks every chunk as before, resume
and kill safety stay one file's, and a join would read and write every byte once more — while
direct chunks already clear the goal. Measured side by side on 17×64×48 maps, batches of 32,
2 shared cores (two runs): the writer takes 24,200–30,600 instances/s from EncodedRows against
1,560–1,650/s from float32 maps (16–19×), and a worker ships 4,700 bytes per instance instead
of 208,950 (1/44). Rows scattered over the store (not in batch order) write at 12,300–14,500/s.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, fields
from pathlib import Path

import h5py
import numpy as np

from uniskel.core.errors import UniError
from uniskel.core.skeletons import SKELETONS, Skeleton
from uniskel.stores.encode import (  # noqa: F401  (re-exported: the store's public names)
    CODEC,
    CODECS,
    THRESHOLD,
    EncodedRows,
    dequantize,
    encode_rows,
    quantize,
    row_crc,
)
from uniskel.stores.verify import (  # noqa: F401  (StoreCheck, missing_instances: re-exported)
    StoreCheck,
    check_store,
    missing_instances,
)

FORMAT_VERSION = 2  # what this uni writes
OLDEST_VERSION = 1  # the oldest it still reads
DATASETS = ("heatmaps", "scales", "affines", "instance_ids", "done")  # + row_crc from 2 on


@dataclass
class StoreMeta:
    """What identifies a store's contents; two stores with equal meta hold the same targets."""

    teacher_name: str
    teacher_sha256: str
    teacher_metadata: dict  # the teacher's ONNX metadata (JSON-able)
    skeleton: str  # the teacher's native skeleton's name
    dataset_id: str  # sha256 of the annotation file
    dataset_spec: str
    input_wh: tuple[int, int]  # teacher crop size (w, h)
    padding: float  # crop box = person box × padding
    flip_test: bool  # the teacher's maps are the flip test's average
    heatmap_shape: tuple[int, int, int]  # (K, H, W)
    # The skeleton's definition (the teacher's own, so a user's skeleton needs no file to read
    # the store); absent in older stores: the known skeleton of that name (None if unknown).
    skeleton_def: Skeleton | None = None

    def __post_init__(self) -> None:
        if self.skeleton_def is None:
            self.skeleton_def = SKELETONS.get(self.skeleton)
        self.input_wh = tuple(int(v) for v in self.input_wh)
        self.heatmap_shape = tuple(int(v) for v in self.heatmap_shape)
        self.padding = float(self.padding)
        self.flip_test = bool(self.flip_test)


# Fields that must match for a store to be resumed or reused (dataset_spec may move).
IDENTITY = ("teacher_name", "teacher_sha256", "skeleton", "dataset_id", "input_wh", "padding",
            "flip_test", "heatmap_shape")
# Attribute names of stores written before a field's rename: read when the new one is absent.
_OLD_NAMES = {"flip_test": "flip"}


def meta_to_attrs(meta: StoreMeta) -> dict:
    """StoreMeta → HDF5 attributes (dicts and tuples as JSON strings)."""
    out = {}
    for f in fields(StoreMeta):
        v = getattr(meta, f.name)
        if f.name == "skeleton_def":
            if v is not None:
                out[f.name] = json.dumps(v.to_json())
            continue
        out[f.name] = (json.dumps(list(v) if isinstance(v, tuple) else v)
                       if isinstance(v, dict | tuple | list) else v)
    return out


def meta_from_attrs(attrs, where: str) -> StoreMeta:
    """HDF5 attributes → StoreMeta; UniError naming `where` and the attribute at fault."""
    kw = {}
    for f in fields(StoreMeta):
        key = f.name if f.name in attrs else _OLD_NAMES.get(f.name, f.name)
        if key not in attrs:
            if f.name == "skeleton_def":  # a store written before it: the name is enough
                continue
            raise UniError(f"{where}: attribute {f.name!r} missing")
        v = attrs[key]
        if isinstance(v, bytes):
            v = v.decode()
        if f.name == "skeleton_def":
            try:
                v = json.loads(v)
            except (TypeError, ValueError):
                raise UniError(f"{where}: attribute 'skeleton_def' is not JSON") from None
            kw[f.name] = Skeleton.from_json(v, f"{where}: attribute 'skeleton_def'")
            continue
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


def check_file(path: Path) -> None:
    """UniError unless `path` exists and is an HDF5 file."""
    if not path.exists():
        raise UniError(f"{path}: store not found")
    if not h5py.is_hdf5(str(path)):
        raise UniError(f"{path}: not an HDF5 file")


def open_h5(path: Path, mode: str = "r") -> h5py.File:
    """The store's HDF5 file, or UniError saying why it cannot be opened."""
    check_file(path)
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


def check_layout(f: h5py.File, where: str) -> StoreMeta:
    """Format version, datasets and attributes present and consistent; returns the meta."""
    version = f.attrs.get("format_version")
    if version is None:
        raise UniError(f"{where}: attribute 'format_version' missing (not a uni store?)")
    version = int(version)
    if version > FORMAT_VERSION:
        raise UniError(f"{where}: format_version {version}, written by a newer uni (this one "
                       f"reads {OLDEST_VERSION} to {FORMAT_VERSION}); upgrade uni to read it")
    if version < OLDEST_VERSION:
        raise UniError(f"{where}: format_version {version}, this uni reads {OLDEST_VERSION} "
                       f"to {FORMAT_VERSION}")
    for name in DATASETS + (("row_crc",) if version >= 2 else ()):
        if name not in f:
            raise UniError(f"{where}: dataset {name!r} missing")
    meta = meta_from_attrs(f.attrs, where)
    n = f["instance_ids"].shape[0]
    want = {"heatmaps": (n, *meta.heatmap_shape), "scales": (n, meta.heatmap_shape[0]),
            "affines": (n, 2, 3), "done": (n,), "row_crc": (n,)}
    for name, shape in want.items():
        if name in f and f[name].shape != shape:
            raise UniError(f"{where}: dataset {name!r} has shape {f[name].shape}, "
                           f"expected {shape}")
    return meta


_REPAIR_HINT = ("; if a cache-teachers run was killed while writing it, running it again "
                "repairs the store")


class StoreReader:
    """Random access to a store's rows. Pickles as its path; each process opens its own handle."""

    def __init__(self, path: Path):
        self.path = Path(path)
        with open_h5(self.path) as f:
            self.meta = check_layout(f, str(self.path))
            self.version = int(f.attrs["format_version"])
            try:
                self.instance_ids = f["instance_ids"][:].astype(np.int64)
                self.done_raw = f["done"][:]  # (N,) uint8: 0 or 1 unless damaged
            except OSError as e:
                raise UniError(f"{self.path}: instance_ids / done unreadable ({e}){_REPAIR_HINT}"
                               ) from None
            a = f.attrs
            self.complete = bool(int(a.get("complete", 0)))
            self.attrs = {k: (v.item() if isinstance(v, np.generic) else v)
                          for k, v in a.items()}
        try:
            self.skipped = {int(k): v for k, v in json.loads(self.attrs["skipped"]).items()}
        except (KeyError, ValueError, AttributeError):
            raise UniError(f"{self.path}: attribute 'skipped' missing or not JSON") from None
        self.done = self.done_raw != 0  # (N,) bool; a value not 0 or 1 is damage (check)
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
        f = open_h5(self.path)
        self._f = f
        self._hm = f["heatmaps"]
        try:
            self._scales = f["scales"][:]
            self._affines = f["affines"][:]
            self._crc = f["row_crc"][:] if self.version >= 2 else None  # (N,) uint32
        except OSError as e:
            raise UniError(f"{self.path}: scales / affines / row_crc unreadable ({e})"
                           f"{_REPAIR_HINT}") from None
        k, h, w = self.meta.heatmap_shape
        self._fspace = self._hm.id.get_space()
        self._mspace = h5py.h5s.create_simple((1, k, h, w))
        self._mtype = self._hm.id.get_type()  # cached: deriving it per read halves the rate
        self._count = (1, k, h, w)
        self._pid = os.getpid()

    def _read_chunk(self, row: int) -> np.ndarray:
        """uint8 (1, K, H, W): the row's heatmap chunk, decoded; OSError when its checksum or
        decoding fails. The one read path of read_raw and check."""
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
        if self._crc is not None and self._crc[row] != row_crc(
                self._scales[row], self._affines[row], self.instance_ids[row],
                self.done_raw[row]):
            raise UniError(f"{self.path}: metadata (scales, affine, done) of instance "
                           f"{self.instance_ids[row]} (row {row}) fails its row_crc")
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

    def check(self, progress: bool = False, trust: bool = True) -> StoreCheck:
        """Every chunk's checksum, every row's metadata, the done mask and the attributes.
        trust: rows a recorded clean check still covers are not read again (stores/verify.py);
        False reads every chunk (inspect-store --verify)."""
        return check_store(self, progress, trust)

    def verify(self, progress: bool = False) -> list[str]:
        """Every problem a full check (every chunk read) finds."""
        return self.check(progress, trust=False).problems

    def damaged(self, progress: bool = False) -> dict[int, str]:
        """{row: problem} for rows marked done whose data is unusable (a trusting check)."""
        return self.check(progress).damaged

    def summary(self) -> dict:
        """Provenance, counts and sizes (JSON-able; app.inspect_store formats it)."""
        self._open()
        meta = self.meta
        k, h, w = meta.heatmap_shape
        n_done = int(self.done.sum())
        size = self.path.stat().st_size
        raw16 = 2 * k * h * w * n_done
        attrs = {key: (v.decode() if isinstance(v, bytes) else v)
                 for key, v in self.attrs.items()}
        return {
            "path": str(self.path), "instances": len(self), "done": n_done,
            "skipped": len(self.skipped), "complete": self.complete,
            "teacher": meta.teacher_name, "teacher_sha256": meta.teacher_sha256,
            "skeleton": meta.skeleton, "dataset_id": meta.dataset_id,
            "dataset_spec": meta.dataset_spec, "input_wh": list(meta.input_wh),
            "padding": meta.padding, "flip_test": meta.flip_test, "heatmap_shape": [k, h, w],
            "bytes_on_disk": size, "heatmap_bytes": int(self._hm.id.get_storage_size()),
            "bytes_per_instance": size / n_done if n_done else None,
            "raw_fp32_bytes": 2 * raw16, "raw_fp16_bytes": raw16,
            "compression_ratio_fp16": raw16 / size if n_done else None,
            "codec": attrs.get("codec"), "format_version": attrs.get("format_version"),
            "attrs": {key: (v.tolist() if isinstance(v, np.ndarray) else v)
                      for key, v in attrs.items()},
        }


def open_store(path: Path) -> StoreReader:
    return StoreReader(Path(path))


def check_compatible(path: Path, meta: StoreMeta, threshold: float | None = None) -> str:
    """'missing', 'complete' or 'partial'; UniError naming the field when built differently
    (also the quantisation threshold, when given)."""
    path = Path(path)
    if not path.exists():
        return "missing"
    r = open_store(path)
    for name in IDENTITY:
        have, want = getattr(r.meta, name), getattr(meta, name)
        if have != want:
            raise UniError(f"{path}: built with {name} {have!r}, now {want!r}")
    have = float(r.attrs.get("threshold", THRESHOLD))
    if threshold is not None and not np.isclose(have, threshold, rtol=0, atol=1e-9):
        raise UniError(f"{path}: built with threshold {have:.6g}, now {threshold:.6g}")
    return "complete" if r.complete else "partial"
