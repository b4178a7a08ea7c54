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
            self._crc = f["row_crc"][:]  # (N,) uint32
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
        if self._crc[row] != row_crc(
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
