"""The soft-label store's format: one HDF5 file of teacher heatmaps per (teacher, dataset).
stores/create.py creates a store, stores/writer.py writes it, stores/reader.py reads it,
stores/encode.py makes the bytes of a row, stores/verify.py checks a store.

Schema (format_version 2) — readable with plain h5py (``import hdf5plugin`` first, for the
compression filter); N instances, K keypoints in the teacher's native order, H×W heatmap grid:

  heatmaps      (N, K, H, W) uint8    chunks (1, K, H, W): one instance per chunk, so a shuffled
                                      read decodes exactly one chunk; compressed (attribute
                                      codec), fletcher32 checksum on every chunk.
  scales        (N, K) float32        value = uint8 × scale; scale = channel max / 255 (0 for an
                                      all-zero channel), so each channel's peak is stored as 255.
  affines       (N, 2, 3) float64     image pixels → heatmap grid pixels (core.geometry
                                      conventions); a target is only valid for this view.
  instance_ids  (N,) int64            the dataset's instance ids; row r holds instance_ids[r].
  done          (N,) uint8            1 = row r is written (data flushed before done is set).
  row_crc       (N,) uint32           CRC-32 of row r's scales, affine, instance id and done
                                      (encode.row_crcs); checked by every read.

  attributes    format_version (int), every StoreMeta field (dicts and tuples as JSON strings,
                flip_test as a bool), skeleton_def (JSON: the teacher's whole skeleton
                definition, core.skeletons Skeleton.to_json), software_version,
                created / updated / completed (UTC ISO 8601, completed "" until finished),
                complete (0/1: 1 once every row is done), skipped (JSON object {instance id:
                reason}: rows whose image could not be read, not done, retried by the next
                run), codec (an encode.CODECS key), threshold (float).
  A reader must not use rows whose done is 0 (StoreReader.read raises UniError for them).
  All small datasets carry fletcher32 too, which misses a 16-bit word going 0x0000 ↔ 0xffff
  (its sums are mod 65535): row_crc sees that. A store lacking any of these is refused.

Decoding row r:  heatmaps[r].astype(float32) * scales[r][:, None, None].

Quantisation: per instance and keypoint, values under threshold × channel max are zeroed first
(teacher background noise would otherwise fill every byte and ruin compression), then
round(value / scale), capped at 254 except the first maximum (255). Error per value ≤ scale / 2
above the threshold (≤ scale next to the peak), ≤ threshold × max under it. Why this codec and
threshold, and why workers encode: docs/conventions.md "Caching soft labels".
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path

import h5py
import numpy as np

from uniskel.core.errors import UniError
from uniskel.core.skeletons import SKELETONS, Skeleton

FORMAT_VERSION = 2  # the one format this uni reads and writes
DATASETS = ("heatmaps", "scales", "affines", "instance_ids", "done", "row_crc")
# The store's own attributes besides format_version and StoreMeta's fields; those a reader or
# writer uses must be present (STORE_ATTRS_REQUIRED).
STORE_ATTRS = ("format_version", "software_version", "created", "updated", "completed",
               "complete", "skipped", "codec", "threshold")
STORE_ATTRS_REQUIRED = ("complete", "skipped", "codec", "threshold")


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
    # the store); built in code without one, the known skeleton of that name (None if unknown).
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
_JSON_FIELDS = ("teacher_metadata", "input_wh", "heatmap_shape", "skeleton_def")


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
        if f.name not in attrs:
            raise UniError(f"{where}: attribute {f.name!r} missing")
        v = attrs[f.name]
        if isinstance(v, bytes):
            v = v.decode()
        if f.name in _JSON_FIELDS:
            try:
                v = json.loads(v)
            except (TypeError, ValueError):
                raise UniError(f"{where}: attribute {f.name!r} is not JSON") from None
        if f.name == "skeleton_def":
            v = Skeleton.from_json(v, f"{where}: attribute 'skeleton_def'")
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
                       f"reads {FORMAT_VERSION}); upgrade uni to read it")
    if version != FORMAT_VERSION:
        raise UniError(f"{where}: format_version {version}, this uni reads {FORMAT_VERSION}")
    for name in DATASETS:
        if name not in f:
            raise UniError(f"{where}: dataset {name!r} missing")
    for name in STORE_ATTRS_REQUIRED:
        if name not in f.attrs:
            raise UniError(f"{where}: attribute {name!r} missing")
    meta = meta_from_attrs(f.attrs, where)
    n = f["instance_ids"].shape[0]
    want = {"heatmaps": (n, *meta.heatmap_shape), "scales": (n, meta.heatmap_shape[0]),
            "affines": (n, 2, 3), "done": (n,), "row_crc": (n,)}
    for name, shape in want.items():
        if f[name].shape != shape:
            raise UniError(f"{where}: dataset {name!r} has shape {f[name].shape}, "
                           f"expected {shape}")
    return meta
