"""The bytes of a store row: quantisation, the heatmap codecs, the finished chunk bytes a worker
ships to the writer (`encode_rows`), and the per-row metadata checksum (`row_crcs`).

The format these bytes belong to is described in stores/schema.py; why workers encode and the
writer only writes: docs/conventions.md "Caching soft labels".
"""

from __future__ import annotations

import itertools
import os
import threading
import zlib
from dataclasses import dataclass

import h5py
import hdf5plugin
import numpy as np

from uniskel.core.errors import UniError

THRESHOLD = 4.0 / 255.0  # default × channel max under which values are zeroed
# Compression filters for the heatmaps (hdf5plugin); stores record the name in attr "codec".
_Blosc = hdf5plugin.Blosc
CODECS = {
    "zstd-1": lambda: hdf5plugin.Zstd(clevel=1),
    "zstd-3": lambda: hdf5plugin.Zstd(clevel=3),
    "zstd-9": lambda: hdf5plugin.Zstd(clevel=9),
    "lz4": lambda: hdf5plugin.LZ4(),
    "blosc-lz4": lambda: _Blosc(cname="lz4", clevel=5, shuffle=_Blosc.SHUFFLE),
    "blosc-lz4-bitshuffle": lambda: _Blosc(cname="lz4", clevel=5, shuffle=_Blosc.BITSHUFFLE),
    "blosc-zstd": lambda: _Blosc(cname="zstd", clevel=3, shuffle=_Blosc.SHUFFLE),
    "blosc-zstd-bitshuffle": lambda: _Blosc(cname="zstd", clevel=3, shuffle=_Blosc.BITSHUFFLE),
    "gzip-4": lambda: {"compression": "gzip", "compression_opts": 4},
}
CODEC = "zstd-1"


def heatmap_dataset_kwargs(shape_khw: tuple[int, int, int], codec: str) -> dict:
    """h5py create_dataset keywords of a store's `heatmaps` (dtype, chunks, filters): the one
    definition both the store and encode_rows' in-memory twin are made from."""
    if codec not in CODECS:
        raise UniError(f"unknown store codec {codec!r}; known: {', '.join(CODECS)}")
    return dict(dtype=np.uint8, chunks=(1, *shape_khw), fletcher32=True, fillvalue=0,
                **dict(CODECS[codec]()))


def filter_pipeline(ds: h5py.Dataset) -> list[tuple]:
    """(id, flags, values) of each filter of a dataset, in order: what makes its chunk bytes."""
    plist = ds.id.get_create_plist()
    return [tuple(plist.get_filter(i)[:3]) for i in range(plist.get_nfilters())]


def quantize(heatmaps: np.ndarray, threshold: float = THRESHOLD
             ) -> tuple[np.ndarray, np.ndarray]:
    """heatmaps: (n, K, H, W) float ≥ 0 → (uint8 (n, K, H, W), scales (n, K) float32)."""
    hm = np.maximum(np.asarray(heatmaps, np.float32), 0.0)
    peak = hm.max(axis=(2, 3))  # (n, K)
    # A map peaking below 1e-30 (a sigmoid far below 0) is empty: its scale would underflow
    # float32 (or its inverse overflow), leaving 255 beside a scale of 0.
    peak = np.where(peak >= 1e-30, peak, 0.0).astype(np.float32)
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


@dataclass
class EncodedRows:
    """A batch of rows as the store holds them, made by a worker (encode_rows), written as is by
    StoreWriter.write_encoded. Small to pickle: ~1/80 of the float32 maps (BENCHMARKS.md)."""

    chunks: list[bytes]  # (n,) each row's heatmap chunk: codec-compressed uint8, fletcher32
    scales: np.ndarray  # (n, K) float32
    codec: str  # the CODECS key the chunks are compressed with
    threshold: float  # the quantisation threshold used
    shape: tuple[int, int, int]  # (K, H, W)
    filter_masks: np.ndarray  # (n,) uint32, HDF5's mask of filters skipped per chunk (0: none)

    def mismatch(self, n: int, shape: tuple[int, int, int], codec: str, threshold: float
                 ) -> str | None:
        """Why these rows cannot go into n rows of a store of this shape, codec and
        threshold, or None."""
        if (len(self.chunks) != n or np.shape(self.scales) != (n, shape[0])
                or len(self.filter_masks) != n or tuple(self.shape) != tuple(shape)):
            return (f"{n} rows got {len(self.chunks)} chunks of shape {tuple(self.shape)} and "
                    f"scales {np.shape(self.scales)}; the store holds {tuple(shape)}")
        if self.codec != codec:
            return f"rows encoded with codec {self.codec!r}, the store uses {codec!r}"
        if abs(self.threshold - threshold) > 1e-9:
            return (f"rows encoded with threshold {self.threshold:.6g}, the store uses "
                    f"{threshold:.6g}")
        return None


_TWIN_ROWS = 64  # rows of an in-memory twin; grown for a bigger batch
_twins: dict[tuple, tuple[h5py.File, h5py.Dataset, threading.Lock]] = {}
_twins_lock = threading.Lock()
_twin_names = itertools.count()


def _twin(shape_khw: tuple[int, int, int], codec: str, n: int
          ) -> tuple[h5py.Dataset, threading.Lock]:
    """This process's in-memory dataset with the store's filter pipeline, at least n rows.

    Kept per (pid, K, H, W, codec): creating one costs ~2 ms, a batch of 32 ~8 ms to encode."""
    key = (os.getpid(), tuple(shape_khw), codec)
    with _twins_lock:
        have = _twins.get(key)
        if have is None or have[1].shape[0] < n:
            if have is not None:
                have[0].close()
            rows = max(n, _TWIN_ROWS)
            f = h5py.File(f"uni-twin-{next(_twin_names)}", "w", driver="core", backing_store=False)
            ds = f.create_dataset("heatmaps", (rows, *shape_khw),
                                  **heatmap_dataset_kwargs(shape_khw, codec))
            have = _twins[key] = (f, ds, threading.Lock())
        return have[1], have[2]


def twin_filters(shape_khw: tuple[int, int, int], codec: str) -> list[tuple]:
    """The filter pipeline encode_rows applies for this shape and codec."""
    ds, lock = _twin(shape_khw, codec, 1)
    with lock:
        return filter_pipeline(ds)


def encode_rows(heatmaps: np.ndarray, threshold: float = THRESHOLD, codec: str = CODEC
                ) -> EncodedRows:
    """heatmaps (n, K, H, W) float ≥ 0 → the rows' finished chunk bytes and scales.

    Quantised as the store quantises (`quantize`), then filtered by HDF5 itself in an in-memory
    file with the store's pipeline (codec + fletcher32) and taken back with read_direct_chunk,
    so the bytes are exactly what a store write would put on disk. Worker side: pure, picklable
    in and out; UniError for maps that are not finite (naming the batch row)."""
    hm = np.asarray(heatmaps, np.float32)
    if hm.ndim != 4:
        raise UniError(f"encode_rows: heatmaps must be (n, K, H, W), got shape {hm.shape}")
    bad = np.flatnonzero(~np.isfinite(hm).all(axis=(1, 2, 3)))
    if len(bad):
        raise UniError(f"encode_rows: heatmaps of batch row {bad[0]} not finite")
    n, shape = len(hm), tuple(int(v) for v in hm.shape[1:])
    q, scales = quantize(hm, threshold)
    chunks, masks = [], np.zeros(n, np.uint32)
    if n:
        ds, lock = _twin(shape, codec, n)
        with lock:
            ds[:n] = q
            for i in range(n):
                masks[i], chunk = ds.id.read_direct_chunk((i, 0, 0, 0))
                chunks.append(bytes(chunk))
    return EncodedRows(chunks, scales, codec, float(threshold), shape, masks)


def row_crcs(scales: np.ndarray, affines: np.ndarray, instance_ids: np.ndarray,
             done: np.ndarray) -> np.ndarray:
    """(n,) uint32 CRC-32 of each row's metadata: scales (n, K) float32, affines (n, 2, 3)
    float64, instance id int64 and done uint8, little-endian, in that order. Fletcher-32 on the
    chunks cannot see a 16-bit word going 0x0000 → 0xffff; CRC-32 sees every such change."""
    n = len(instance_ids)
    if n == 0:
        return np.zeros(0, np.uint32)
    rec = np.concatenate([
        np.ascontiguousarray(scales, "<f4").reshape(n, -1).view(np.uint8),
        np.ascontiguousarray(affines, "<f8").reshape(n, 6).view(np.uint8),
        np.ascontiguousarray(instance_ids, "<i8").reshape(n, 1).view(np.uint8),
        np.ascontiguousarray(done, np.uint8).reshape(n, 1),
    ], axis=1)
    return np.fromiter((zlib.crc32(r) for r in rec), np.uint32, n)


def row_crc(scales: np.ndarray, affine: np.ndarray, instance_id: int, done: int) -> int:
    """row_crcs for one row: scales (K,), affine (2, 3); ~2 µs, cheap enough for every read."""
    crc = zlib.crc32(np.ascontiguousarray(scales, "<f4"))
    crc = zlib.crc32(np.ascontiguousarray(affine, "<f8"), crc)
    crc = zlib.crc32(np.int64(instance_id).astype("<i8").tobytes(), crc)
    return zlib.crc32(bytes((int(done) & 0xFF,)), crc)
