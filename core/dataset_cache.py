"""Parsed datasets kept on disk, so that a COCO-size annotation file is parsed once.

Streaming a COCO-size file into columns takes seconds, every start of every process (each DDP rank,
each `uni` command); reading its columns back from an .npz takes a small part of that
(BENCHMARKS.md "Datasets at scale"). An entry is named and checked by everything the columns depend
on: the annotation file's sha256 (the dataset id), the dataset kind, the resolved image root, the
head-box file's sha256, and READER_VERSION. It trusts that symlinks under the image root did not
change (image paths are stored resolved). Small datasets parse faster than an entry would save and
are never cached. Entries are written atomically; one that cannot be read is ignored and rewritten;
one that cannot be written is skipped. Where: $UNI_CACHE_DIR ("off" disables it), else
$XDG_CACHE_HOME/uni/datasets, else ~/.cache/uni/datasets.
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from dataclasses import fields
from pathlib import Path

import numpy as np

from uniskel.core.columns import Columns
from uniskel.core.files import atomic_write

READER_VERSION = 2  # bump when a reader (annotations.py, mpii_reader.py) gives other columns
# 2: image-level columns (crowd index, frame and video ids, ignore regions)
MIN_INSTANCES = 20_000  # below this a parse costs well under a second


def cache_dir() -> Path | None:
    """The cache folder, or None when $UNI_CACHE_DIR is "off" (or empty) or there is no home."""
    where = os.environ.get("UNI_CACHE_DIR")
    if where is not None:
        return None if where.strip().lower() in ("", "0", "off") else Path(where)
    try:
        base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    except RuntimeError:  # no home directory: no cache
        return None
    return Path(base) / "uni" / "datasets"


def _entry(key: dict) -> tuple[Path | None, str]:
    text = json.dumps(key, sort_keys=True)
    folder = cache_dir()
    name = f"{key['dataset_id'][:16]}-{hashlib.sha256(text.encode()).hexdigest()[:16]}.npz"
    return (None if folder is None else folder / name), text


def cache_key(dataset_id: str, kind: str, image_root: Path, head_boxes_sha256: str | None
              ) -> dict:
    return {"dataset_id": dataset_id, "kind": kind, "image_root": str(image_root.resolve()),
            "head_boxes": head_boxes_sha256, "reader": READER_VERSION}


def load_columns(key: dict) -> Columns | None:
    """The cached columns for `key`, or None (no entry, another key, or unreadable)."""
    path, text = _entry(key)
    if path is None or not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as npz:
            if str(npz["key"]) != text:
                return None
            return Columns(**{f.name: npz[f.name] for f in fields(Columns)})
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError):
        return None  # torn or foreign: parsed again and rewritten


def save_columns(key: dict, cols: Columns) -> None:
    """Keep `cols` for `key` when the dataset is large enough to be worth it."""
    path, text = _entry(key)
    if path is None or len(cols.instance_ids) < MIN_INSTANCES:
        return
    arrays = {f.name: getattr(cols, f.name) for f in fields(Columns)}

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, key=np.array(text), **arrays)

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # A temp name per process: DDP ranks load the same dataset at the same moment.
        atomic_write(path, write, path.with_name(f"{path.name}.{os.getpid()}.tmp"))
    except OSError:
        pass  # a read-only or full disk costs the next start a parse, nothing else
