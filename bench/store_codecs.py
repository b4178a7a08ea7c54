"""Measure store codecs and the quantisation threshold on synthetic teacher heatmaps.

    .venv/bin/python bench/store_codecs.py [--n 1000] [--out /tmp/store_bench]

Two kinds of teacher output, like the two teachers of the paper:
- "sigmoid" 17×64×48: per keypoint a Gaussian bump (σ 1.5–3 px, peak 0.4–0.95; occluded ones
  broad and low), sometimes a second weaker bump (another person, left/right confusion), on a
  background of sigmoid(smooth noise around -5.5) ≈ 0.002–0.02 — what a heatmap head gives.
- "simcc" 16×64×64: outer products of two 1-D softmax distributions (bump + logit noise), the
  grid maps a SimCC teacher leaves in the store.
For each codec: bytes per instance, write rate through StoreWriter (quantise, compress, flush),
random-read rate through StoreReader.read_raw and .read (single process, shuffled rows, file in
the page cache). Then the threshold: size and the fraction of heatmap mass it zeroes.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import h5py
import hdf5plugin
import numpy as np
from scipy.ndimage import gaussian_filter

from uniskel.stores import encode
from uniskel.stores.create import create_store
from uniskel.stores.reader import open_store
from uniskel.stores.schema import StoreMeta
from uniskel.stores.writer import StoreWriter


def _bump(xs: np.ndarray, mu: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    return np.exp(-((xs[None, :] - mu[:, None]) ** 2) / (2 * sigma[:, None] ** 2))


def sigmoid_maps(n: int, k: int = 17, h: int = 64, w: int = 48, seed: int = 0) -> np.ndarray:
    """(n, k, h, w) float32 heatmap-head teacher maps (see module docstring)."""
    rng = np.random.default_rng(seed)
    xs, ys = np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32)
    out = np.empty((n, k, h, w), np.float32)
    for i in range(n):
        logit = rng.normal(-5.5, 0.7, (k, h, w)).astype(np.float32)
        bg = 1 / (1 + np.exp(-gaussian_filter(logit, (0, 1.5, 1.5)) * 1.0))
        visible = rng.random(k) < 0.8
        peak = np.where(visible, rng.uniform(0.4, 0.95, k), rng.uniform(0.05, 0.25, k))
        sigma = np.where(visible, rng.uniform(1.5, 3.0, k), rng.uniform(3.0, 6.0, k))
        mx, my = rng.uniform(0, w - 1, k), rng.uniform(0, h - 1, k)
        maps = peak[:, None, None] * _bump(ys, my, sigma)[:, :, None] * \
            _bump(xs, mx, sigma)[:, None, :]
        second = rng.random(k) < 0.3
        if second.any():
            m2x, m2y = rng.uniform(0, w - 1, k), rng.uniform(0, h - 1, k)
            maps += (second * rng.uniform(0.1, 0.4, k))[:, None, None] * \
                _bump(ys, m2y, sigma)[:, :, None] * _bump(xs, m2x, sigma)[:, None, :]
        out[i] = np.maximum(maps, bg)
    return out


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def simcc_maps(n: int, k: int = 16, h: int = 64, w: int = 64, seed: int = 1) -> np.ndarray:
    """(n, k, h, w) float32 grid maps of a SimCC teacher: p_y ⊗ p_x of noisy 1-D softmaxes."""
    rng = np.random.default_rng(seed)
    xs, ys = np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32)
    mx, my = rng.uniform(0, w - 1, (n, k)), rng.uniform(0, h - 1, (n, k))
    sharp = rng.uniform(4, 10, (n, k, 1))
    sx = rng.uniform(1.0, 3.0, (n, k, 1))
    lx = sharp * np.exp(-((xs - mx[..., None]) ** 2) / (2 * sx**2)) + rng.normal(0, .5, (n, k, w))
    ly = sharp * np.exp(-((ys - my[..., None]) ** 2) / (2 * sx**2)) + rng.normal(0, .5, (n, k, h))
    return (_softmax(ly)[..., :, None] * _softmax(lx)[..., None, :]).astype(np.float32)


def _meta(maps: np.ndarray) -> StoreMeta:
    k, h, w = maps.shape[1:]
    return StoreMeta("bench", "0" * 64, {}, "coco17" if k == 17 else "mpii16", "0" * 64,
                        "bench", (w * 4, h * 4), 1.25, True, (k, h, w))


def bench_codec(maps: np.ndarray, codec: str, path: Path, batch: int = 32) -> dict:
    n = len(maps)
    affines = np.tile(np.eye(2, 3), (n, 1, 1))
    create_store(path, _meta(maps), np.arange(n), codec=codec)
    t0 = time.perf_counter()
    with StoreWriter(path) as wr:
        for s in range(0, n, batch):
            wr.write(np.arange(s, min(s + batch, n)), maps[s:s + batch], affines[s:s + batch])
        wr.finalize()
    t_write = time.perf_counter() - t0
    r = open_store(path)
    order = np.random.default_rng(0).permutation(n)
    r.read_raw(0)  # opens the handle
    t0 = time.perf_counter()
    for row in order:
        r.read_raw(row)
    t_raw = time.perf_counter() - t0
    t0 = time.perf_counter()
    for row in order:
        r.read(row)
    t_read = time.perf_counter() - t0
    with h5py.File(path) as f:
        hm_bytes = f["heatmaps"].id.get_storage_size()
    return {"codec": codec, "bytes": hm_bytes / n, "file": path.stat().st_size / n,
            "write": n / t_write, "read_raw": n / t_raw, "read": n / t_read}


def _compressed_size(arr: np.ndarray, path: Path, **codec) -> float:
    """Bytes per instance of arr (n, ...) chunked one instance per chunk."""
    with h5py.File(path, "w") as f:
        ds = f.create_dataset("x", data=arr, chunks=(1, *arr.shape[1:]), **codec)
        f.flush()
        size = ds.id.get_storage_size()
    return size / len(arr)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--out", type=Path, default=Path(tempfile.mkdtemp(prefix="store_bench_")))
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for kind, maps in (("sigmoid", sigmoid_maps(args.n)), ("simcc", simcc_maps(args.n))):
        k, h, w = maps.shape[1:]
        fp32 = 4 * k * h * w
        print(f"\n## {kind} {k}x{h}x{w}, {args.n} instances: raw fp32 {fp32} B, fp16 "
              f"{fp32 // 2} B, uint8 {fp32 // 4} B per instance")
        fp16 = maps.astype(np.float16)
        for name, codec in (("fp16 blosc-lz4-bitshuffle (no quantisation)", hdf5plugin.Blosc(
                "lz4", 5, hdf5plugin.Blosc.BITSHUFFLE)), ("fp16 zstd-3", hdf5plugin.Zstd(3))):
            b = _compressed_size(fp16, args.out / "fp16.h5", **codec)
            print(f"| {name} | {b:,.0f} | {fp32 / 2 / b:.1f}x |")
        print("\n| codec | bytes/inst (heatmaps) | file bytes/inst | × vs fp16 | × vs fp32 "
              "| write inst/s | read_raw inst/s | read inst/s |")
        print("|---|---|---|---|---|---|---|---|")
        for codec in encode.CODECS:
            m = bench_codec(maps, codec, args.out / f"{kind}_{codec}.h5")
            print(f"| {codec} | {m['bytes']:,.0f} | {m['file']:,.0f} | "
                  f"{fp32 / 2 / m['file']:.1f} | {fp32 / m['file']:.1f} | {m['write']:,.0f} | "
                  f"{m['read_raw']:,.0f} | {m['read']:,.0f} |", flush=True)
        print("\n| threshold (× channel max) | zstd-3 bytes/inst | blosc-lz4-bitshuffle "
              "bytes/inst | mass zeroed | max abs err / peak |")
        print("|---|---|---|---|---|")
        peak = maps.max(axis=(2, 3), keepdims=True)
        for thr in (0.0, 0.5 / 255, 1 / 255, 2 / 255, 4 / 255):
            q, s = encode.quantize(maps, thr)
            back = encode.dequantize(q, s)
            zeroed = (maps * ((q == 0) & (maps >= 0.5 * peak / 255))).sum() / maps.sum()
            err = (np.abs(back - maps) / peak).max()
            bz = _compressed_size(q, args.out / "t.h5", **hdf5plugin.Zstd(3))
            bl = _compressed_size(q, args.out / "t.h5", **encode.CODECS["blosc-lz4-bitshuffle"]())
            print(f"| {thr * 255:.1f}/255 | {bz:,.0f} | {bl:,.0f} | {zeroed:.2%} | "
                  f"{err * 255:.2f}/255 |", flush=True)


if __name__ == "__main__":
    main()
