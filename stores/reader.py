"""Reading a soft-label store (format: stores/schema.py): `StoreReader`, lazy and picklable,
each row's row_crc and chunk checksum checked on read; `check_compatible` for a resume."""

from __future__ import annotations

import json
import os
from pathlib import Path

import h5py
import numpy as np

from uniskel.core.errors import UniError
from uniskel.stores.encode import dequantize, row_crc
from uniskel.stores.schema import IDENTITY, StoreMeta, check_layout, open_h5
from uniskel.stores.verify import StoreCheck, check_store

META_CACHE = 2**20  # bytes of chunk cache for each metadata dataset, per process
_REPAIR_HINT = ("; if a cache-teachers run was killed while writing it, running it again "
                "repairs the store")


class StoreReader:
    """Random access to a store's rows. Pickles as its path; each process opens its own handle."""

    def __init__(self, path: Path):
        self.path = Path(path)
        with open_h5(self.path) as f:
            self.meta = check_layout(f, str(self.path))
            try:
                self.instance_ids = f["instance_ids"][:].astype(np.int64)
                self.done_raw = f["done"][:]  # (N,) uint8: 0 or 1 unless damaged
            except OSError as e:
                raise UniError(f"{self.path}: instance_ids / done unreadable ({e}){_REPAIR_HINT}"
                               ) from None
            a = f.attrs
            self.complete = bool(int(a["complete"]))
            self.attrs = {k: (v.item() if isinstance(v, np.generic) else v)
                          for k, v in a.items()}
        try:
            self.skipped = {int(k): v for k, v in json.loads(self.attrs["skipped"]).items()}
        except (TypeError, ValueError, AttributeError):
            raise UniError(f"{self.path}: attribute 'skipped' is not JSON") from None
        self.done = self.done_raw != 0  # (N,) bool; a value not 0 or 1 is damage (check)
        # The row index is arrays (ids sorted, `find` searches them), not a dict: forked
        # DataLoader workers share its pages instead of copying one Python object per row.
        # A store's rows are its dataset's ids in ascending order, so usually no permutation.
        ids = self.instance_ids
        self._order = None if bool((ids[1:] > ids[:-1]).all()) else np.argsort(ids, kind="stable")
        self._sorted = ids if self._order is None else ids[self._order]
        for a in (ids, self.done_raw, self.done, self._sorted, self._order):
            if a is not None:
                a.flags.writeable = False
        self._pid = None  # the process whose handle _f is
        self._full = None  # (scales, affines, row_crc) of every row, while a check needs them

    def __getstate__(self) -> dict:
        return {"path": str(self.path)}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["path"])

    def __len__(self) -> int:
        return len(self.instance_ids)

    def find(self, instance_ids) -> np.ndarray:
        """(M,) int64 rows of these instance ids; -1 for an id the store does not have."""
        ids = np.asarray(instance_ids, dtype=np.int64).reshape(-1)
        pos = np.searchsorted(self._sorted, ids)
        hit = pos < len(self._sorted)
        hit[hit] = self._sorted[pos[hit]] == ids[hit]
        if self._order is not None:
            pos[hit] = self._order[pos[hit]]
        return np.where(hit, pos, -1)

    def row(self, instance_id: int) -> int:
        """The row of one instance id, or -1 (`find` for one id, without its array overhead)."""
        pos = int(np.searchsorted(self._sorted, instance_id))
        if pos < len(self._sorted) and self._sorted[pos] == instance_id:
            return pos if self._order is None else int(self._order[pos])
        return -1

    def rows(self, instance_ids) -> np.ndarray:
        """(M,) int64 rows of these instance ids; UniError naming the first the store lacks."""
        ids = np.asarray(instance_ids, dtype=np.int64).reshape(-1)
        rows = self.find(ids)
        if (rows < 0).any():
            raise UniError(f"{self.path}: instance {int(ids[np.argmax(rows < 0)])} is not in "
                           f"this store ({int((rows < 0).sum())} of {len(ids)} ids unknown)")
        return rows

    def _open(self) -> None:
        """Open (or, after a fork, reopen) this process's handle; cache what every read needs.
        Per-row metadata is read row by row (`_row_meta`), not kept: a process's memory then
        does not grow with the store's rows."""
        if self._pid == os.getpid():
            return
        f = open_h5(self.path)
        self._f = f
        k, h, w = self.meta.heatmap_shape
        # One low-level read per dataset and row (h5py's indexing costs several times more):
        # {name: (dataset id, file space, memory space, type, row shape, dtype)}. Each dataset
        # is opened with its own chunk cache, before anything else opens it (HDF5 keeps the
        # first open's): none for the heatmaps, whose chunks a run reads once an epoch, and
        # HDF5's 1 MiB default for the metadata, not h5py's 8 MiB, which would hold a
        # COCO-size store's metadata in every DataLoader worker.
        self._readers = {}
        for name, shape, dtype, cache in (("heatmaps", (k, h, w), np.uint8, 0),
                                          ("scales", (k,), np.float32, META_CACHE),
                                          ("affines", (2, 3), np.float64, META_CACHE),
                                          ("row_crc", (), np.uint32, META_CACHE)):
            dapl = h5py.h5p.create(h5py.h5p.DATASET_ACCESS)
            dapl.set_chunk_cache(521, cache, 0.75)
            d = h5py.h5d.open(f.id, name.encode(), dapl)
            self._readers[name] = (d, d.get_space(), h5py.h5s.create_simple((1, *shape)),
                                   d.get_type(),  # cached: deriving it per read halves the rate
                                   shape, dtype)
        self._hm = f["heatmaps"]
        self._pid = os.getpid()

    def _read_row(self, name: str, row: int) -> np.ndarray:
        """Row `row` of dataset `name` (shape (1, *row shape)); OSError when its chunk's
        checksum or decoding fails."""
        d, fspace, mspace, mtype, shape, dtype = self._readers[name]
        out = np.empty((1, *shape), dtype)
        fspace.select_hyperslab((row,) + (0,) * len(shape), (1, *shape))
        d.read(mspace, fspace, out, mtype)
        return out

    def _read_chunk(self, row: int) -> np.ndarray:
        """uint8 (1, K, H, W): the row's heatmap chunk, decoded; OSError when its checksum or
        decoding fails. The one read path of read_raw and check."""
        self._open()
        return self._read_row("heatmaps", row)

    def _row_meta(self, row: int) -> tuple[np.ndarray, np.ndarray, int]:
        """(scales (K,), affine (2, 3), row_crc) of one row: from the whole arrays while a
        check holds them, else read from the file."""
        if self._full is not None:
            s, a, c = self._full
            return s[row], a[row], int(c[row])
        try:
            return (self._read_row("scales", row)[0], self._read_row("affines", row)[0],
                    int(self._read_row("row_crc", row)[0]))
        except OSError as e:
            raise UniError(f"{self.path}: scales / affines / row_crc of row {row} unreadable "
                           f"({e}){_REPAIR_HINT}") from None

    def _whole(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every row's (scales, affines, row_crc), read once for a check (stores/verify.py) and
        kept until `close`."""
        self._open()
        if self._full is None:
            try:
                self._full = (self._f["scales"][:], self._f["affines"][:],
                              self._f["row_crc"][:])
            except OSError as e:
                raise UniError(f"{self.path}: scales / affines / row_crc unreadable ({e})"
                               f"{_REPAIR_HINT}") from None
        return self._full

    @property
    def _scales(self) -> np.ndarray:
        return self._whole()[0]

    @property
    def _affines(self) -> np.ndarray:
        return self._whole()[1]

    @property
    def _crc(self) -> np.ndarray:
        return self._whole()[2]

    def read_raw(self, row: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Row → (uint8 (K, H, W), scales (K,) float32, affine (2, 3) float64)."""
        self._open()
        if not self.done[row]:
            raise UniError(f"{self.path}: instance {self.instance_ids[row]} (row {row}) is "
                           "not in the store (skipped or not computed yet)")
        scales, affine, crc = self._row_meta(row)
        if crc != row_crc(scales, affine, self.instance_ids[row], self.done_raw[row]):
            raise UniError(f"{self.path}: metadata (scales, affine, done) of instance "
                           f"{self.instance_ids[row]} (row {row}) fails its row_crc")
        try:
            out = self._read_chunk(row)
        except OSError as e:
            raise UniError(f"{self.path}: heatmaps of instance {self.instance_ids[row]} "
                           f"(row {row}) unreadable, checksum or decode failed ({e})") from None
        return out[0], scales, affine

    def read(self, row: int) -> tuple[np.ndarray, np.ndarray]:
        """Row → (heatmaps (K, H, W) float32 dequantised, affine (2, 3) float64)."""
        q, scales, affine = self.read_raw(row)
        return dequantize(q, scales), affine

    def close(self) -> None:
        """Close this process's handle and drop what a check read (forked workers then
        inherit neither)."""
        if self._pid == os.getpid():
            self._f.close()
        self._pid = None
        self._full = None
        self._readers = {}

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
    """The store at `path`, its layout checked; UniError naming the file and field if not."""
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
    have = float(r.attrs["threshold"])
    if threshold is not None and not np.isclose(have, threshold, rtol=0, atol=1e-9):
        raise UniError(f"{path}: built with threshold {have:.6g}, now {threshold:.6g}")
    return "complete" if r.complete else "partial"
