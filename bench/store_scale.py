"""The store at scale: writer ingest from ready results, bytes a worker ships per instance, and
the cost of checking a store at start (first and second, trusted, check).

    .venv/bin/python bench/store_scale.py [--instances 6400] [--verify-rows 20000] [--work DIR]

Maps: 17×64×48 teacher-like heatmaps (a Gaussian bump per keypoint, peaks 0.1–1, background
noise partly above the store's threshold), batches of 32 as stage one writes them. Side by side
in one run: StoreWriter.write fed float32 batches (the writer quantises and compresses, as
before issue 14) and StoreWriter.write_encoded fed EncodedRows a worker made (encode_rows), for
contiguous rows (a store whose rows are in batch order) and for rows scattered over the store.
Bytes per instance: a pickled EncodedRows batch against the pickled float32 maps it replaces.
Goals (issue 14): ingest ≥ 20,000 instances/s, ≤ 1/20 of the float32 bytes, second check of a
verified store ≤ 1 s. Functions return dicts, for bench/scale.py's tables.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import tempfile
import time
from pathlib import Path

import numpy as np

from uniskel.core.heatmaps import gaussian_heatmaps
from uniskel.stores.create import create_store
from uniskel.stores.encode import encode_rows
from uniskel.stores.reader import open_store
from uniskel.stores.schema import StoreMeta
from uniskel.stores.writer import StoreWriter

SHAPE = (17, 64, 48)  # (K, H, W)
BATCH = 32


def _meta(shape: tuple[int, int, int] = SHAPE) -> StoreMeta:
    return StoreMeta(teacher_name="bench", teacher_sha256="0" * 64, teacher_metadata={},
                     skeleton="coco17", dataset_id="0" * 64, dataset_spec="coco:bench.json",
                     input_wh=(192, 256), padding=1.25, flip_test=True, heatmap_shape=shape)


def teacher_like_maps(n: int, shape: tuple[int, int, int] = SHAPE, seed: int = 0) -> np.ndarray:
    """(n, K, H, W) float32: one Gaussian bump per keypoint on low noise."""
    k, h, w = shape
    rng = np.random.default_rng(seed)
    out = np.empty((n, k, h, w), np.float32)
    for i in range(n):
        pts = rng.uniform((0, 0), (w - 1, h - 1), (k, 2))
        g = gaussian_heatmaps(pts, np.ones(k, bool), (w, h), sigma=2.0)
        out[i] = g * rng.uniform(0.1, 1.0, (k, 1, 1)) + rng.uniform(0, 0.004, (k, h, w))
    return out


def writer_ingest(n: int = 6400, work: Path | None = None, distinct: int = 256) -> dict:
    """Instances/s into a store: float32 path vs ready EncodedRows (contiguous and scattered
    rows), and worker → writer bytes per instance. `distinct` maps are made and cycled."""
    work = Path(work or tempfile.mkdtemp(prefix="uni-store-scale-"))
    maps = teacher_like_maps(distinct)
    affines = np.tile(np.eye(2, 3), (BATCH, 1, 1))
    batches = [maps[(i * BATCH) % distinct:(i * BATCH) % distinct + BATCH]
               for i in range(n // BATCH)]
    t0 = time.perf_counter()
    encoded = [encode_rows(b) for b in batches]  # the workers' side
    encode_s = time.perf_counter() - t0
    scattered = np.random.default_rng(1).permutation(n).reshape(-1, BATCH)
    rates = {}
    for name, rows_of, feed in (
            ("float32", lambda i: np.arange(i * BATCH, (i + 1) * BATCH), "write"),
            ("encoded", lambda i: np.arange(i * BATCH, (i + 1) * BATCH), "write_encoded"),
            ("encoded, scattered rows", lambda i: np.sort(scattered[i]), "write_encoded")):
        path = work / f"{feed}-{len(rates)}.h5"
        path.unlink(missing_ok=True)
        create_store(path, _meta(), np.arange(n))
        with StoreWriter(path) as w:
            t0 = time.perf_counter()
            for i in range(len(batches)):
                if feed == "write":
                    w.write(rows_of(i), batches[i], affines)
                else:
                    w.write_encoded(rows_of(i), encoded[i], affines)
            rates[name] = len(batches) * BATCH / (time.perf_counter() - t0)
        size = path.stat().st_size
        path.unlink()
    f32 = sum(len(pickle.dumps((b, affines))) for b in batches[:20]) / (20 * BATCH)
    enc = sum(len(pickle.dumps((e, affines))) for e in encoded[:20]) / (20 * BATCH)
    return {"instances": n, "batch": BATCH, "shape": list(SHAPE),
            "ingest_float32_per_s": rates["float32"],
            "ingest_encoded_per_s": rates["encoded"],
            "ingest_encoded_scattered_per_s": rates["encoded, scattered rows"],
            "speedup": rates["encoded"] / rates["float32"],
            "encode_per_s_one_worker": n / encode_s,
            "bytes_per_instance_float32": f32, "bytes_per_instance_encoded": enc,
            "bytes_ratio": enc / f32, "store_bytes_per_instance": size / n}


def verify_cost(rows: int = 20_000, work: Path | None = None) -> dict:
    """Seconds and rows read of a training start's store check: on a fresh store as uni's
    writer leaves it (its record vouches for every row it wrote), on the same store without
    the record (as if another program wrote it: every chunk read, then recorded) and again
    (the record trusted)."""
    work = Path(work or tempfile.mkdtemp(prefix="uni-store-scale-"))
    path = work / "verify.h5"
    record = Path(str(path) + ".verified")
    for p in (path, record):
        p.unlink(missing_ok=True)
    enc = encode_rows(teacher_like_maps(BATCH))
    create_store(path, _meta(), np.arange(rows))
    affines = np.tile(np.eye(2, 3), (BATCH, 1, 1))
    with StoreWriter(path) as w:
        for start in range(0, rows - rows % BATCH, BATCH):
            w.write_encoded(np.arange(start, start + BATCH), enc, affines)
    out = {"rows": rows - rows % BATCH}
    for name in ("fresh_check_s", "first_check_s", "second_check_s"):
        if name == "first_check_s":
            record.unlink()
        t0 = time.perf_counter()
        reader = open_store(path)  # as a training start does
        found = reader.check(trust=True)
        out[name] = time.perf_counter() - t0
        out[name.replace("_s", "_rows_read")] = found.rows_read
        reader.close()
    for p in (path, record):
        p.unlink(missing_ok=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--instances", type=int, default=6400)
    ap.add_argument("--verify-rows", type=int, default=20_000)
    ap.add_argument("--work", type=Path, default=None)
    args = ap.parse_args()
    if args.work:
        os.makedirs(args.work, exist_ok=True)
    print(json.dumps({"writer": writer_ingest(args.instances, args.work),
                      "verify": verify_cost(args.verify_rows, args.work)}, indent=1))


if __name__ == "__main__":
    main()
