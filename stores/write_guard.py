"""Keeping a store's finished rows through failed writes: the two rules of stores/writer.py's
docstring, for one open HDF5 file — room reserved before each batch (rule 1), metadata held
until a flush and a failed handle cut off the file (rule 2)."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import h5py

from uniskel.core.errors import UniError, io_reason
from uniskel.core.killpoints import kill_point
from uniskel.stores.create import write_failed

log = logging.getLogger("uniskel.stores.writer")  # its messages are the writer's

WRITE_ERRORS = (OSError, RuntimeError)  # what h5py raises for a failed write


class WriteGuard:
    """The failure state of one writer's HDF5 file: `failed` (a write failed, the handle is cut
    off), `short` (room was refused; nothing more is written, the file is whole)."""

    def __init__(self, path: Path, f: h5py.File, per_batch_bytes: int):
        """per_batch_bytes: reserved on top of every request (a chunk of each small dataset,
        which a batch may rewrite or add)."""
        self.path, self.f = path, f
        self.failed = self.short = False
        self.overruns = 0  # reservations HDF5 wrote past (none in any test)
        self._extra = per_batch_bytes
        self.fd = os.open(path, os.O_RDWR)  # for posix_fallocate
        self.file = os.fstat(self.fd)  # the file written, whatever comes to be at `path`
        # Rule 2: metadata changes stay in HDF5's cache until a flush (no evictions, so no
        # automatic resizing either).
        cfg = f.id.get_mdc_config()
        cfg.incr_mode = cfg.flash_incr_mode = cfg.decr_mode = 0  # H5C_*_off
        cfg.evictions_enabled = False
        f.id.set_mdc_config(cfg)

    def replaced(self) -> bool:
        """Whether the file at `path` is no longer the one written (replaced or removed)."""
        try:
            return not os.path.samestat(self.file, os.stat(self.path))
        except FileNotFoundError:
            return True
        except OSError:  # cannot tell (a network file system's hiccup): the next call will
            return False

    def refuse_if_stopped(self) -> None:
        if self.failed or self.short:
            raise UniError(f"{self.path}: an earlier write failed; nothing more is written")

    def reserve(self, nbytes: int) -> int:
        """Allocate room beyond HDF5's end of file for what comes next (rule 1); returns where
        the room ends. UniError, nothing written, when the file system refuses."""
        start = self.f.id.get_filesize()  # HDF5's end of allocated space
        nbytes += self._extra
        # From the physical end if that is lower: HDF5 may have grown the file by truncate
        # (a hole), and a hole is no room.
        offset = min(start, os.fstat(self.fd).st_size)
        try:
            kill_point("store-reserve")
            os.posix_fallocate(self.fd, offset, start + nbytes - offset)
        except OSError as e:
            self.short = True
            raise UniError(f"{self.path}: no room for the next batch ({io_reason(e)}); the "
                           "store is intact with every finished row: make room and run again "
                           "to resume") from None
        return start + nbytes

    def check_reserved(self, reserved_to: int) -> None:
        if self.f.id.get_filesize() > reserved_to:
            self.overruns += 1
            log.warning("%s: HDF5 wrote past the room reserved for a batch", self.path)

    @contextmanager
    def writing(self) -> Iterator[None]:
        """Around HDF5 writes: a failure cuts the handle off the file (rule 2) and raises
        StoreWriteFailed."""
        try:
            yield
        except WRITE_ERRORS as e:
            self.cut_off()
            raise write_failed(self.path, e) from None

    def cut_off(self) -> None:
        """Point HDF5's descriptor of this file at an anonymous in-memory file: nothing it
        still holds (a half batch's metadata) reaches the store, at close or at exit."""
        self.failed = True
        try:
            sink = os.memfd_create("uni-cut-off")  # not /dev/null: HDF5 truncates at close
        except (AttributeError, OSError):
            sink = os.open(os.devnull, os.O_RDWR)
        try:
            os.dup2(sink, self.f.id.get_vfd_handle())
        except (OSError, RuntimeError, ValueError) as e:
            log.error("%s: could not detach the failed HDF5 handle (%s)", self.path, e)
        finally:
            os.close(sink)

    def close(self, end: int | None) -> None:
        """After HDF5 closed the file: trim the reservation's unused tail past `end` (HDF5's
        end of file at its last flush; None: leave it), close our descriptor."""
        try:
            if end is not None and not self.failed and os.fstat(self.fd).st_size > end:
                os.ftruncate(self.fd, end)  # HDF5 keeps nothing there
        finally:
            os.close(self.fd)
