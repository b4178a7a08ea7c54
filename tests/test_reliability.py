"""Reliability (issue 8): jobs killed at named moments, damaged stores, full or read-only disks,
and bad input — each ends in one line and exit 2, or in a store equal to an uninterrupted run's.

Kills use the UNI_KILL_AT test hook (core/killpoints.py): the job SIGKILLs itself at a named point,
in a subprocess, so the kill is real and lands at the same place every time.
"""

from __future__ import annotations

import csv
import errno
import hashlib
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import types
from collections import namedtuple
from pathlib import Path

import h5py
import numpy as np
import onnx
import pytest
import torch
from analytic_teacher import write_analytic_store
from click.testing import CliRunner
from conftest import DATA
from test_store import _corrupt_chunk

from uniskel.cli import uni
from uniskel.core.datasets import load_dataset
from uniskel.core.skeletons import get_skeleton
from uniskel.pipeline.cache import cache_teachers
from uniskel.stores import create as store_create
from uniskel.stores import heatmap_store as hs
from uniskel.stores import lock as store_lock
from uniskel.stores import writer as sw

UNI = [sys.executable, "-m", "uniskel.cli"]  # this venv's uni command

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
BATCH = 4


def _one_line_error(result, *fragments: str) -> str:
    """A CliRunner result or CompletedProcess: exit 2, one 'uni: error:' line holding every
    fragment, no traceback. Progress bars (tqdm, carriage returns) are not error lines."""
    code = getattr(result, "exit_code", None)
    code = result.returncode if code is None else code
    err = result.stderr
    lines = [ln for ln in err.replace("\r", "\n").splitlines() if ln.strip() and "%|" not in ln]
    assert code == 2, (code, err[-2000:])
    assert len(lines) == 1 and lines[0].startswith("uni: error:"), err[-2000:]
    assert "Traceback" not in err
    for f in fragments:
        assert f in lines[0], (f, lines[0])
    return lines[0]


def _names(out: Path) -> list[str]:
    """The files in `out`, less the verification records checks leave (stores/verify.py)."""
    return sorted(p.name for p in out.iterdir() if not p.name.endswith(".verified"))


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _old_store(tmp_path: Path, name: str, src: Path) -> tuple[Path, Path, str]:
    """(out dir, out/name holding a copy of src, its sha256): an existing store to protect."""
    out = tmp_path / "out"
    out.mkdir()
    store = out / name
    shutil.copy(src, store)
    return out, store, _sha(store)


# --------------------------------------------------------------------------- stage one data


def _coco_spec(tmp: Path, times: int, images: Path) -> str:
    """The real COCO sample, its annotations repeated `times` times (new ids)."""
    data = json.loads((DATA / "coco/test_coco.json").read_text())
    anns = data["annotations"]
    data["annotations"] = [dict(a, id=r * 1_000_000 + a["id"]) for r in range(times)
                           for a in anns]
    (tmp / "ann.json").write_text(json.dumps(data))
    return f"coco:{tmp / 'ann.json'}:{images}"


@pytest.fixture(scope="module")
def stage_one(heatmap_teacher, tmp_path_factory):
    """(spec, teacher, reference store, no-flip store): 36 instances, one image truncated (its
    people are skipped, so the stores stay partial), cached without interruption, with and
    without flip."""
    tmp = tmp_path_factory.mktemp("stage_one")
    images = tmp / "images"
    shutil.copytree(DATA / "coco/images", images)
    broken = sorted(images.iterdir())[1]
    broken.write_bytes(broken.read_bytes()[:200])
    spec = _coco_spec(tmp, 3, images)
    (ref,) = cache_teachers([spec], [heatmap_teacher], tmp / "ref", workers=1,
                            batch_size=BATCH, progress=False)
    (no_flip,) = cache_teachers([spec], [heatmap_teacher], tmp / "no_flip", workers=1,
                                batch_size=BATCH, flip_test=False, progress=False)
    assert ref.skipped and ref.computed + len(ref.skipped) == ref.instances == 36
    return spec, heatmap_teacher, ref.path, no_flip.path


def _cache_cmd(spec: str, teacher: Path, out: Path, *extra: str) -> list[str]:
    return [*UNI, "cache-teachers", "--data", spec, "--teacher",
            str(teacher), "--out", str(out), "--workers", "1", "--batch-size", str(BATCH),
            *extra]


def _run(cmd: list[str], fault: str | None = None, **kw) -> subprocess.CompletedProcess:
    env = {**ENV, "UNI_KILL_AT": fault} if fault else ENV
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
                          **kw)


def _assert_same_store(path: Path, ref: Path) -> None:
    """Same rows, done mask, skipped list and stored bytes; as complete; verify clean."""
    a, b = hs.open_store(path), hs.open_store(ref)
    assert a.complete == b.complete == (not b.skipped)  # skipped people: retried next run
    np.testing.assert_array_equal(a.instance_ids, b.instance_ids)
    np.testing.assert_array_equal(a.done, b.done)
    assert a.skipped == b.skipped
    for row in np.flatnonzero(b.done):
        for x, y in zip(a.read_raw(row), b.read_raw(row), strict=True):
            np.testing.assert_array_equal(x, y)
    res = CliRunner().invoke(uni, ["inspect-store", str(path), "--verify"])
    assert res.exit_code == 0 and "verify       ok" in res.output, res.output


# --------------------------------------------------------------------------- kill -9


MOMENTS = {"early": "cache-start", "writing": "cache-batch:2", "mid-batch": "store-chunk:3",
           "finalising": "store-finalize"}


@pytest.mark.parametrize("moment", MOMENTS)
def test_cache_killed_then_restarted_equals_uninterrupted(moment, stage_one, tmp_path):
    spec, teacher, ref, _ = stage_one
    out = tmp_path / "out"
    cmd = _cache_cmd(spec, teacher, out)
    killed = _run(cmd, MOMENTS[moment])
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    store, lock = out / ref.name, out / (ref.name + ".lock")
    assert lock.is_file()  # the dead writer's
    at_kill = hs.open_store(store)
    n_ref = int(hs.open_store(ref).done.sum())
    n_done = int(at_kill.done.sum())
    assert not at_kill.complete
    assert {"early": n_done == 0, "writing": 0 < n_done <= 2 * BATCH,
            "mid-batch": 0 < n_done <= 2 * BATCH, "finalising": n_done == n_ref}[moment], n_done

    again = _run(cmd)
    assert again.returncode == 0, again.stderr[-2000:]
    assert again.stderr.count("taking over the lock") == 1
    assert f"{n_ref - n_done} computed" in again.stdout
    assert not lock.exists() and _names(out) == [ref.name]
    _assert_same_store(store, ref)


def test_cache_overwrite_killed_keeps_old_store_then_finishes(stage_one, tmp_path):
    """--overwrite writes beside the old store: killed while finalising, the old one is whole;
    run again, the rebuild resumes and replaces it."""
    spec, teacher, ref, no_flip = stage_one
    out, store, before = _old_store(tmp_path, ref.name, no_flip)
    cmd = _cache_cmd(spec, teacher, out, "--overwrite")
    assert _run(cmd, "store-finalize").returncode == -signal.SIGKILL
    assert _sha(store) == before and hs.open_store(store).verify() == []
    again = _run(cmd)
    assert again.returncode == 0, again.stderr[-2000:]
    assert again.stderr.count("taking over the lock") == 1
    assert _names(out) == [ref.name]
    _assert_same_store(store, ref)


# --------------------------------------------------------------------------- disk full


def test_cache_stops_before_the_disk_is_full_and_resumes(stage_one, tmp_path, monkeypatch):
    spec, teacher, ref, _ = stage_one
    out = tmp_path / "out"
    real, calls = shutil.disk_usage, []
    usage = namedtuple("usage", "total used free")

    def filling_up(path):
        calls.append(path)
        return real(path) if len(calls) <= 2 else usage(10 << 30, (10 << 30) - (5 << 20), 5 << 20)

    monkeypatch.setattr(sw.shutil, "disk_usage", filling_up)
    args = ["cache-teachers", "--data", spec, "--teacher", str(teacher), "--out", str(out),
            "--workers", "1", "--batch-size", str(BATCH)]
    _one_line_error(CliRunner().invoke(uni, args), ref.name, "disk full", "5 MB free")
    monkeypatch.undo()
    store = out / ref.name
    r = hs.open_store(store)
    assert 0 < r.done.sum() <= 2 * BATCH and not r.complete and r.verify() == []
    r.close()
    assert _names(out) == [ref.name]  # no lock, no temp file
    again = CliRunner().invoke(uni, args)
    assert again.exit_code == 0, again.output
    _assert_same_store(store, ref)


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
    out, store, before = _old_store(tmp_path, ref.name, no_flip)
    if not overwrite:
        store.unlink()
    r = hs.open_store(ref)
    empty = tmp_path / "empty.h5"
    sw.create_store(empty, r.meta, r.instance_ids)
    # Room for the empty store, a batch's reservation and about half of the rows' data.
    limit = (empty.stat().st_size + sw.RESERVE_SLACK + 16_000
             + (ref.stat().st_size - empty.stat().st_size) // 2)
    cmd = _cache_cmd(spec, teacher, out, *(["--overwrite"] if overwrite else []))
    work = out / (f"{ref.name}.tmp" if overwrite else ref.name)
    failed = _run(cmd, preexec_fn=_file_size_limit(limit))
    _one_line_error(failed, f"{work.name}: no room for the next batch (File too large)",
                    "intact")
    at_failure = hs.open_store(work)
    n_done, n_ref = int(at_failure.done.sum()), int(r.done.sum())
    assert 0 < n_done < n_ref and at_failure.verify() == []
    at_failure.close()  # HDF5 locks the file against the next run's writer
    assert not list(out.glob("*.lock"))
    if overwrite:
        assert _sha(store) == before and hs.open_store(store).verify() == []
    again = _run(cmd)
    assert again.returncode == 0, again.stderr[-2000:]
    assert f"{n_ref - n_done} computed" in again.stdout
    _assert_same_store(store, ref)


_BREAK_HDF5 = """
import os, sys
from uniskel.stores import guard, writer as sw
state = {{"chunks": 0}}
reserve = guard.WriteGuard.reserve

def _reserve(self, n):  # remember the writer's guard
    state["guard"] = self
    return reserve(self, n)

def kill_point(point):  # HDF5's descriptor turns read-only after batch {at}'s first chunk
    state["chunks"] += point == "store-chunk"
    if point == "store-chunk" and state["chunks"] == {at}:
        g = state["guard"]
        os.dup2(os.open(g.path, os.O_RDONLY), g.f.id.get_vfd_handle())

guard.WriteGuard.reserve, sw.fault = _reserve, fault
from uniskel.cli import uni
uni(sys.argv[1:], prog_name="uni")
"""


def test_cache_hdf5_write_failing_mid_batch_keeps_finished_rows(stage_one, tmp_path):
    """A write HDF5 itself fails mid-batch (an I/O error: EBADF here) is one line, exit 2; the
    store opens as of the last whole batch (nothing of the failed one reaches it), and the next
    run computes only the rest and ends equal to an uninterrupted run."""
    spec, teacher, ref, _ = stage_one
    out = tmp_path / "out"
    cmd = _cache_cmd(spec, teacher, out)
    code = _BREAK_HDF5.format(at=3)
    failed = _run([sys.executable, "-c", code, *cmd[3:]])
    _one_line_error(failed, f"{ref.name}: write failed (Bad file descriptor)")
    at_failure = hs.open_store(out / ref.name)
    n_done, n_ref = int(at_failure.done.sum()), int(hs.open_store(ref).done.sum())
    assert 0 < n_done <= 2 * BATCH and at_failure.verify() == []
    at_failure.close()
    assert not list(out.glob("*.lock"))
    again = _run(cmd)
    assert again.returncode == 0, again.stderr[-2000:]
    assert f"{n_ref - n_done} computed" in again.stdout
    _assert_same_store(out / ref.name, ref)


# --------------------------------------------------------------------------- read-only


def _read_only(monkeypatch, directory: Path) -> None:
    """Make the store modules see `directory` as a read-only file system (root ignores chmod):
    creating a file there fails as the kernel and HDF5 report it."""
    def ro(path) -> bool:
        return Path(path).resolve().is_relative_to(directory.resolve())

    def file(name, mode="r", *a, **kw):
        if mode != "r" and ro(name):
            raise OSError(errno.EROFS, "Unable to synchronously create file (unable to open "
                          f"file: name = '{name}', errno = 30, error message = 'Read-only file "
                          "system', flags = 13, o_flags = 242)")
        return h5py.File(name, mode, *a, **kw)

    def os_open(path, flags, *a, **kw):
        if flags & os.O_CREAT and ro(path):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return os.open(path, flags, *a, **kw)

    fake_h5py = types.ModuleType("h5py")
    fake_h5py.__dict__.update(h5py.__dict__, File=file)
    fake_os = types.ModuleType("os")
    fake_os.__dict__.update(os.__dict__, open=os_open)
    for module in (hs, store_create):
        monkeypatch.setattr(module, "h5py", fake_h5py)
    for module in (hs, store_create, store_lock):
        monkeypatch.setattr(module, "os", fake_os)


@pytest.mark.parametrize("case", ["new store", "partial store", "overwrite", "up to date"])
def test_cache_read_only_out_dir(case, stage_one, tmp_path, monkeypatch):
    spec, teacher, ref, _ = stage_one
    out = tmp_path / "out"
    out.mkdir()
    store = out / ref.name
    if case == "partial store":  # a run stopped after its first batch
        sw.create_store(store, hs.open_store(ref).meta, hs.open_store(ref).instance_ids)
        with sw.StoreWriter(store) as w:
            r = hs.open_store(ref)
            rows = np.flatnonzero(r.done)[:BATCH]
            w.write(rows, np.stack([r.read(i)[0] for i in rows]),
                    np.stack([r.read(i)[1] for i in rows]))
    elif case in ("overwrite", "up to date"):
        shutil.copy(ref, store)
    if case == "up to date":  # the reference's skipped rows filled in: complete
        with sw.StoreWriter(store) as w:
            r = hs.open_store(ref)
            rows = np.flatnonzero(~r.done)
            k, h, w_ = r.meta.heatmap_shape
            w.write(rows, np.ones((len(rows), k, h, w_), np.float32),
                    np.tile(np.eye(2, 3), (len(rows), 1, 1)))
            assert w.finalize({})
    before = {p.name: _sha(p) for p in out.iterdir()}
    _read_only(monkeypatch, out)
    args = ["cache-teachers", "--data", spec, "--teacher", str(teacher), "--out", str(out),
            "--workers", "1"] + (["--overwrite"] if case == "overwrite" else [])
    res = CliRunner().invoke(uni, args)
    if case == "up to date":  # nothing to write: fine on a read-only disk
        assert res.exit_code == 0 and "up to date" in res.stdout, res.output
    else:
        _one_line_error(res, ref.name, "Read-only file system")
    assert {p.name: _sha(p) for p in out.iterdir()} == before


# --------------------------------------------------------------------------- stage two


@pytest.fixture(scope="module")
def stage_two(synth_dir, tmp_path_factory):
    """(spec, dataset, store dir): 10 people of the synthetic COCO train set (3 steps of 4 an
    epoch) and one analytic teacher's store of them."""
    tmp = tmp_path_factory.mktemp("stage_two")
    raw = json.loads((synth_dir / "coco/train.json").read_text())
    raw["annotations"] = raw["annotations"][:10]
    (tmp / "ten.json").write_text(json.dumps(raw))
    spec = f"coco:{tmp / 'ten.json'}:{synth_dir / 'coco/images'}"
    ds = load_dataset(spec)
    assert len(ds.instances) == 10
    (tmp / "stores").mkdir()
    write_analytic_store(tmp / "stores/t__coco.h5", ds, "coco17", "t", input_wh=(48, 64))
    return spec, ds, tmp / "stores"


def _train_args(spec: str, stores: Path, out: Path, config: Path | None = None,
                epochs: int = 1) -> list[str]:
    args = ["train-student", "--data", spec, "--stores", str(stores), "--out", str(out),
            "--input-size", "64x48", "--epochs", str(epochs), "--batch-size", "4", "--workers",
            "0"]
    return args + (["--config", str(config)] if config else [])


def _toml(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# 3 epochs of 3 steps (9 of the 10 people train, 1 validates), a metrics row at every step.
EXACT = "val-fraction = 0.1\nlog-every = 1\n"


@pytest.fixture(scope="module")
def straight_run(stage_two, tmp_path_factory) -> Path:
    """An uninterrupted 3-epoch run that never checkpoints mid-epoch."""
    spec, _, stores = stage_two
    tmp = tmp_path_factory.mktemp("straight")
    cfg = _toml(tmp / "c.toml", EXACT + "save-every-s = 0\n")
    res = CliRunner().invoke(uni, _train_args(spec, stores, tmp / "run", cfg, epochs=3))
    assert res.exit_code == 0, res.output
    return tmp / "run"


def _metrics(run: Path) -> list[dict]:
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    return [{k: v for k, v in r.items() if k != "samples_per_s"} for r in rows]


def _assert_same_run(run: Path, ref: Path) -> None:
    """Bit for bit the same end: weights, optimiser, grad scaler, position, RNG states,
    best.pt, and metrics.csv (but the samples/s, which measure the clock)."""
    for name in ("last.pt", "best.pt"):
        a, b = (torch.load(r / name, weights_only=True) for r in (run, ref))
        for key in ("epoch", "step", "step_in_epoch", "best", "val_loss", "sums", "seen",
                    "skipped", "scaler"):
            assert a[key] == b[key], (name, key, a[key], b[key])
        for k, v in b["model"].items():
            assert torch.equal(a["model"][k], v), (name, k)
        for i, state in b["optimizer"]["state"].items():
            for k, v in state.items():
                assert torch.equal(a["optimizer"]["state"][i][k], v), (name, i, k)
        assert torch.equal(a["rng"]["torch"], b["rng"]["torch"])
        assert a["rng"]["numpy"] == b["rng"]["numpy"] and a["rng"]["python"] == b["rng"]["python"]
    assert _metrics(run) == _metrics(ref)


def test_train_killed_mid_epoch_resumes_to_the_same_bits(stage_two, straight_run, tmp_path):
    """Checkpoints by time (here: after every step) land mid-epoch; killed in the middle of the
    second epoch, one step past its last checkpoint, --resume ends bit for bit where a run that
    never stopped (and never saved mid-epoch) ends, metrics.csv included."""
    spec, _, stores = stage_two
    run = tmp_path / "run"
    cfg = _toml(tmp_path / "c.toml", EXACT + "save-every-s = 1e-9\n")
    killed = _run([*UNI, *_train_args(spec, stores, run, cfg, epochs=3)],
                  "train-step:5")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    at_kill = torch.load(run / "last.pt", weights_only=True)
    assert (at_kill["epoch"], at_kill["step"], at_kill["step_in_epoch"]) == (1, 4, 1)
    assert at_kill["seen"] == 4 and at_kill["sums"]["total"] > 0  # the epoch's running sums
    assert max(int(r["step"]) for r in _metrics(run)) == 5  # step 5 logged, then lost
    done = CliRunner().invoke(uni, ["train-student", "--out", str(run), "--resume"])
    assert done.exit_code == 0, done.output
    _assert_same_run(run, straight_run)


def test_train_resume_before_any_checkpoint_starts_the_run(stage_two, straight_run, tmp_path):
    """Killed before its first checkpoint, --resume starts the run from its config.toml
    (saying so in one line) and ends as the uninterrupted run; a run dir with nothing in it
    starts with --data, and without it is one line."""
    spec, _, stores = stage_two
    run = tmp_path / "run"
    cfg = _toml(tmp_path / "c.toml", EXACT)  # the default: a checkpoint every 600 s
    killed = _run([*UNI, *_train_args(spec, stores, run, cfg, epochs=3)],
                  "train-step:2")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert not (run / "last.pt").exists() and (run / "config.toml").is_file()
    done = CliRunner().invoke(uni, ["train-student", "--out", str(run), "--resume"])
    assert done.exit_code == 0, done.output
    said = [ln for ln in done.stderr.splitlines() if "no checkpoint yet" in ln]
    assert said == [f"uni: {run}: no checkpoint yet; starting the run as its config.toml says"]
    _assert_same_run(run, straight_run)

    fresh = tmp_path / "fresh"
    res = CliRunner().invoke(uni, _train_args(spec, stores, fresh, cfg) + ["--resume"])
    assert res.exit_code == 0, res.output
    assert f"uni: {fresh}: no checkpoint yet; starting the run\n" in res.stderr
    assert torch.load(fresh / "last.pt", weights_only=True)["step"] == 3
    _one_line_error(CliRunner().invoke(uni, ["train-student", "--out", str(tmp_path / "none"),
                                             "--resume"]),
                    "none: nothing to resume (no last.pt or config.toml) and no --data")


def test_train_refuses_a_damaged_store_or_skips_what_it_is_told(stage_two, tmp_path):
    spec, ds, stores = stage_two
    damaged = tmp_path / "stores"
    shutil.copytree(stores, damaged)
    store = damaged / "t__coco.h5"
    row = 5
    _corrupt_chunk(store, row)
    iid = int(hs.open_store(store).instance_ids[row])
    cfg = tmp_path / "c.toml"
    cfg.write_text("val-fraction = 0.0\n")
    run = tmp_path / "refused"
    _one_line_error(CliRunner().invoke(uni, _train_args(spec, damaged, run, cfg)),
                    str(store), f"instance {iid} (row {row})", "checksum", "--skip-corrupt")
    assert not run.exists()  # refused before anything was written
    # Told to skip: a whole epoch runs, so the damaged instance (whose read would raise
    # mid-training) was never drawn.
    res = CliRunner().invoke(uni, _train_args(spec, damaged, tmp_path / "skip", cfg)
                             + ["--skip-corrupt"])
    assert res.exit_code == 0, res.output
    assert res.stderr.count("skipping 1 training instances whose cached targets are "
                            "damaged") == 1 and f"instance {iid}" in res.stderr
    ckpt = torch.load(tmp_path / "skip/last.pt", weights_only=False)
    assert ckpt["epoch"] == 1 and ckpt["step"] == 3  # ⌈9 / 4⌉


@pytest.mark.parametrize("workers", ["0", "1"])
def test_train_chunk_damaged_after_its_check_is_one_line_or_skipped(stage_two, tmp_path,
                                                                   workers):
    """A store checked clean, then damaged without its size or mtime changing (bit rot): the
    next start trusts its record, so the damage is met while training — one line, even when a
    DataLoader worker meets it, or with --skip-corrupt the sample skipped and counted."""
    spec, _, stores = stage_two
    rotten = tmp_path / "stores"
    shutil.copytree(stores, rotten)
    store, row = rotten / "t__coco.h5", 5
    assert hs.open_store(store).check().rows_read == 10  # a copy: read whole, then recorded
    assert hs.open_store(store).check().rows_read == 0  # the record vouches for every row
    st = store.stat()
    _corrupt_chunk(store, row)
    os.utime(store, ns=(st.st_atime_ns, st.st_mtime_ns))
    iid = int(hs.open_store(store).instance_ids[row])
    cfg = _toml(tmp_path / "c.toml", "val-fraction = 0.0\n")
    args = _train_args(spec, rotten, tmp_path / "refused", cfg) + ["--workers", workers]
    _one_line_error(CliRunner().invoke(uni, args), str(store), f"instance {iid} (row {row})",
                    "checksum", "found while training; --skip-corrupt trains without it")
    args = _train_args(spec, rotten, tmp_path / "skip", cfg) + ["--workers", workers]
    res = CliRunner().invoke(uni, args + ["--skip-corrupt"])
    assert res.exit_code == 0, res.output
    assert f"uni: skipped 1 unreadable samples; first: {store}: heatmaps of instance {iid}" in (
        res.stderr)
    assert torch.load(tmp_path / "skip/last.pt", weights_only=True)["step"] == 3


def test_train_killed_while_writing_a_checkpoint_keeps_the_previous(stage_two, tmp_path):
    spec, _, stores = stage_two
    cfg = tmp_path / "c.toml"
    cfg.write_text("val-fraction = 0.0\nsave-every = 1\n")
    run = tmp_path / "run"
    cmd = [*UNI, *_train_args(spec, stores, run, cfg)]
    killed = _run(cmd, "checkpoint:2")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert (run / "last.pt.tmp").is_file()  # the second checkpoint, never renamed
    assert torch.load(run / "last.pt", weights_only=False)["step"] == 1
    done = CliRunner().invoke(uni, ["train-student", "--out", str(run), "--resume"])
    assert done.exit_code == 0, done.output
    final = torch.load(run / "last.pt", weights_only=False)
    assert final["epoch"] == 1 and final["step"] == 3
    assert not (run / "last.pt.tmp").exists()


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
    run = tmp_path / "run"
    _one_line_error(CliRunner().invoke(uni, _train_args(spec, stores, run, cfg)),
                    str(run / "last.pt"), "cannot write the checkpoint", "previous one is kept")
    monkeypatch.undo()
    assert torch.load(run / "last.pt", weights_only=False)["step"] == 1
    assert not (run / "last.pt.tmp").exists()


def test_train_teacher_with_two_skeletons_is_one_line(synth_dir, tmp_path):
    specs = [f"coco:{synth_dir / 'coco/train.json'}", f"mpii:{synth_dir / 'mpii/train.json'}"]
    coco, mpii = (load_dataset(s) for s in specs)
    write_analytic_store(tmp_path / "s" / "a.h5", coco, "coco17", "t", input_wh=(48, 64)) if (
        tmp_path / "s").mkdir() is None else None
    write_analytic_store(tmp_path / "s" / "b.h5", mpii, "mpii16", "t", input_wh=(48, 64))
    run = tmp_path / "run"
    res = CliRunner().invoke(uni, ["train-student", "--data", specs[0], "--data", specs[1],
                                   "--stores", str(tmp_path / "s"), "--out", str(run)])
    _one_line_error(res, "b.h5", "teacher 't' has skeleton mpii16 here but coco17")
    assert not run.exists()


# --------------------------------------------------------------------------- bad input


def _edited(tmp_path: Path, edit) -> str:
    raw = json.loads((DATA / "coco/test_coco.json").read_text())
    edit(raw)
    (tmp_path / "ann.json").write_text(json.dumps(raw))
    return f"coco:{tmp_path / 'ann.json'}:{DATA / 'coco/images'}"


def _kp(value):
    def edit(raw):
        raw["annotations"][0]["keypoints"][4] = value
    return edit


def _bbox(value):
    def edit(raw):
        raw["annotations"][0]["bbox"] = value
    return edit


def _file_name(value):
    def edit(raw):
        raw["images"][0]["file_name"] = value
    return edit


BAD_ANNOTATIONS = {
    "nan keypoint": (_kp(float("nan")), ["'keypoints'", "NaN"]),
    "inf keypoint": (_kp(float("inf")), ["'keypoints'", "NaN or inf"]),
    "inf bbox": (_bbox([1, 2, float("inf"), 5]), ["'bbox'", "NaN or inf"]),
    "negative bbox": (_bbox([10, 20, -5, 30]), ["'bbox'", "must be positive"]),
    "escaping image path": (_file_name("../../secret.jpg"), ["images[0]", "escapes"]),
    "absolute image path": (_file_name("/etc/passwd"), ["images[0]", "escapes"]),
}


@pytest.mark.parametrize("case", sorted(BAD_ANNOTATIONS))
def test_bad_annotations_stop_cache_teachers_leaving_nothing(case, heatmap_teacher, tmp_path):
    edit, fragments = BAD_ANNOTATIONS[case]
    spec = _edited(tmp_path, edit)
    out = tmp_path / "out"
    res = CliRunner().invoke(uni, ["cache-teachers", "--data", spec, "--teacher",
                                   str(heatmap_teacher), "--out", str(out), "--workers", "1"])
    _one_line_error(res, "ann.json", *fragments)
    assert not out.exists()


def test_missing_image_skipped_and_listed_or_fatal_with_strict(heatmap_teacher, tmp_path):
    images = tmp_path / "images"
    shutil.copytree(DATA / "coco/images", images)
    gone = sorted(images.iterdir())[0]
    gone.unlink()
    spec = f"coco:{DATA / 'coco/test_coco.json'}:{images}"
    users = [i.instance_id for i in load_dataset(spec).instances if i.image_path == gone]
    out = tmp_path / "out"
    base = ["cache-teachers", "--data", spec, "--teacher", str(heatmap_teacher), "--out",
            str(out), "--workers", "1", "--batch-size", "32"]
    _one_line_error(CliRunner().invoke(uni, base + ["--strict"]), str(gone), "instance",
                    "--strict")
    store = next(out.glob("*.h5"))  # resumable, nothing half-written in it
    assert not hs.open_store(store).complete and hs.open_store(store).verify() == []
    assert _names(out) == [store.name]
    res = CliRunner().invoke(uni, base)
    assert res.exit_code == 0, res.output
    assert f"{len(users)} skipped" in res.stdout and str(gone) in res.stdout
    r = hs.open_store(store)
    assert not r.complete and sorted(r.skipped) == sorted(users)  # retried by the next run
    assert all(str(gone) in reason for reason in r.skipped.values())


def _stamp(src: Path, dst: Path, **fields) -> Path:
    """A copy of a teacher whose metadata says something else (no checks on the way)."""
    model = onnx.load(str(src))
    for p in model.metadata_props:
        if p.key[len("uni."):] in fields:
            p.value = json.dumps(fields[p.key[len("uni."):]])
    onnx.save(model, str(dst))
    return dst


@pytest.mark.parametrize("fields,fragment", [
    ({"skeleton": "halpe26", "num_keypoints": 26,
      "skeleton_def": get_skeleton("halpe26").to_json()},
     "17 channels, fewer than the 26 keypoints"),
    # A definition that contradicts the skeleton's name is caught before anything runs.
    ({"skeleton": "halpe26", "num_keypoints": 26},
     "field 'skeleton_def': defines 'coco17', not the skeleton 'halpe26'"),
    ({"head": "simcc", "activation": "softmax"}, "has rank 4, expected 3"),
])
def test_teacher_outputs_not_matching_its_description(fields, fragment, heatmap_teacher,
                                                      tmp_path):
    model = _stamp(heatmap_teacher, tmp_path / "liar.onnx", **fields)
    out = tmp_path / "out"
    res = CliRunner().invoke(uni, ["cache-teachers", "--data", f"coco:{DATA}/coco/test_coco.json",
                                   "--teacher", str(model), "--out", str(out)])
    _one_line_error(res, "liar.onnx", fragment)
    assert not out.exists()


def test_store_of_another_crop_setting_is_refused_untouched(stage_one, tmp_path):
    spec, teacher, ref, _ = stage_one
    out = tmp_path / "out"
    out.mkdir()
    store = out / ref.name
    shutil.copy(ref, store)
    with h5py.File(store, "r+") as f:
        f.attrs["padding"] = 1.5  # as if cached with another crop padding
    before = _sha(store)
    res = CliRunner().invoke(uni, ["cache-teachers", "--data", spec, "--teacher", str(teacher),
                                   "--out", str(out), "--workers", "1"])
    _one_line_error(res, ref.name, "built with padding 1.5, now 1.25", "--overwrite")
    assert _sha(store) == before


def test_mpii_mat_without_head_boxes(tmp_path):
    import scipy.io

    mat = tmp_path / "mpii_gt_val.mat"
    scipy.io.savemat(str(mat), {"jnt_missing": np.zeros((16, 5)),
                                "pos_gt_src": np.zeros((16, 2, 5))})
    spec = f"mpii:{DATA}/mpii/test_mpii.json"
    for cmd in (["inspect-data", spec], ["evaluate", "--predictions", str(mat), "--data", spec]):
        res = CliRunner().invoke(uni, [*cmd, "--head-boxes", str(mat)])
        _one_line_error(res, "mpii_gt_val.mat", "missing field 'headboxes_src'")
