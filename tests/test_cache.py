"""Stage one's caching job: stores match direct teacher runs, resume, refusal, workers, one
pass over a dataset for all teachers, encoded results, the decode pool."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import DATA

from uniskel.core.crops import crop_person, read_image
from uniskel.core.datasets import load_dataset
from uniskel.core.errors import UniError
from uniskel.core.geometry import compose, crop_to_heatmap
from uniskel.core.heatmaps import decode_heatmaps
from uniskel.pipeline.cache import cache_teachers, format_run_summary
from uniskel.pipeline.cache_plan import store_name
from uniskel.pipeline.teachers import Teacher
from uniskel.stores.reader import open_store
from uniskel.stores.writer import StoreWriter

UNI = [sys.executable, "-m", "uniskel"]  # the installed package's uni command

REPO = Path(__file__).resolve().parents[1]
IMAGES = DATA / "coco/images"


def _coco(tmp: Path, times: int = 1, name: str = "ann.json", images: Path = IMAGES) -> str:
    """The real COCO sample with its annotations repeated `times` times (new ids) → data spec."""
    data = json.loads((DATA / "coco/test_coco.json").read_text())
    anns = data["annotations"]
    data["annotations"] = [dict(a, id=r * 1_000_000 + a["id"]) for r in range(times)
                           for a in anns]
    (tmp / name).write_text(json.dumps(data))
    return f"coco:{tmp / name}:{images}"


def _contents(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(done (N,), heatmaps (N, K, h, w), affines (N, 2, 3)) of a store, decoded; rows not
    done are zero."""
    r = open_store(path)
    k, h, w = r.meta.heatmap_shape
    hm, aff = np.zeros((len(r), k, h, w), np.float32), np.zeros((len(r), 2, 3))
    for row in np.flatnonzero(r.done):
        hm[row], aff[row] = r.read(row)
    return np.asarray(r.done), hm, aff


@pytest.mark.parametrize("teacher", ["heatmap_teacher", "simcc_teacher"])
def test_store_matches_direct_run(teacher, request, tmp_path):
    path = request.getfixturevalue(teacher)
    spec = _coco(tmp_path)
    (s,) = cache_teachers([spec], [path], tmp_path / "out", workers=1, progress=False)
    assert s.computed == s.instances == 12 and not s.skipped
    assert "12 instances, 12 computed, 0 skipped" in format_run_summary(s)
    ds = load_dataset(spec)
    assert s.path == tmp_path / "out" / store_name(Teacher(path).info.name, ds)
    done, stored, affines = _contents(s.path)
    assert done.all()

    t = Teacher(path)
    reader = open_store(s.path)
    for inst in ds.instances:
        row = int(reader.rows(inst.instance_id)[0])
        crop, crop_aff = crop_person(read_image(inst.image_path), inst.bbox, t.info.input_wh,
                                     t.info.padding)
        raw = t.predict(crop[None])[0]  # (K, h, w) float32
        want_aff = compose(crop_to_heatmap(t.info.input_wh, t.heatmap_wh), crop_aff)
        np.testing.assert_allclose(affines[row], want_aff, rtol=1e-9, atol=1e-9)
        # uint8 quantisation per keypoint: error within ~1/255 of each channel's peak
        # (plus the zeroed background under the store's small threshold).
        peak = raw.max(axis=(1, 2), keepdims=True)
        assert (np.abs(stored[row] - raw) <= 0.02 * peak + 1e-7).all()
        got_xy, _ = decode_heatmaps(stored[row][None])
        raw_xy, _ = decode_heatmaps(raw[None])
        assert np.abs(got_xy - raw_xy).max() <= 0.5


def test_up_to_date_mismatch_overwrite(heatmap_teacher, simcc_teacher, tmp_path):
    spec, out = _coco(tmp_path), tmp_path / "out"
    (first,) = cache_teachers([spec], [heatmap_teacher], out, workers=1, progress=False)
    before = _contents(first.path)

    t0 = time.perf_counter()
    (again,) = cache_teachers([spec], [heatmap_teacher], out, workers=4, progress=False)
    assert again.up_to_date and time.perf_counter() - t0 < 5  # no cluster started
    assert "up to date" in format_run_summary(again)

    # Same store name, different settings: refused in one line, store untouched.
    with pytest.raises(UniError, match="flip") as e:
        cache_teachers([spec], [heatmap_teacher], out, workers=1, flip_test=False,
                       progress=False)
    assert "--overwrite" in str(e.value) and "\n" not in str(e.value)
    np.testing.assert_array_equal(_contents(first.path)[1], before[1])

    (rebuilt,) = cache_teachers([spec], [heatmap_teacher], out, workers=1, flip_test=False,
                                overwrite=True, progress=False)
    assert rebuilt.path == first.path and rebuilt.computed == 12
    assert not list(out.glob("*.tmp"))
    no_flip = _contents(first.path)
    assert not np.allclose(no_flip[1], before[1], atol=1e-3)
    np.testing.assert_array_equal(no_flip[2], before[2])  # same crops, same affines

    # Another quantisation threshold is another store too.
    with pytest.raises(UniError, match="threshold .* now 0.9.*--overwrite"):
        cache_teachers([spec], [heatmap_teacher], out, workers=1, flip_test=False,
                       threshold=0.9, progress=False)
    cache_teachers([spec], [heatmap_teacher], out, workers=1, flip_test=False, threshold=0.9,
                   overwrite=True, progress=False)
    assert open_store(first.path).attrs["threshold"] == 0.9
    coarse = _contents(first.path)[1]
    rel = no_flip[1] / no_flip[1].max(axis=(2, 3), keepdims=True)
    # This teacher's maps are flat (all ≥ 0.7 of the peak): 0.9 is what zeroes half of them.
    assert (coarse[rel < 0.89] == 0).all() and (coarse[rel > 0.91] > 0).all()
    assert 0.2 < (rel < 0.89).mean() < 0.8


def test_unreadable_images_skipped_or_strict(heatmap_teacher, tmp_path):
    images = tmp_path / "images"
    shutil.copytree(IMAGES, images)
    victim = sorted(images.iterdir())[0]
    victim.write_bytes(victim.read_bytes()[:100])  # truncated JPEG
    spec, out = _coco(tmp_path, images=images), tmp_path / "out"
    n_victim = sum(i.image_path == victim.resolve() for i in load_dataset(spec).instances)
    assert n_victim > 0

    with pytest.raises(UniError, match=re.escape(str(victim))):
        cache_teachers([spec], [heatmap_teacher], out, workers=1, strict=True, progress=False)
    path = next(out.glob("*.h5"))  # the partial store stays, resumable

    # A second writer on the same store is refused while the first holds it.
    with StoreWriter(path), pytest.raises(UniError, match="is being written by pid"):
        cache_teachers([spec], [heatmap_teacher], out, workers=1, progress=False)

    (s,) = cache_teachers([spec], [heatmap_teacher], out, workers=1, progress=False)
    assert len(s.skipped) == n_victim and s.computed + n_victim == s.instances
    text = format_run_summary(s)
    assert f"{n_victim} skipped" in text and str(victim) in text
    done, _, _ = _contents(s.path)
    r = open_store(s.path)
    skipped_rows = r.rows(list(s.skipped))
    assert done.sum() + n_victim == s.instances and not done[skipped_rows].any()


def test_wrong_image_folder_stops_and_skipped_people_are_retried(heatmap_teacher, tmp_path):
    """Issue 16: the Halpe sample without its image folder (`:samples/coco/images`) stops with
    one line naming the folder, before any store is made; a few missing images are skipped,
    the store left partial, and a rerun once they are back completes it (legacy stores that
    were marked complete with skips too), equal to a run that never missed them."""
    from click.testing import CliRunner

    from uniskel.cli import uni

    halpe = DATA / "halpe/test_halpe.json"
    out = tmp_path / "out"
    res = CliRunner().invoke(uni, ["cache-teachers", "--data", f"halpe:{halpe}", "--teacher",
                                   str(heatmap_teacher), "--out", str(out), "--workers", "1"])
    assert res.exit_code == 2 and res.output.count("\n") == 1, res.output
    assert str(DATA / "halpe/images") in res.output and "4 of 4 images" in res.output
    assert not out.exists()  # no store, let alone a complete one
    res = CliRunner().invoke(uni, ["inspect-data", f"halpe:{halpe}", "--json"])
    assert res.exit_code == 0 and json.loads(res.stdout)["missing_images"] == 4, res.output
    res = CliRunner().invoke(uni, ["inspect-data", f"halpe:{halpe}:{IMAGES}"])
    assert "missing    0 of 4 images with people" in res.stdout, res.output

    images = tmp_path / "images"
    shutil.copytree(IMAGES, images)
    spec = f"halpe:{halpe}:{images}"
    gone = sorted(images.iterdir())[0]
    users = [i.instance_id for i in load_dataset(spec).instances if i.image_path == gone]
    gone.unlink()  # 1 of the 4 images: skipped, not fatal
    (s,) = cache_teachers([spec], [heatmap_teacher], out, workers=1, progress=False)
    assert sorted(s.skipped) == sorted(users) and s.computed == s.instances - len(users) > 0
    assert f"{len(users)} skipped, will be retried on the next run" in format_run_summary(s)
    r = open_store(s.path)
    assert not r.complete and sorted(r.skipped) == sorted(users) and r.verify() == []
    assert r.done.sum() == s.instances - len(users)
    r.close()
    with h5py.File(s.path, "r+") as f:  # as an older uni left it: complete, skips frozen in
        f.attrs["complete"] = 1

    shutil.copy(IMAGES / gone.name, gone)
    (again,) = cache_teachers([spec], [heatmap_teacher], out, workers=1, progress=False)
    assert again.computed == len(users) and not again.skipped
    (fresh,) = cache_teachers([spec], [heatmap_teacher], tmp_path / "fresh", workers=1,
                              progress=False)
    for a, b in zip(_contents(again.path), _contents(fresh.path), strict=True):
        np.testing.assert_array_equal(a, b)
    r = open_store(again.path)
    assert r.complete and r.skipped == {} and r.verify() == []
    r.close()
    (last,) = cache_teachers([spec], [heatmap_teacher], out, workers=1, progress=False)
    assert last.up_to_date


def test_two_workers_match_one(heatmap_teacher, tmp_path):
    spec = _coco(tmp_path, times=3)
    (one,) = cache_teachers([spec], [heatmap_teacher], tmp_path / "one", workers=1,
                            batch_size=5, progress=False)
    (two,) = cache_teachers([spec], [heatmap_teacher], tmp_path / "two", workers=2,
                            batch_size=5, progress=False)
    assert one.computed == two.computed == 36
    for a, b in zip(_contents(one.path), _contents(two.path), strict=True):
        np.testing.assert_array_equal(a, b)


def test_torn_partial_store_is_mended_and_finished(heatmap_teacher, tmp_path):
    """A partial store whose scales chunk a kill tore: the next run recomputes those rows and
    ends equal to an uninterrupted run (tests/test_store_writer.py tears chunks by hand too)."""
    import h5py

    spec, out = _coco(tmp_path), tmp_path / "out"
    (s,) = cache_teachers([spec], [heatmap_teacher], out, workers=1, progress=False)
    want = _contents(s.path)
    with h5py.File(s.path, "r+") as f:
        f.attrs["complete"] = 0
        info = f["scales"].id.get_chunk_info(0)
    with open(s.path, "r+b") as fh:
        fh.seek(info.byte_offset + info.size // 2)
        fh.write(b"\x5a" * 16)
    with pytest.raises(UniError, match="repairs the store"):
        open_store(s.path).read_raw(0)  # a row's metadata is read with the row
    with pytest.raises(UniError, match="repairs the store"):
        open_store(s.path).check()
    (again,) = cache_teachers([spec], [heatmap_teacher], out, workers=1, progress=False)
    assert again.computed == 12
    got = _contents(s.path)
    for a, b in zip(want, got, strict=True):
        np.testing.assert_array_equal(a, b)
    assert open_store(s.path).verify() == []


def test_kill_and_resume_equals_uninterrupted(heatmap_teacher, tmp_path):
    times, batch = 80, 8
    spec = _coco(tmp_path, times=times)
    total = 12 * times
    (ref,) = cache_teachers([spec], [heatmap_teacher], tmp_path / "ref", workers=1,
                            batch_size=batch, progress=False)
    out = tmp_path / "out"
    cmd = [str(Path(sys.executable).parent / "uni"), "cache-teachers", "--data", spec, "--teacher",
           str(heatmap_teacher), "--out", str(out), "--workers", "1",
           "--batch-size", str(batch)]
    proc = subprocess.Popen(cmd, cwd=REPO, stderr=subprocess.PIPE, stdout=subprocess.PIPE,
                            start_new_session=True)
    seen, buf = 0, b""
    deadline = time.time() + 60
    while time.time() < deadline and proc.poll() is None:
        buf += os.read(proc.stderr.fileno(), 4096)
        counts = re.findall(rb"(\d+)/%d" % total, buf)
        seen = int(counts[-1]) if counts else 0
        if seen >= 2 * batch:  # the store exists and some batches are in
            break
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert 2 * batch <= seen < total, f"killed at {seen}/{total}"
    done_at_kill = int(np.asarray(open_store(next(out.glob("*.h5"))).done).sum())
    assert 0 < done_at_kill < total

    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert f"{total - done_at_kill} computed" in r.stdout
    for a, b in zip(_contents(ref.path), _contents(next(out.glob("*.h5"))), strict=True):
        np.testing.assert_array_equal(a, b)


def test_cli_errors_are_one_line(tmp_path):
    r = subprocess.run([*UNI, "cache-teachers", "--data",
                        _coco(tmp_path), "--teacher", str(tmp_path / "none.onnx"), "--out",
                        str(tmp_path / "out")], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "none.onnx" in r.stderr


# --------------------------------------------------------------------------- one pass, many


@pytest.fixture(scope="module")
def three_teachers(heatmap_teacher, simcc_teacher, tmp_path_factory):
    """(spec, [hm, simcc, wide], {name: store contents when cached alone}): wide has its own
    input size (64 wide, 96 high) and crop padding (1.4)."""
    from conftest import make_heatmap_teacher

    from uniskel.pipeline.teachers import TeacherInfo, describe_model

    tmp = tmp_path_factory.mktemp("three")
    wide = describe_model(make_heatmap_teacher(tmp / "wide.onnx", input_wh=(64, 96), seed=1),
                          TeacherInfo(name="wide", skeleton="coco17", head="heatmap",
                                      input_wh=(64, 96), activation="sigmoid", padding=1.4))
    spec = _coco(tmp, times=2)
    teachers = [heatmap_teacher, simcc_teacher, wide]
    alone = {}
    for t in teachers:
        (s,) = cache_teachers([spec], [t], tmp / f"alone_{t.stem}", workers=1, batch_size=5,
                              progress=False)
        alone[s.path.name] = _contents(s.path)
    return spec, teachers, alone


def test_one_pass_decodes_each_image_once_for_all_teachers(three_teachers, tmp_path,
                                                           monkeypatch):
    import uniskel.pipeline.cache_crops as ct

    spec, teachers, alone = three_teachers
    reads = []
    real = ct.read_image
    monkeypatch.setattr(ct, "read_image", lambda p: reads.append(p) or real(p))
    (one,) = cache_teachers([spec], teachers[:1], tmp_path / "one", workers=1, batch_size=5,
                            progress=False)
    n_one = len(reads)
    summaries = cache_teachers([spec], teachers, tmp_path / "all", workers=1, batch_size=5,
                               progress=False)
    assert len(reads) - n_one == n_one  # three teachers, the images decoded as for one
    assert sorted(s.path.name for s in summaries) == sorted(alone)
    for s in summaries:
        assert s.computed == 24 and s.shared_by == 3
        text = format_run_summary(s)
        assert "ran on CPUExecutionProvider by" in text and "shared by 3 stores" in text
        assert open_store(s.path).attrs["providers"] == '["CPUExecutionProvider"]'
        for a, b in zip(alone[s.path.name], _contents(s.path), strict=True):
            np.testing.assert_array_equal(a, b)


def test_killed_between_stores_then_a_teacher_added(three_teachers, tmp_path):
    """Killed after the third store write (two teachers: their done sets now differ), resumed
    with a third teacher: every store equals its teacher's run alone."""
    spec, teachers, alone = three_teachers
    out = tmp_path / "out"
    base = [*UNI, "cache-teachers", "--data", spec, "--out", str(out),
            "--workers", "1", "--batch-size", "5", "--device", "cpu"]
    two = base + ["--teacher", str(teachers[0]), "--teacher", str(teachers[2])]
    env = {**os.environ, "UNI_KILL_AT": "cache-batch:3"}
    killed = subprocess.run(two, cwd=REPO, env=env, capture_output=True, text=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    done = {p.name: int(open_store(p).done.sum()) for p in out.glob("*.h5")}
    assert sorted(done.values()) == [5, 10], done  # cut 1 in both, cut 2 in the first only
    three = two + ["--teacher", str(teachers[1])]
    r = subprocess.run(three, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.count("computed") == 3 and "24 computed" in r.stdout
    for name, want in alone.items():
        for a, b in zip(want, _contents(out / name), strict=True):
            np.testing.assert_array_equal(a, b)


def test_device_cuda_where_cuda_cannot_run_is_one_line(heatmap_teacher, tmp_path):
    from uniskel.pipeline.devices import cuda_problem

    if cuda_problem() is None:
        pytest.skip("CUDA runs here")
    r = subprocess.run([*UNI, "cache-teachers", "--data", _coco(tmp_path),
                        "--teacher", str(heatmap_teacher), "--out", str(tmp_path / "out"),
                        "--device", "cuda"], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert "--device cuda: CUDA cannot run here" in r.stderr
    assert not (tmp_path / "out").exists()  # refused before anything is written
