"""Files: atomic writes, JSON reads and sha256, the one way every uni module touches a file.

Every file uni writes whole (configs, checkpoints, reports, predictions, plots, images, JSON)
goes through `atomic_write`: written beside the target, fsynced, renamed over it, and the
directory fsynced, so a kill or a power cut leaves the old file or the new one, never half.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

from uniskel.core.errors import UniError


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # some filesystems (and Windows) cannot open a directory
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: Path, write: Callable[[Path], object], tmp: Path | None = None) -> None:
    """Call `write(tmp)` to fill a temp file beside `path`, fsync it, rename it over `path`.

    On any exception (or a kill) `path` keeps its old contents and the temp file is removed.
    `tmp` defaults to `<path>.tmp`; a caller whose `.tmp` name is taken passes its own.
    """
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp") if tmp is None else Path(tmp)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def write_text(path: Path, text: str) -> None:
    """`text` written to `path` atomically (UTF-8)."""
    atomic_write(path, lambda p: p.write_text(text, encoding="utf-8"))


def write_json(path: Path, obj: object, indent: int | None = 1) -> None:
    """`obj` written to `path` as JSON, atomically."""
    write_text(path, json.dumps(obj, indent=indent) + "\n")


def read_json(path: Path, what: str = "annotation file"):
    """Parsed JSON, or UniError naming the file when it is missing or not JSON."""
    path = Path(path)
    if not path.is_file():
        raise UniError(f"{path}: {what} not found")
    try:
        with open(path, "rb") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UniError(f"{path}: not valid JSON ({e})") from None


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file's bytes (dataset ids, teacher identity)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def check_output_path(path: Path, what: str = "--out") -> None:
    """UniError (one line) when `path` cannot be made: its nearest existing ancestor is a file,
    or a folder this process may not write in. An existing path passes (its kind is the
    caller's check): a read-only output folder may still hold up-to-date results."""
    path = Path(path)
    if path.exists():
        return
    parent = path.absolute().parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise UniError(f"{what} {path}: cannot create it, {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UniError(f"{what} {path}: cannot create it, {parent} is not writable")


def json_int(value: object, where: str, what: str = "an integer") -> int:
    """`value` if it is a JSON integer (true/false are not), else UniError naming `where`."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise UniError(f"{where}: expected {what}, got {value!r:.40}")
    return value
