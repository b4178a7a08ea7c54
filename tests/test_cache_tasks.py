"""Stage one's plan and worker side: the cuts of a dataset's rows, the decode pool, encoded
results, a dask worker killed mid-run."""

from __future__ import annotations

import os
import pickle
import signal
from pathlib import Path
from types import SimpleNamespace

import numpy as np
from conftest import DATA

from uniskel.core.datasets import load_dataset
from uniskel.pipeline.cache_plan import Items, dataset_items, plan_tasks
from uniskel.pipeline.cache_tasks import TeacherSpec, dask_results, local_results, start_client
from uniskel.pipeline.devices import worker_slot
from uniskel.pipeline.teachers import Teacher
from uniskel.stores.encode import CODEC, THRESHOLD


def _tasks(times: int, batch: int, teachers: int = 1):
    """(dataset, tasks) of the real COCO sample repeated `times` times, nothing done."""
    ds = load_dataset(f"coco:{DATA / 'coco/test_coco.json'}")
    ids = np.asarray([i.instance_id for i in ds.instances] * times)
    return ds, list(plan_tasks(dataset_items(ds, ids), [np.zeros(len(ids), bool)] * teachers,
                               batch))


def _spec(path: Path, device: str = "cpu") -> TeacherSpec:
    return TeacherSpec(str(path), Teacher(path).sha256, 1, True, device, THRESHOLD, CODEC)


def test_pool_gives_the_same_results(heatmap_teacher, simcc_teacher):
    """The GPU path (decode + crop in a thread pool, batches ahead) yields what the inline one
    does, forced here on the CPU; every row once, in the tasks' order."""
    _, tasks = _tasks(3, 5, teachers=2)
    specs = [_spec(heatmap_teacher), _spec(simcc_teacher)]
    seq = list(local_results(specs, tasks, pool=False))
    pre = list(local_results(specs, tasks, pool=True))
    assert len(seq) == len(pre) == len(tasks) == 8
    for a, b in zip(seq, pre, strict=True):
        for x, y in zip(a.parts, b.parts, strict=True):
            np.testing.assert_array_equal(x.rows, y.rows)
            assert x.encoded.chunks == y.encoded.chunks
            np.testing.assert_array_equal(x.encoded.scales, y.encoded.scales)
            np.testing.assert_array_equal(x.affines, y.affines)
    rows = np.concatenate([r.parts[0].rows for r in pre])
    np.testing.assert_array_equal(np.sort(rows), np.arange(36))


def test_plan_cuts_do_not_depend_on_what_is_done():
    """Each teacher gets the cut minus its done rows; cuts wholly done by all are dropped."""
    ds = SimpleNamespace(image_paths=np.array([f"img{i}" for i in range(4)]),
                         image_index=np.arange(10) // 3, instance_ids=100 + np.arange(10),
                         bboxes=np.zeros((10, 4)))
    items = Items(ds, np.arange(10), np.arange(10))  # dataset row = store row
    a = np.zeros(10, bool)
    b = np.zeros(10, bool)
    b[:4] = True  # b finished the first cut (rows 0-3)
    a[4:8] = True  # a the second
    tasks = list(plan_tasks(items, [a, b], 4))
    assert [t.rows.tolist() for t in tasks] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert tasks[1].image_paths == ("img1", "img2") and tasks[1].image_of.tolist() == [0, 0, 1, 1]
    assert tasks[1].instance_ids.tolist() == [104, 105, 106, 107] and tasks[1].instance_of(6) == 106
    assert [w.tolist() for w in tasks[0].wants] == [[True] * 4, [False] * 4]
    assert [w.tolist() for w in tasks[1].wants] == [[False] * 4, [True] * 4]
    # Rows done by both leave the cut; the cut stays where it was.
    a[9] = b[9] = True
    assert [t.rows.tolist() for t in plan_tasks(items, [a, b], 4)][2] == [8]


def test_killed_dask_worker_loses_nothing(heatmap_teacher):
    """A worker process SIGKILLed mid-run: dask reruns its tasks, every row comes back once."""
    _, tasks = _tasks(20, 4)  # 240 rows
    specs = [_spec(heatmap_teacher)]
    want = {tuple(r.parts[0].rows): r.parts[0].encoded.chunks
            for r in local_results(specs, tasks[:3])}
    client = start_client(2)
    try:
        # Local workers are named 0, 1: the slots their GPUs are picked by (round-robin).
        names = client.run(lambda dask_worker: dask_worker.name).values()
        assert sorted(worker_slot(n, "", None) for n in names) == [0, 1]
        victim = next(iter(client.run(os.getpid).values()))
        rows, got = [], {}
        for i, r in enumerate(dask_results(client, specs, tasks, lambda: 4)):
            rows.extend(r.parts[0].rows.tolist())
            got[tuple(r.parts[0].rows)] = r.parts[0].encoded.chunks
            if i == 5:
                os.kill(victim, signal.SIGKILL)
        assert sorted(rows) == list(range(240))
        assert victim not in client.run(os.getpid).values()  # it really died
        for key, chunks in want.items():
            assert got[key] == chunks
    finally:
        cluster = client.cluster
        client.close()
        cluster.close()


def test_worker_ships_encoded_rows(heatmap_teacher):
    """A task's result holds the store's chunk bytes, not float32 maps: a small pickle."""
    _, tasks = _tasks(3, 12)
    (result,) = list(local_results([_spec(heatmap_teacher)], tasks[:1]))
    n = len(result.parts[0].rows)
    float32 = n * 17 * 16 * 12 * 4
    assert n == 12 and len(pickle.dumps(result)) < float32 / 4
