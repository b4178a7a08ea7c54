"""Writes the file system refuses (issue 8): a disk filling up, a file size limit, an HDF5 write
failing mid-batch, a read-only output folder, a checkpoint on a full disk. Each is one line and
exit 2; what was finished stays, and the next run resumes to an uninterrupted run's store."""

from __future__ import annotations

import errno
import os
import resource
import shutil
from collections import namedtuple
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import one_line_error
from reliability import (
    BATCH,
    UNI,
    assert_same_store,
    cache_cmd,
    names,
    old_store,
    run,
    sha,
    train_args,
)

from uniskel.cli import uni
from uniskel.stores import writer as sw
from uniskel.stores.create import create_store
from uniskel.stores.reader import open_store


def test_cache_stops_before_the_disk_is_full_and_resumes(stage_one, tmp_path, monkeypatch):
    spec, teacher, ref, _ = stage_one
    out = tmp_path / "out"
    real, calls = shutil.disk_usage, []
    usage = namedtuple("usage", "total used free")

    def filling_up(path):
        calls.append(path)
        return real(path) if len(calls) <= 2 else usage(10 << 30, (10 << 30) - (5 << 20), 5 << 20)

    monkeypatch.setattr(sw.shutil, "disk_usage", filling_up)
    args = cache_cmd(spec, teacher, out)[len(UNI):]
    one_line_error(CliRunner().invoke(uni, args), ref.name, "disk full", "5 MB free")
    monkeypatch.undo()
    store = out / ref.name
    r = open_store(store)
    assert 0 < r.done.sum() <= 2 * BATCH and not r.complete and r.verify() == []
    r.close()
    assert names(out) == [ref.name]  # no lock, no temp file
    again = CliRunner().invoke(uni, args)
    assert again.exit_code == 0, again.output
    assert_same_store(store, ref)


def _file_size_limit(limit: int):
    def preexec():  # Python ignores SIGXFSZ, so writes past the limit fail with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))
    return preexec


@pytest.mark.parametrize("overwrite", [False, True])
def test_cache_out_of_room_keeps_finished_rows_and_resumes(overwrite, stage_one, tmp_path):
    """The file system refuses room mid-run (here: a file size limit, as a disk filled by
    someone else or a quota): one line, exit 2, no crash; the rows written so far stay (in the
    store, or in the rebuild beside an --overwrite's old store, which stays whole), and the next
    run computes only the rest and ends equal to an uninterrupted run."""
    spec, teacher, ref, no_flip = stage_one
    out, store, before = old_store(tmp_path, ref.name, no_flip)
    if not overwrite:
        store.unlink()
    r = open_store(ref)
    empty = tmp_path / "empty.h5"
    create_store(empty, r.meta, r.instance_ids)
    # Room for the empty store, a batch's reservation and about half of the rows' data.
    limit = (empty.stat().st_size + sw.RESERVE_SLACK + 16_000
             + (ref.stat().st_size - empty.stat().st_size) // 2)
    cmd = cache_cmd(spec, teacher, out, *(["--overwrite"] if overwrite else []))
    work = out / (f"{ref.name}.tmp" if overwrite else ref.name)
    failed = run(cmd, tmp_path, preexec_fn=_file_size_limit(limit))
    one_line_error(failed, f"{work.name}: no room for the next batch (File too large)",
                   "intact")
    at_failure = open_store(work)
    n_done, n_ref = int(at_failure.done.sum()), int(r.done.sum())
    assert 0 < n_done < n_ref and at_failure.verify() == []
    at_failure.close()  # HDF5 locks the file against the next run's writer
    assert not list(out.glob("*.lock"))
    if overwrite:
        assert sha(store) == before and open_store(store).verify() == []
    again = run(cmd, tmp_path)
    assert again.returncode == 0, again.stderr[-2000:]
    assert f"{n_ref - n_done} computed" in again.stdout
    assert_same_store(store, ref)


# Runs uni with HDF5's descriptor of the store turned read-only right after the N-th heatmap
# chunk written (the writer's store-chunk kill point, core/killpoints.py): the next write fails.
_BREAK_HDF5 = """
import os, sys
from uniskel.cli import uni
from uniskel.stores import write_guard, writer
state = {{"chunks": 0}}
reserve = write_guard.WriteGuard.reserve

def remembering_reserve(self, n):  # the writer's guard holds the file and its HDF5 handle
    state["guard"] = self
    return reserve(self, n)

def kill_point(point):
    if point != "store-chunk":
        return
    state["chunks"] += 1
    if state["chunks"] == {at}:
        g = state["guard"]
        os.dup2(os.open(g.path, os.O_RDONLY), g.f.id.get_vfd_handle())

write_guard.WriteGuard.reserve = remembering_reserve
writer.kill_point = kill_point
uni(sys.argv[1:], prog_name="uni")
"""


def test_cache_hdf5_write_failing_mid_batch_keeps_finished_rows(stage_one, tmp_path):
    """A write HDF5 itself fails mid-batch (an I/O error: EBADF here) is one line, exit 2; the
    store opens as of the last whole batch (nothing of the failed one reaches it), and the next
    run computes only the rest and ends equal to an uninterrupted run."""
    spec, teacher, ref, _ = stage_one
    out = tmp_path / "out"
    cmd = cache_cmd(spec, teacher, out)
    code = _BREAK_HDF5.format(at=3)
    failed = run([UNI[0], "-c", code, *cmd[len(UNI):]], tmp_path)
    one_line_error(failed, f"{ref.name}: write failed (Bad file descriptor)")
    at_failure = open_store(out / ref.name)
    n_done, n_ref = int(at_failure.done.sum()), int(open_store(ref).done.sum())
    assert 0 < n_done <= 2 * BATCH and at_failure.verify() == []
    at_failure.close()
    assert not list(out.glob("*.lock"))
    again = run(cmd, tmp_path)
    assert again.returncode == 0, again.stderr[-2000:]
    assert f"{n_ref - n_done} computed" in again.stdout
    assert_same_store(out / ref.name, ref)


def _read_only(monkeypatch, directory: Path) -> None:
    """Make this process see `directory` as a read-only file system (root ignores chmod):
    creating or opening a file there for writing fails as the kernel and HDF5 report it."""
    real_file, real_open = h5py.File, os.open

    def ro(path) -> bool:
        return Path(path).resolve().is_relative_to(directory.resolve())

    def file(name, mode="r", *a, **kw):
        if mode != "r" and ro(name):
            raise OSError(errno.EROFS, "Unable to synchronously create file (unable to open "
                          f"file: name = '{name}', errno = 30, error message = 'Read-only file "
                          "system', flags = 13, o_flags = 242)")
        return real_file(name, mode, *a, **kw)

    def os_open(path, flags, *a, **kw):
        if flags & os.O_CREAT and ro(path):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_open(path, flags, *a, **kw)

    monkeypatch.setattr(h5py, "File", file)
    monkeypatch.setattr(os, "open", os_open)


def _stopped_after_one_batch(store: Path, ref: Path) -> None:
    """store: a run of ref's that stopped after its first batch."""
    r = open_store(ref)
    create_store(store, r.meta, r.instance_ids)
    rows = np.flatnonzero(r.done)[:BATCH]
    with sw.StoreWriter(store) as w:
        w.write(rows, np.stack([r.read(i)[0] for i in rows]),
                np.stack([r.read(i)[1] for i in rows]))


def _completed(store: Path, ref: Path) -> None:
    """store: ref's with its skipped rows filled in, so complete."""
    r = open_store(ref)
    shutil.copy(ref, store)
    rows = np.flatnonzero(~r.done)
    k, h, w_ = r.meta.heatmap_shape
    with sw.StoreWriter(store) as w:
        w.write(rows, np.ones((len(rows), k, h, w_), np.float32),
                np.tile(np.eye(2, 3), (len(rows), 1, 1)))
        assert w.finalize({})


@pytest.mark.parametrize("case", ["new store", "partial store", "overwrite", "up to date"])
def test_cache_read_only_out_dir(case, stage_one, tmp_path, monkeypatch):
    spec, teacher, ref, _ = stage_one
    out = tmp_path / "out"
    out.mkdir()
    store = out / ref.name
    if case == "partial store":
        _stopped_after_one_batch(store, ref)
    elif case == "overwrite":
        shutil.copy(ref, store)
    elif case == "up to date":  # nothing to write
        _completed(store, ref)
    before = {p.name: sha(p) for p in out.iterdir()}
    _read_only(monkeypatch, out)
    args = ["cache-teachers", "--data", spec, "--teacher", str(teacher), "--out", str(out),
            "--workers", "1"] + (["--overwrite"] if case == "overwrite" else [])
    res = CliRunner().invoke(uni, args)
    if case == "up to date":  # nothing to write: fine on a read-only disk
        assert res.exit_code == 0 and "up to date" in res.stdout, res.output
    else:
        one_line_error(res, ref.name, "Read-only file system")
    monkeypatch.undo()
    assert {p.name: sha(p) for p in out.iterdir()} == before


def test_train_checkpoint_on_a_full_disk_is_one_line(stage_two, tmp_path, monkeypatch):
    spec, _, stores = stage_two
    cfg = tmp_path / "c.toml"
    cfg.write_text("val-fraction = 0.0\nsave-every = 1\n")
    real, calls = torch.save, []

    def save(obj, path, *a, **kw):
        calls.append(path)
        if len(calls) < 2:
            return real(obj, path, *a, **kw)
        Path(path).write_bytes(b"PK\x03\x04 half a zip")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576")

    monkeypatch.setattr(torch, "save", save)
    run_dir = tmp_path / "run"
    one_line_error(CliRunner().invoke(uni, train_args(spec, stores, run_dir, cfg)),
                   str(run_dir / "last.pt"), "cannot write the checkpoint",
                   "previous one is kept")
    monkeypatch.undo()
    assert torch.load(run_dir / "last.pt", weights_only=False)["step"] == 1
    assert not (run_dir / "last.pt.tmp").exists()
