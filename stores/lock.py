"""The one-writer lock of a store: an flock on ``<store>.lock``, taken with filelock — the kernel
drops an flock when its process dies, so a killed writer's lock needs no takeover that could race.

The file names its holder ("pid host") for the refusal message. The holder removes it while it
still holds it, and a taker checks that the file it locked is the one at the path, so a taker
that opened the file just before its removal takes again rather than lock a file nobody sees.
A file still naming a pid when taken was left by a killed writer: said once, as a warning (once
per dead holder: a killed rebuild leaves the store's lock and its temp file's).
"""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path

from filelock import FileLock, Timeout

from uniskel.core.errors import UniError, io_reason

log = logging.getLogger(__name__)

WAIT_S = 0.5  # a taker waits this long, so that a check's momentary try (below) never refuses it
_gone: set[str] = set()  # holders this process has said it took a lock over from


@dataclass
class StoreLock:
    """A lock this process holds: the flock, and our own descriptor of its file."""

    path: Path
    flock: FileLock
    fd: int
    pid: int = field(default_factory=os.getpid)


def lock_path(path: Path) -> Path:
    return Path(str(path) + ".lock")


def _holder(fd: int) -> str:
    """Who the lock file names: 'pid N' ('pid N on HOST' elsewhere), or '' when none."""
    words = os.pread(fd, 256, 0).decode(errors="replace").split()
    if not words:
        return ""
    host = words[1] if len(words) > 1 else ""
    return f"pid {words[0]}" + (f" on {host}" if host and host != socket.gethostname() else "")


def _same_file(fd: int, lock: Path) -> bool:
    try:
        return os.path.samestat(os.fstat(fd), os.stat(lock))
    except FileNotFoundError:
        return False


def busy(path: Path, holder: str = "") -> UniError:
    """The refusal of a second writer: wait for the first or stop it (never overwrite: a
    rebuild would take the same lock, and a store replaced under its writer loses its work)."""
    return UniError(f"{path}: is being written by {holder or 'another process'}; wait for it "
                    "to finish or stop it, then run again")


def take_lock(path: Path) -> StoreLock:
    """Lock the store at `path` for this process's writer; UniError when another holds it."""
    lock = lock_path(path)
    for _ in range(3):
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:  # a read-only directory, say
            raise UniError(f"{path}: cannot take the lock {lock} ({io_reason(e)})") from None
        held = FileLock(str(lock), timeout=WAIT_S, thread_local=False)
        try:
            held.acquire()
        except Timeout:
            holder, moved = _holder(fd), not _same_file(fd, lock)
            os.close(fd)
            if moved:  # its holder let go and removed it meanwhile: again
                continue
            raise busy(path, holder) from None
        except OSError as e:
            os.close(fd)
            raise UniError(f"{path}: cannot take the lock {lock} ({io_reason(e)})") from None
        if not _same_file(fd, lock):  # locked the file its holder removed: again
            held.release()
            os.close(fd)
            continue
        taken = StoreLock(lock, held, fd)
        left = _holder(fd)
        if left:
            log.log(logging.DEBUG if left in _gone else logging.WARNING,
                    "%s: taking over the lock of %s, which is gone", path, left)
            _gone.add(left)
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)
        except OSError as e:
            release_lock(taken)
            raise UniError(f"{path}: cannot take the lock {lock} ({io_reason(e)})") from None
        return taken
    raise UniError(f"{path}: could not take {lock}")


def release_lock(lock: StoreLock | None) -> None:
    """Remove the lock file and let go, if this process took `lock`."""
    if lock is None or lock.pid != os.getpid():
        return
    try:
        if _same_file(lock.fd, lock.path):
            lock.path.unlink()  # while held: see the module docstring
    except OSError:
        pass
    finally:
        lock.flock.release()
        os.close(lock.fd)


def refuse_if_held(path: Path) -> None:
    """UniError (`busy`, naming the holder) when a writer holds the lock of the store at
    `path`: a momentary check, for refusing before any work starts."""
    if held_by_live_writer(path):
        try:
            fd = os.open(lock_path(path), os.O_RDONLY)
        except OSError:
            raise busy(path) from None
        try:
            holder = _holder(fd)
        finally:
            os.close(fd)
        raise busy(path, holder)


def held_by_live_writer(path: Path) -> bool:
    """Whether a writer holds the lock of the store at `path` (a try to take it, given back at
    once; True when that cannot be told)."""
    lock = lock_path(path)
    if not lock.exists():
        return False
    probe = FileLock(str(lock), timeout=0, thread_local=False)
    try:
        probe.acquire()
    except (Timeout, OSError):
        return True
    probe.release()
    return False
