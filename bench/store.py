"""The soft-label store on real teacher outputs: size per codec, decode error, random reads.

    .venv/bin/python bench/store.py [--instances 1000] [--codecs zstd-1 zstd-3 ...]

Maps: the demo's two teachers (flip test on, as cache-teachers runs them) over the demo's COCO
and MPII training persons. For each codec (quantised uint8, one instance per chunk, fletcher32
— stores.schema): bytes per instance against raw fp32 / fp16 (goal ≤ 1/20 of fp16),
write rate, shuffled random reads from one process (goal ≥ 50k instances/s) and from 2
DataLoader workers. Decode error is the quantisation's (the codecs are lossless): max abs
error, KL divergence as the KD loss sees it, argmax shift in heatmap pixels (goal ≤ 0.05 mean).
"""

from __future__ import annotations

import argparse
import time
from dataclasses import asdict
from pathlib import Path

import common
import h5py
import hdf5plugin
import numpy as np
import torch

from uniskel.core.crops import crop_person, read_image
from uniskel.core.datasets import load_dataset
from uniskel.core.geometry import compose, crop_to_heatmap
from uniskel.core.heatmaps import decode_heatmaps
from uniskel.pipeline.teachers import Teacher
from uniskel.stores import encode
from uniskel.stores.create import create_store
from uniskel.stores.reader import open_store
from uniskel.stores.schema import StoreMeta
from uniskel.stores.writer import StoreWriter

BETA = 10.0  # the KD loss's sharpening (student.losses)
CODECS = ("zstd-1", "zstd-3", "zstd-9", "lz4", "blosc-lz4", "blosc-zstd", "gzip-4")


def teacher_maps(path: Path, instances, batch: int = 32) -> tuple[Teacher, np.ndarray, np.ndarray]:
    """(teacher, maps (N, K, h, w) float32, affines (N, 2, 3)) — what cache-teachers stores."""
    t = Teacher(path, threads=0)
    to_grid = crop_to_heatmap(t.info.input_wh, t.heatmap_wh)
    maps, affines, image, src = [], [], None, None
    for s in range(0, len(instances), batch):
        crops = []
        for inst in instances[s:s + batch]:
            if inst.image_path != src:
                image, src = read_image(inst.image_path), inst.image_path
            crop, a = crop_person(image, inst.bbox, t.info.input_wh, t.info.padding)
            crops.append(crop)
            affines.append(compose(to_grid, a))
        maps.append(t.predict(np.stack(crops), flip_test=True))
    return t, np.concatenate(maps), np.asarray(affines)


def decode_error(maps: np.ndarray) -> dict[str, float]:
    """Quantise + dequantise maps (N, K, h, w) → error figures over channels with a peak."""
    q, scales = encode.quantize(maps)
    back = encode.dequantize(q, scales)
    n, k = maps.shape[:2]
    peak = maps.max(axis=(2, 3))  # (N, K)
    alive = peak > 1e-6
    err = np.abs(back - maps).max(axis=(2, 3))  # (N, K)
    rel = err[alive] / peak[alive]
    # KL(p ‖ q) of the KD loss's distributions: softmax(β · peak-normalised map).
    norm = np.where(alive, peak, 1.0)[:, :, None, None]
    lp = torch.log_softmax(torch.from_numpy(BETA * maps / norm).reshape(n, k, -1), -1)
    lq = torch.log_softmax(torch.from_numpy(BETA * back / norm).reshape(n, k, -1), -1)
    kl = (lp.exp() * (lp - lq)).sum(-1).numpy()[alive]
    c0, _ = decode_heatmaps(maps)
    c1, _ = decode_heatmaps(back)
    shift = np.linalg.norm(c1 - c0, axis=-1)[alive]
    return {"max_abs": float(err.max()), "max_rel": float(rel.max()),
            "kl_mean": float(kl.mean()), "kl_max": float(kl.max()),
            "shift_mean": float(shift.mean()), "shift_max": float(shift.max()),
            "shift_any": float((shift > 0).mean()), "channels": int(alive.sum())}


class _Rows(torch.utils.data.Dataset):
    """Store rows as a map-style dataset (the reader opens its own handle in each worker)."""

    def __init__(self, reader):
        self.reader = reader

    def __len__(self) -> int:
        return len(self.reader)

    def __getitem__(self, row: int) -> np.ndarray:
        return self.reader.read(row)[0]


def loader_rate(path: Path, workers: int, batch: int = 32, repeats: int = 3) -> float:
    """Instances/s reading every row in shuffled order through a DataLoader, `repeats` epochs."""
    reader = open_store(path)
    ds = _Rows(reader)
    loader = torch.utils.data.DataLoader(
        ds, batch, shuffle=True, num_workers=workers, persistent_workers=workers > 0,
        generator=torch.Generator().manual_seed(0))
    for _ in loader:  # workers started, files opened, page cache warm
        pass
    t0 = time.perf_counter()
    for _ in range(repeats):
        for _ in loader:
            pass
    return repeats * len(ds) / (time.perf_counter() - t0)


def bench_codec(t: Teacher, maps: np.ndarray, affines: np.ndarray, codec: str, path: Path
                ) -> dict[str, float]:
    n = len(maps)
    k, h, w = maps.shape[1:]
    meta = StoreMeta(t.info.name, t.sha256, asdict(t.info), t.info.skeleton, "bench",
                        "bench", t.info.input_wh, t.info.padding, True, (k, h, w))
    path.unlink(missing_ok=True)
    create_store(path, meta, np.arange(n), codec=codec)
    t0 = time.perf_counter()
    with StoreWriter(path) as wr:
        for s in range(0, n, 32):
            wr.write(np.arange(s, min(s + 32, n)), maps[s:s + 32], affines[s:s + 32])
        wr.finalize()
    t_write = time.perf_counter() - t0
    r = open_store(path)
    order = np.random.default_rng(0).permutation(np.tile(np.arange(n), 3))
    for row in order[:n]:  # warm: handle opened, page cache
        r.read(row)
    t0 = time.perf_counter()
    for row in order:
        r.read(row)
    t_read = time.perf_counter() - t0
    t0 = time.perf_counter()
    for row in order:
        r.read_raw(row)
    t_raw = time.perf_counter() - t0
    with h5py.File(path) as f:
        hm_bytes = f["heatmaps"].id.get_storage_size()
        dsid = f["heatmaps"].id
        t0 = time.perf_counter()
        for row in order:  # the compressed chunk only: what HDF5 costs without decoding
            dsid.read_direct_chunk((int(row), 0, 0, 0))
        t_direct = time.perf_counter() - t0
    return {"file": path.stat().st_size / n, "heatmaps": hm_bytes / n, "write": n / t_write,
            "read": len(order) / t_read, "read_raw": len(order) / t_raw,
            "direct": len(order) / t_direct}


def threshold_sweep(maps: np.ndarray, path: Path, thresholds=(1, 2, 4, 8, 16, 32)
                    ) -> list[list[str]]:
    """Bytes per instance (default codec, heatmaps only) and error against the zeroing threshold
    (in 1/255 of the channel peak) — what a higher stores.encode.THRESHOLD would buy."""
    n, k = maps.shape[:2]
    peak = maps.max(axis=(2, 3))
    norm = np.where(peak > 1e-6, peak, 1.0)[:, :, None, None]
    lp = torch.log_softmax(torch.from_numpy(BETA * maps / norm).reshape(n, k, -1), -1)
    c0, _ = decode_heatmaps(maps)
    rows = []
    for thr in thresholds:
        q, scales = encode.quantize(maps, thr / 255)
        back = encode.dequantize(q, scales)
        with h5py.File(path, "w") as f:
            ds = f.create_dataset("x", data=q, chunks=(1, *q.shape[1:]), fletcher32=True,
                                  **dict(encode.CODECS[encode.CODEC]()))
            f.flush()
            size = ds.id.get_storage_size() / n
        lq = torch.log_softmax(torch.from_numpy(BETA * back / norm).reshape(n, k, -1), -1)
        kl = (lp.exp() * (lp - lq)).sum(-1).numpy()
        shift = np.linalg.norm(decode_heatmaps(back)[0] - c0, axis=-1)
        mark = " (default)" if abs(thr / 255 - encode.THRESHOLD) < 1e-9 else ""
        rows.append([f"{thr:g}/255{mark}", f"{(q > 0).mean():.1%}", f"{size:,.0f}",
                     f"{2 * maps[0].size / size:.1f}", f"{kl.mean():.1e} / {kl.max():.1e}",
                     f"{shift.mean():.4f}"])
    return rows


def fp16_size(maps: np.ndarray, path: Path) -> float:
    """Bytes per instance of the unquantised maps as fp16 + zstd-3, one instance per chunk."""
    with h5py.File(path, "w") as f:
        ds = f.create_dataset("x", data=maps.astype(np.float16), chunks=(1, *maps.shape[1:]),
                              **hdf5plugin.Zstd(clevel=3))
        f.flush()
        size = ds.id.get_storage_size()
    return size / len(maps)


def run(args: argparse.Namespace) -> str:
    demo = common.demo_dir(args)
    instances = []
    for kind in ("coco", "mpii"):
        instances += load_dataset(common.spec(demo, kind, "train")).instances
    instances = sorted(instances, key=lambda i: str(i.image_path))
    if len(instances) > args.instances:
        keep = np.random.default_rng(0).choice(len(instances), args.instances, replace=False)
        instances = [instances[i] for i in sorted(keep)]
    common.say(f"store: {len(instances)} persons × 2 teachers, codecs {', '.join(args.codecs)}")
    load_before = common.load()
    runs = [(path, instances, "") for path in common.teachers(demo)]
    real = common.blazepose(args.work)
    if real is not None:
        bp_instances = [i for spec in real[1] for i in load_dataset(spec).instances]
        runs.append((real[0], bp_instances, "real pretrained, "))
    errors, sizes = [], []
    chosen, sweep = {}, []
    for path, insts, note in runs:
        t, maps, affines = teacher_maps(path, insts)
        n_real = len(maps)
        if n_real < len(instances):  # few real persons: tile them (chunks compress one by one)
            reps = -(-len(instances) // n_real)
            maps = np.tile(maps, (reps, 1, 1, 1))[:len(instances)]
            affines = np.tile(affines, (reps, 1, 1))[:len(instances)]
        k, h, w = maps.shape[1:]
        fp32 = 4 * k * h * w
        name = f"{t.info.name} ({note}{k}×{h}×{w})"
        errors.append([name, *_error_cells(decode_error(maps[:n_real]))])
        sweep += [[name, *row] for row in threshold_sweep(maps[:n_real], args.work / "sweep.h5")]
        f16 = fp16_size(maps, args.work / "fp16.h5")
        sizes.append([name, "raw fp32 / raw fp16", f"{fp32:,} / {fp32 // 2:,}", "1.0 / 2.0",
                      "—", "—", "—", "—"])
        sizes.append([name, "fp16 + zstd-3, not quantised", f"{f16:,.0f}",
                      f"{fp32 / 2 / f16:.1f}", "—", "—", "—", "—"])
        for codec in args.codecs:
            m = bench_codec(t, maps, affines, codec, args.work / f"store_{codec}.h5")
            if codec == encode.CODEC:
                m["dl2"] = loader_rate(args.work / f"store_{codec}.h5", 2)
                m["dl0"] = loader_rate(args.work / f"store_{codec}.h5", 0)
                chosen[name] = (m, fp32)
            mark = " (default)" if codec == encode.CODEC else ""
            sizes.append([name, codec + mark, f"{m['file']:,.0f}", f"{fp32 / 2 / m['file']:.1f}",
                          f"{m['write']:,.0f}", f"{m['read']:,.0f}", f"{m['read_raw']:,.0f}",
                          f"{m['dl2']:,.0f}" if "dl2" in m else "—"])
    load_after = common.load()
    lines = []
    for name, (m, fp32) in chosen.items():
        ratio = fp32 / 2 / m["file"]
        lines.append(
            f"- {name}, {encode.CODEC}: **{ratio:.1f}× smaller than fp16** (goal ≥ 20: "
            f"{common.verdict(ratio >= 20)}); **{m['read']:,.0f} random reads/s** in one process "
            f"(goal ≥ 50k: {common.verdict(m['read'] >= 5e4)}; the compressed chunk alone, "
            f"undecoded, reads at {m['direct']:,.0f}/s, so decompression and checksum are "
            f"{1 - m['read_raw'] / m['direct']:.0%} of read_raw()); 2 DataLoader workers "
            f"{m['dl2']:,.0f}/s = {m['dl2'] / m['dl0']:.2f}× the same DataLoader in-process "
            f"({m['dl0']:,.0f}/s).")
    return f"""## 2. Store

{len(instances)} real teacher outputs per teacher (the demo's teachers, flip test on, over the
demo's COCO + MPII training persons), one instance per chunk, fletcher32 on; reads in shuffled
order, file in the page cache, 3 passes. Also the real pretrained BlazePose-full
(`samples/models`, sigmoid heatmaps) over the real COCO + MPII sample persons (
{len(runs[-1][1]) if real else 0} people, their maps tiled to {len(instances)} rows for the rates;
errors and the threshold sweep use each person once). {load_before} before, {load_after} after.

{common.table(["teacher (K×h×w)", "codec", "bytes / instance", "× smaller than fp16",
               "write inst/s", "read() inst/s", "read_raw() inst/s", "2 DataLoader workers inst/s"],
              sizes)}

read() = uint8 chunk + dequantise to float32 (what training uses); read_raw() = the uint8 chunk
only. Bytes are the whole file (scales, affines, ids, attributes included) per instance.

{chr(10).join(lines)}

Why goals are missed, measured here: the ≥ 20× goal fails only for the demo's teachers, whose
maps are broad, noisy blobs (small networks trained for minutes with an MSE loss on synthetic
data): far more of their values survive the threshold than a real teacher's (the "non-zero
values" column of the sweep below), and those values carry near-random low bits that no lossless
codec removes (a delta filter before zstd measured ≤ 5 % smaller). `--threshold` trades size for
KL as the sweep shows. Random reads are bound by decompression on this CPU (see the undecoded
rate above); lz4 reads faster but stores more. Training needs one read per sample and teacher,
two orders of magnitude fewer reads per second than one process serves (section 3's step
rates). The 2-worker DataLoader rate is lower than in-process because every float32 map is
pickled through shared memory between processes; reading is not the limit there.

Decode error (quantisation: uint8 per keypoint scale, values under
{encode.THRESHOLD * 255:g}/255 of the peak zeroed;
the same for every codec, which are lossless), over every keypoint channel with a peak:

{common.table(["teacher", "channels", "max abs error", "max error / peak",
               "KL(p‖q) mean / max (β = 10, as the KD loss)", "argmax shift mean / max (px)",
               "channels whose argmax moved"], errors)}

{_verdict_shift(errors)}

What the compression ratio is made of: the zeroing threshold against size and error
({encode.CODEC}, heatmap bytes only, without the per-instance scales / affines / chunk index):

{common.table(["teacher", "threshold × peak", "non-zero values", "heatmap bytes / instance",
               "× smaller than fp16", "KL mean / max (β = 10)", "argmax shift mean (px)"],
              sweep)}
"""


def _error_cells(e: dict) -> list[str]:
    return [f"{e['channels']:,}", f"{e['max_abs']:.2e}", f"{e['max_rel']:.4f}",
            f"{e['kl_mean']:.1e} / {e['kl_max']:.1e}",
            f"{e['shift_mean']:.4f} / {e['shift_max']:.2f}", f"{100 * e['shift_any']:.2f} %"]


def _verdict_shift(errors: list[list[str]]) -> str:
    worst = max(float(r[5].split(" / ")[0]) for r in errors)
    return (f"Argmax shift (heatmap px, the refined decode of core.heatmaps): worst mean "
            f"{worst:.4f} px (goal ≤ 0.05: {common.verdict(worst <= 0.05)}).")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--instances", type=int, default=1000)
    ap.add_argument("--codecs", nargs="+", default=list(CODECS), choices=list(encode.CODECS))
    common.main(run, ap)
