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
_HEADERS = {(1, 0): np.lib.format.read_array_header_1_0,
            (2, 0): np.lib.format.read_array_header_2_0}


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
    """The cached columns for `key`, or None (no entry, another key, or unreadable). The
    columns are read-only memory maps of the entry: every process that loads it (DDP ranks,
    DataLoader workers) shares the kernel's pages, which count only as they are touched and
    which the kernel may drop again, so a run's memory does not grow with its persons."""
    path, text = _entry(key)
    if path is None or not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as npz:
            if str(npz["key"]) != text:
                return None
        return Columns(**_mapped(path, [f.name for f in fields(Columns)]))
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError):
        return None  # torn or foreign: parsed again and rewritten


def _mapped(path: Path, names: list[str]) -> dict[str, np.ndarray]:
    """{name: read-only array} memory-mapping each `name`.npy member of an uncompressed .npz
    (np.savez writes them stored, so each array's bytes lie contiguous in the file)."""
    out = {}
    with zipfile.ZipFile(path) as z, open(path, "rb") as f:
        for name in names:
            info = z.getinfo(f"{name}.npy")
            if info.compress_type != zipfile.ZIP_STORED:
                raise ValueError(f"{name}: compressed")
            f.seek(info.header_offset)
            local = f.read(30)  # the local file header: its name and extra field follow it
            if local[:4] != b"PK\x03\x04":
                raise ValueError(f"{name}: no local header")
            start = info.header_offset + 30 + int.from_bytes(local[26:28], "little") + \
                int.from_bytes(local[28:30], "little")
            f.seek(start)
            read_header = _HEADERS.get(np.lib.format.read_magic(f))
            if read_header is None:
                raise ValueError(f"{name}: unknown .npy version")
            shape, fortran, dtype = read_header(f)
            if dtype.hasobject or fortran:
                raise ValueError(f"{name}: not a plain C-order array")
            size = int(np.prod(shape)) * dtype.itemsize
            if f.tell() + size - start > info.file_size:
                raise ValueError(f"{name}: truncated")
            out[name] = (np.asarray(np.memmap(f, dtype, "r", f.tell(), shape)) if size
                         else np.zeros(shape, dtype))
    return out


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


class FileRows:
    """Row access to a column memory-mapped from a cache entry (`load_columns`), by pread
    instead of through the map: the kernel maps whole runs of pages around every page a
    process touches through a map (fault-around, large folios), so a DataLoader worker reading
    random persons soon has most of the file counted in its memory; a pread maps nothing.
    rows[r] equals column[r]. Pickles as the file, offset and layout."""

    def __init__(self, column: np.ndarray):
        mm = column.base
        self.path, self.offset = str(mm.filename), int(mm.offset)
        self.dtype, self.row_shape, self.n = column.dtype, column.shape[1:], len(column)
        self.row_bytes = column.dtype.itemsize * int(np.prod(self.row_shape))
        self._fd = os.open(self.path, os.O_RDONLY)  # this inode, whatever replaces the entry

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "_fd"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._fd = os.open(self.path, os.O_RDONLY)

    def __del__(self) -> None:
        if getattr(self, "_fd", None) is not None:
            os.close(self._fd)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, row: int) -> np.ndarray | np.generic:
        row = int(row)
        if not 0 <= row < self.n:
            raise IndexError(f"row {row} out of range ({self.n} rows)")
        buf = os.pread(self._fd, self.row_bytes, self.offset + row * self.row_bytes)
        if len(buf) != self.row_bytes:
            raise OSError(f"{self.path}: truncated at row {row}")
        return np.frombuffer(buf, self.dtype).reshape(self.row_shape)[()]


def row_access(column: np.ndarray) -> np.ndarray | FileRows:
    """`column` itself, or FileRows when it is a whole memory map of a cache entry."""
    mm = column.base
    if (isinstance(mm, np.memmap) and mm.filename is not None and mm.shape == column.shape
            and mm.dtype == column.dtype and column.flags.c_contiguous and column.size
            and mm.ctypes.data == column.ctypes.data):
        return FileRows(column)
    return column
