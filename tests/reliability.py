"""What the reliability tests (issue 8) share: the uni command run as a subprocess (so a kill is
a real SIGKILL), and comparisons of stores and runs with an uninterrupted one's.

Kills use the UNI_KILL_AT test hook (core/killpoints.py): the job SIGKILLs itself at a named
point, so the kill lands at the same place every time. The stores they start from are the
conftest fixtures `stage_one` and `stage_two`.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
from click.testing import CliRunner
from conftest import STAGE_ONE_BATCH as BATCH

from uniskel.cli import uni
from uniskel.stores.reader import open_store

UNI = [sys.executable, "-m", "uniskel"]  # the installed package's uni command
# The subprocess runs the installed uniskel (python -m uniskel). One thread: a busy machine.
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def run(cmd: list[str], cwd: Path, fault: str | None = None, **kw) -> subprocess.CompletedProcess:
    """cmd in a subprocess; `fault` is its UNI_KILL_AT (core/killpoints.py)."""
    env = {**ENV, "UNI_KILL_AT": fault} if fault else ENV
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300,
                          **kw)


def cache_cmd(spec: str, teacher: Path, out: Path, *extra: str) -> list[str]:
    """`uni cache-teachers` of one teacher over spec into out, one worker, small batches."""
    return [*UNI, "cache-teachers", "--data", spec, "--teacher", str(teacher), "--out", str(out),
            "--workers", "1", "--batch-size", str(BATCH), *extra]


def train_args(spec: str, stores: Path, out: Path, config: Path | None = None,
               epochs: int = 1) -> list[str]:
    """`train-student` arguments for the stage_two fixture: 64×48 input, batches of 4."""
    args = ["train-student", "--data", spec, "--stores", str(stores), "--out", str(out),
            "--input-size", "64x48", "--epochs", str(epochs), "--batch-size", "4", "--workers",
            "0"]
    return args + (["--config", str(config)] if config else [])


def toml(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def names(out: Path) -> list[str]:
    """The files in `out`, less the verification records checks leave (stores/verify.py)."""
    return sorted(p.name for p in out.iterdir() if not p.name.endswith(".verified"))


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def old_store(tmp_path: Path, name: str, src: Path) -> tuple[Path, Path, str]:
    """(out dir, out/name holding a copy of src, its sha256): an existing store to protect."""
    out = tmp_path / "out"
    out.mkdir()
    store = out / name
    shutil.copy(src, store)
    return out, store, sha(store)


def assert_same_store(path: Path, ref: Path) -> None:
    """Same rows, done mask, skipped list and stored bytes; as complete; verify clean."""
    a, b = open_store(path), open_store(ref)
    assert a.complete == b.complete == (not b.skipped)  # skipped people: retried next run
    np.testing.assert_array_equal(a.instance_ids, b.instance_ids)
    np.testing.assert_array_equal(a.done, b.done)
    assert a.skipped == b.skipped
    for row in np.flatnonzero(b.done):
        for x, y in zip(a.read_raw(row), b.read_raw(row), strict=True):
            np.testing.assert_array_equal(x, y)
    res = CliRunner().invoke(uni, ["inspect-store", str(path), "--verify"])
    assert res.exit_code == 0 and "verify       ok" in res.output, res.output
