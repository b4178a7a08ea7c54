"""Stage one on a real dask cluster: `dask scheduler` and two `dask worker` processes started
from the command line on localhost (the engine a user starts, not a LocalCluster), one worker
SIGKILLed mid-run; the store equals an in-process run's, bytes and metadata. Results travel
from the workers to the client, not through the scheduler (bytes counted at the sockets)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import DATA

from uniskel.pipeline.cache import cache_teachers
from uniskel.stores.reader import open_store

UNI = [sys.executable, "-m", "uniskel"]  # the installed package's uni command

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))  # the cluster and byte counters bench/wire_bytes.py uses
import wire_bytes  # noqa: E402

DASK = Path(sys.executable).parent / "dask"  # the venv's own `dask`: it finds uniskel installed
BATCH = 4
TIMES = 20  # the 12 people of the COCO sample, 20 times: 240 rows, 60 tasks
KILL_AT = 5  # the victim worker SIGKILLs itself when it starts its 5th task
# Time attributes differ between any two runs; everything else must not.
WHEN = {"created", "updated", "completed"}


def _spec(tmp: Path, times: int = TIMES) -> str:
    data = json.loads((DATA / "coco/test_coco.json").read_text())
    data["annotations"] = [dict(a, id=r * 1_000_000 + a["id"]) for r in range(times)
                           for a in data["annotations"]]
    (tmp / "ann.json").write_text(json.dumps(data))
    return f"coco:{tmp / 'ann.json'}:{DATA / 'coco/images'}"


@pytest.fixture
def cluster(tmp_path):
    """(scheduler file, victim worker, other worker, scheduler): a scheduler and two one-thread
    workers, no nannies (a killed worker stays dead); the victim carries the UNI_KILL_AT kill
    hook. Every process is killed in teardown, whatever happened."""
    with wire_bytes.command_line_cluster(
            tmp_path, [{"UNI_KILL_AT": f"cache-task:{KILL_AT}"}, {}]) as c:
        yield c.scheduler_file, *c.workers, c.scheduler


def test_killed_worker_on_a_real_cluster_equals_a_local_run(cluster, heatmap_teacher, tmp_path):
    sched_file, victim, other, _ = cluster
    spec = _spec(tmp_path)
    (ref,) = cache_teachers([spec], [heatmap_teacher], tmp_path / "ref", workers=1,
                            batch_size=BATCH, progress=False)
    out = tmp_path / "out"
    r = subprocess.run([*UNI, "cache-teachers", "--data", spec,
                        "--teacher", str(heatmap_teacher), "--out", str(out), "--batch-size",
                        str(BATCH), "--scheduler-file", str(sched_file)],
                       cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    assert victim.wait(timeout=10) == -signal.SIGKILL  # it died mid-run, at its 5th task
    assert other.poll() is None
    assert f"{12 * TIMES} computed" in r.stdout
    assert f":{other.pid}" in r.stdout  # the summary names the workers that computed rows

    a, b = open_store(out / ref.path.name), open_store(ref.path)
    assert a.complete and b.complete and a.skipped == b.skipped == {}
    np.testing.assert_array_equal(a.instance_ids, b.instance_ids)
    np.testing.assert_array_equal(a.done, b.done)
    for row in range(len(b)):
        for x, y in zip(a.read_raw(row), b.read_raw(row), strict=True):  # uint8 maps, scales,
            np.testing.assert_array_equal(x, y)  # affines
    attrs = {k: v for k, v in a.attrs.items() if k not in WHEN}
    assert attrs.keys() == {k for k in b.attrs if k not in WHEN}
    for k, v in attrs.items():
        assert np.array_equal(v, b.attrs[k]) if isinstance(v, np.ndarray) else v == b.attrs[k], k
    assert a.verify() == []
    with h5py.File(out / ref.path.name) as fa, h5py.File(ref.path) as fb:
        ha, hb = fa["heatmaps"].id, fb["heatmaps"].id
        for row in range(len(b)):  # the compressed chunks on disk, byte for byte
            assert ha.read_direct_chunk((row, 0, 0, 0)) == hb.read_direct_chunk((row, 0, 0, 0))


def test_killed_scheduler_stops_the_run_and_a_new_cluster_finishes_it(cluster, heatmap_teacher,
                                                                      tmp_path):
    """SIGKILL of the scheduler mid-run: cache-teachers stops with one line (not a hang), the
    store keeps its finished rows, and a run on a fresh scheduler completes it equal to a
    local run."""
    sched_file, _, _, scheduler = cluster
    spec = _spec(tmp_path, times=100)  # 1,200 rows: long enough to be killed mid-run
    (ref,) = cache_teachers([spec], [heatmap_teacher], tmp_path / "ref", workers=1,
                            batch_size=BATCH, progress=False)
    out = tmp_path / "out"
    store = out / ref.path.name
    cmd = [*UNI, "cache-teachers", "--data", spec, "--teacher",
           str(heatmap_teacher), "--out", str(out), "--batch-size", str(BATCH)]
    run = subprocess.Popen([*cmd, "--scheduler-file", str(sched_file)], cwd=REPO,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not (store.is_file() and store.stat().st_size > 200_000) and time.time() < deadline:
        time.sleep(0.05)  # rows are being written
    assert run.poll() is None, run.communicate()[1][-2000:]
    os.killpg(scheduler.pid, signal.SIGKILL)
    _, err = run.communicate(timeout=90)
    assert run.returncode == 2, err[-3000:]
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("uni: "), err
    assert not open_store(store).complete

    # A fresh scheduler and worker: the same command completes the store.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("UNI_KILL_AT", None)
    new_file = tmp_path / "scheduler2.json"
    procs = [subprocess.Popen([str(DASK), "scheduler", "--scheduler-file", str(new_file),
                               "--host", "127.0.0.1", "--port", "0", "--no-dashboard"],
                              cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)]
    try:
        deadline = time.time() + 20
        while not new_file.is_file() and time.time() < deadline:
            time.sleep(0.1)
        procs.append(subprocess.Popen(
            [str(DASK), "worker", "--scheduler-file", str(new_file), "--nworkers", "1",
             "--nthreads", "1", "--no-nanny", "--no-dashboard", "--host", "127.0.0.1"],
            cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True))
        r = subprocess.run([*cmd, "--scheduler-file", str(new_file)], cwd=REPO,
                           capture_output=True, text=True, timeout=180)
        assert r.returncode == 0, r.stderr[-3000:]
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
            p.wait()
    a, b = open_store(store), open_store(ref.path)
    assert a.complete and a.verify() == []
    np.testing.assert_array_equal(a.done, b.done)
    for row in range(len(b)):
        for x, y in zip(a.read_raw(row), b.read_raw(row), strict=True):
            np.testing.assert_array_equal(x, y)


def test_results_go_from_workers_to_the_client_never_through_the_scheduler(tmp_path):
    """Bytes counted at the sockets of the scheduler process and of the client (this process,
    running cache_teachers on the cluster) against the store's size: the client receives about
    what it stores, and the scheduler carries only task messages. A scheduler that relays each
    result reads and writes at least the store's bytes."""
    teacher = wire_bytes.make_teacher(tmp_path / "wire.onnx")  # 17×64×48 maps: data dominates
    spec = wire_bytes.sample_spec(tmp_path, 120)
    with wire_bytes.command_line_cluster(tmp_path / "cluster", [{}, {}]) as c:
        m = wire_bytes.measure(c.scheduler_file, spec, teacher, tmp_path / "out", batch=BATCH)
    assert m["persons"] > 90 and open_store(next((tmp_path / "out").glob("*.h5"))).complete
    stored = m["stored"]
    assert m["client_read"] <= 1.1 * stored, m
    assert max(m["scheduler_read"], m["scheduler_written"]) < 0.1 * stored, m



def test_a_local_cluster_fetches_results_from_its_workers(heatmap_teacher, tmp_path,
                                                          monkeypatch):
    """`cache-teachers --workers 2` runs a LocalCluster whose scheduler lives in this process:
    every result its gather handler relays is counted, and none is (the scheduler's old way
    relays all of them)."""
    from distributed.scheduler import Scheduler

    relayed = []
    gather = Scheduler.gather

    async def counted(self, keys, serializers=None):
        relayed.extend(keys)
        return await gather(self, keys, serializers=serializers)

    monkeypatch.setattr(Scheduler, "gather", counted)  # bound as a handler when it starts
    (s,) = cache_teachers([_spec(tmp_path, times=4)], [heatmap_teacher], tmp_path / "out",
                          workers=2, batch_size=BATCH, progress=False)
    assert s.computed == 12 * 4 and len(s.workers) >= 1
    assert relayed == []
