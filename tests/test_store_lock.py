"""The one-writer lock of a store (stores/lock.py): a second writer is refused in one line, a
killed writer's lock blocks nobody, and checks see whether a writer is at work."""

from __future__ import annotations

import fcntl
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from store_helpers import sample_store

from uniskel.core.errors import UniError
from uniskel.stores.lock import held_by_live_writer, lock_path, release_lock, take_lock
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
        with pytest.raises(UniError, match=f"{path}: is being written by pid {holder.pid}$"):
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
