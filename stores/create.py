"""Creating an empty soft-label store (format: stores/schema.py), replacing a store by its
rebuild, and the failure type of every store write."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import h5py
import numpy as np

from uniskel.core.errors import UniError, io_reason
from uniskel.core.files import atomic_write
from uniskel.stores.encode import CODEC, CODECS, THRESHOLD, heatmap_dataset_kwargs
from uniskel.stores.schema import FORMAT_VERSION, StoreMeta, meta_to_attrs
from uniskel.stores.verify import move_record, record_new_store

# Rows per chunk of the small per-instance datasets. Each batch rewrites the chunks its rows
# fall in (with their checksums), so smaller is faster to write (BENCHMARKS.md "Row chunks of
# the small datasets") and a chunk torn by a kill resets fewer rows.
META_CHUNK = 1024


class StoreWriteFailed(UniError):
    """HDF5 failed to write a store this process holds open. The writer cuts that handle off
    the file at once (stores/writer.py), yet HDF5 may still crash at interpreter exit over it,
    so the CLI leaves with os._exit after its line."""

    exit_hard = True


def write_failed(path: Path, e: BaseException) -> StoreWriteFailed:
    return StoreWriteFailed(f"{path}: write failed ({io_reason(e)})")


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _software_version() -> str:
    try:
        return version("uniskel")
    except PackageNotFoundError:
        return "unknown"


def create_meta_dataset(f: h5py.File, name: str, shape: tuple, dtype, chunk_rows: int,
                        **kw) -> h5py.Dataset:
    """One of the small per-instance datasets: chunks of `chunk_rows` rows, fletcher32."""
    return f.create_dataset(name, shape, dtype, chunks=(chunk_rows, *shape[1:]),
                            fletcher32=True, **kw)


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
    if meta.skeleton_def is None:
        raise UniError(f"{path}: unknown skeleton {meta.skeleton!r} and no definition of it")
    if meta.skeleton_def.name != meta.skeleton or meta.skeleton_def.num_keypoints != k:
        raise UniError(f"{path}: skeleton definition {meta.skeleton_def.name!r} "
                       f"({meta.skeleton_def.num_keypoints} keypoints) does not match skeleton "
                       f"{meta.skeleton!r} with {k} heatmap channels")
    n = len(ids)
    c = min(n, META_CHUNK)

    def write(tmp: Path) -> None:
        try:
            f = h5py.File(str(tmp), "w")
        except OSError as e:
            raise UniError(f"{path}: cannot create the store ({io_reason(e)})") from None
        with f:
            f.create_dataset("heatmaps", (n, k, h, w), **heatmap_dataset_kwargs((k, h, w), codec))
            create_meta_dataset(f, "scales", (n, k), np.float32, c)
            create_meta_dataset(f, "affines", (n, 2, 3), np.float64, c)
            create_meta_dataset(f, "instance_ids", (n,), np.int64, c, data=ids)
            create_meta_dataset(f, "done", (n,), np.uint8, c, fillvalue=0)
            create_meta_dataset(f, "row_crc", (n,), np.uint32, c, fillvalue=0)
            a = f.attrs
            a["format_version"] = FORMAT_VERSION
            for key, value in meta_to_attrs(meta).items():
                a[key] = value
            a["software_version"] = _software_version()
            a["created"] = a["updated"] = now()
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
        raise write_failed(path, e) from None
    record_new_store(path, n)


def replace_store(work: Path, path: Path) -> None:
    """A rebuild's finished store at `work` renamed over `path`, its verification record with
    it. The caller holds `path`'s lock (no other writer may have `path` open meanwhile)."""
    atomic_write(path, lambda tmp: None, tmp=work)
    move_record(work, path)
