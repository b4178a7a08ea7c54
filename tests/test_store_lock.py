"""The one-writer lock of a store (stores/lock.py): a second writer is refused in one line, a
killed writer's lock blocks nobody, and checks see whether a writer is at work. A writer whose
file is replaced or removed under it fails in one line (stores/writer.py)."""

from __future__ import annotations

import fcntl
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from store_helpers import sample_affines, sample_maps, sample_meta, sample_store

from uniskel.core.errors import UniError
from uniskel.stores.create import create_store
from uniskel.stores.lock import (
    held_by_live_writer,
    lock_path,
    refuse_if_held,
    release_lock,
    take_lock,
)
from uniskel.stores.reader import open_store
from uniskel.stores.verify import load_record
from uniskel.stores.writer import StoreWriter

_HOLDER = """
import sys, time
from uniskel.stores.lock import take_lock
held = take_lock(sys.argv[1])  # kept: a lock object let go of releases its flock
print("locked", flush=True)
time.sleep(120)
"""


def test_second_writer_is_refused_and_the_lock_goes_with_the_first(tmp_path):
    path = sample_store(tmp_path)[0]
    lock = Path(str(path) + ".lock")
    assert not held_by_live_writer(path)
    with StoreWriter(path):
        assert lock.read_text().split()[0] == str(os.getpid())
        assert held_by_live_writer(path)
        with pytest.raises(UniError, match=f"being written by pid {os.getpid()}") as e:
            StoreWriter(path)
        assert str(e.value).startswith(f"{path}: ") and "\n" not in str(e.value)
    assert not lock.exists() and not held_by_live_writer(path)


def test_lock_of_a_killed_writer_blocks_nobody(tmp_path, caplog):
    """A writer in another process is refused with its pid; killed with SIGKILL, it leaves its
    lock file, which the next writer takes over, saying so once."""
    path = sample_store(tmp_path)[0]
    lock = Path(str(path) + ".lock")
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(path)], cwd=tmp_path,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "locked\n"
        assert held_by_live_writer(path)
        with pytest.raises(UniError, match=f"{path}: is being written by pid {holder.pid}; "):
            refuse_if_held(path)  # the check before any work starts says the same
        with pytest.raises(UniError, match=f"{path}: is being written by pid {holder.pid}; "
                           "wait for it to finish or stop it, then run again$"):
            StoreWriter(path)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert lock.read_text().split()[0] == str(holder.pid)  # left by the dead writer
    assert not held_by_live_writer(path)
    with caplog.at_level(logging.WARNING), StoreWriter(path):
        assert lock.read_text().split()[0] == str(os.getpid())
    assert caplog.text.count(f"taking over the lock of pid {holder.pid}, which is gone") == 1
    assert not lock.exists()


def test_a_lock_removed_as_it_is_taken_is_taken_afresh(tmp_path, monkeypatch):
    """A taker whose flock comes just after the holder removed and let go of the lock file
    ends holding the file now at the path, so a third writer is still refused."""
    path = tmp_path / "s.h5"
    first, real, armed = take_lock(path), fcntl.flock, [True]

    def holder_lets_go_first(fd, op):
        if armed and op & fcntl.LOCK_EX:
            armed.clear()
            release_lock(first)  # removes the file the taker has already opened
        return real(fd, op)

    monkeypatch.setattr(fcntl, "flock", holder_lets_go_first)
    second = take_lock(path)
    monkeypatch.undo()
    assert not armed  # the holder did let go in between
    lock = lock_path(path)
    assert os.path.samestat(os.fstat(second.fd), os.stat(lock))
    assert held_by_live_writer(path)
    with pytest.raises(UniError, match=f"being written by pid {os.getpid()}"):
        take_lock(path)
    release_lock(second)
    assert not lock.exists()


# --------------------------------------------------------------------------- file replaced


def _vouches_for_nothing(path: Path) -> bool:
    """The store's verification record is absent, or the one its writer cleared on opening."""
    rec = load_record(path)
    return rec is None or rec["identity"] is None


def _half_written(tmp_path: Path) -> tuple[Path, StoreWriter, np.ndarray]:
    path, maps = tmp_path / "w.h5", sample_maps(6)
    create_store(path, sample_meta(), np.arange(6))
    w = StoreWriter(path)
    w.write(np.arange(3), maps[:3], sample_affines(3))
    return path, w, maps


@pytest.mark.parametrize("how", ["replaced", "removed"])
def test_writer_whose_file_went_fails_at_its_next_batch(tmp_path, how):
    """The store renamed over (as an old uni's --overwrite did) or removed under a writer: its
    next batch fails in one line, naming what happened; closing says nothing more and leaves
    no verification record vouching for the file now at the path."""
    path, w, maps = _half_written(tmp_path)
    other = tmp_path / "other.h5"
    create_store(other, sample_meta(), np.arange(6))
    if how == "replaced":
        os.replace(other, path)
    else:
        path.unlink()
    with pytest.raises(UniError, match=f"^{path}: was replaced or removed by another process") \
            as e:
        w.write(np.arange(3, 6), maps[3:], sample_affines(3))
    assert "\n" not in str(e.value)
    w.close()  # said once
    assert _vouches_for_nothing(path) and not lock_path(path).exists()
    if how == "replaced":
        assert not open_store(path).done.any()  # the replacement is left as it was


def test_writer_whose_file_went_fails_at_finish(tmp_path):
    """Replaced after its last batch: finalize fails, so does a bare close: never a success."""
    path, w, maps = _half_written(tmp_path)
    w.write(np.arange(3, 6), maps[3:], sample_affines(3))
    os.replace(path, tmp_path / "moved.h5")
    with pytest.raises(UniError, match="replaced or removed by another process"):
        w.finalize()
    w.close()
    path, w, maps = _half_written(tmp_path / "b")
    os.replace(tmp_path / "moved.h5", path)
    with pytest.raises(UniError, match="replaced or removed by another process"):
        w.close()
    assert _vouches_for_nothing(path) and not lock_path(path).exists()
