"""The one-writer lock of a store: ``<store>.lock`` holds the writer's pid and host; a lock
left by a dead process on this host is taken over with a warning."""

from __future__ import annotations

import logging
import os
import socket
import time
from pathlib import Path

from uniskel.core.errors import UniError, io_reason

log = logging.getLogger(__name__)


def lock_path(path: Path) -> Path:
    return Path(str(path) + ".lock")


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this machine."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_lock(lock: Path) -> tuple[int, str] | None:
    """(pid, host) of a lock file, or None when there is none (or it is being written)."""
    try:
        text = lock.read_text().split()
        return int(text[0]), (text[1] if len(text) > 1 else "")
    except (FileNotFoundError, ValueError, IndexError):
        return None


def take_lock(path: Path) -> Path:
    """Create <path>.lock holding our pid; take over a lock whose process is gone."""
    lock = lock_path(path)
    host = socket.gethostname()
    for _ in range(3):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            held = read_lock(lock)
            if held is None:  # being written this instant, or garbage: look again
                time.sleep(0.05)
                held = read_lock(lock)
            if held is not None:
                pid, owner_host = held
                if owner_host and owner_host != host:
                    raise UniError(f"{path}: is being written by pid {pid} on {owner_host} "
                                   f"(remove {lock} if that is not true)") from None
                if pid_alive(pid):
                    raise UniError(f"{path}: is being written by pid {pid}") from None
            log.warning("%s: taking over the lock of pid %s, which is gone", path,
                        held[0] if held else "?")
            lock.unlink(missing_ok=True)
            continue
        except OSError as e:  # a read-only directory, say
            raise UniError(f"{path}: cannot take the lock {lock} ({io_reason(e)})") from None
        try:
            with os.fdopen(fd, "w") as fh:
                fh.write(f"{os.getpid()} {host}\n")
        except OSError as e:
            lock.unlink(missing_ok=True)
            raise UniError(f"{path}: cannot take the lock {lock} ({io_reason(e)})") from None
        return lock
    raise UniError(f"{path}: could not take {lock}")




def held_by_live_writer(path: Path) -> bool:
    """Whether a live process (or one on another host, which cannot be asked) holds the lock
    of the store at `path`."""
    held = read_lock(lock_path(path))
    if held is None:
        return lock_path(path).exists()
    pid, host = held
    return (host and host != socket.gethostname()) or pid_alive(pid)


def release_lock(lock: Path | None) -> None:
    """Remove `lock` if this process holds it."""
    if lock is not None:
        held = read_lock(lock)
        if held is not None and held[0] == os.getpid():
            lock.unlink(missing_ok=True)
