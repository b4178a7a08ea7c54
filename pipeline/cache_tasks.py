"""Stage one's worker side, and how its tasks run: in this process (`local_results`) or on dask
(`start_client`, `dask_results`). A task is one cut of a dataset's rows for every teacher that
still needs them. Each image is decoded once and cropped for each teacher
(pipeline/cache_crops.py); each teacher infers its crops, and the maps are quantised and
compressed into the store's own chunk bytes here (stores.encode.encode_rows), so the writer only
writes them and a worker ships little more than the store's compressed bytes, a fraction of the
float32 maps (BENCHMARKS.md §1, "Worker → writer").

Runs in dask worker processes, or in the client process for one local worker. ONNX sessions are
built once per process (they cannot pickle), on the GPU the process's slot picks
(pipeline.devices). On a GPU, decode and crop run in a thread pool of the cores per GPU
(OpenCV releases the GIL), a bounded number of batches ahead of inference; on the CPU they run
inline, as onnxruntime already keeps every core busy (a prefetch thread measured slower there,
BENCHMARKS.md §1).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from uniskel.core.errors import UniError
from uniskel.core.killpoints import kill_point
from uniskel.pipeline.cache_crops import Cropped
from uniskel.pipeline.cache_plan import Task
from uniskel.pipeline.devices import CPU, cuda_device_count, worker_slot
from uniskel.pipeline.teachers import Teacher
from uniskel.stores.encode import EncodedRows, encode_rows

WORKER_WAIT_S = 120  # how long a cluster run waits for its first worker
PREFETCH_BATCHES = 2  # batches decoded and cropped ahead of inference (the bounded queue)


@dataclass(frozen=True)
class TeacherSpec:
    """What a worker needs to run one teacher into one store (picklable)."""

    path: str  # absolute: a remote worker's working directory is not ours
    sha256: str
    threads: int  # onnxruntime intra-op threads (0: its default, all cores)
    flip_test: bool
    device: str  # pipeline.devices: auto | cpu | cuda | cuda:N
    threshold: float  # the store's quantisation threshold
    codec: str  # the store's codec


@dataclass(frozen=True)
class TeacherRows:
    """One teacher's part of a task's result: what its store's writer takes."""

    rows: np.ndarray  # (n,) int64
    encoded: EncodedRows | None  # n chunks + scales (n, K) float32; None when n = 0
    affines: np.ndarray  # (n, 2, 3) float64 image → heatmap grid
    skipped: dict[int, str]  # {instance id: reason}
    provider: str  # what the session really ran on (pipeline.devices.provider_used)
    seconds: dict[str, float]  # crop, infer, encode


@dataclass(frozen=True)
class TaskResult:
    """What a task sends back to the writer (pickled, when it ran on a dask worker)."""

    parts: list[TeacherRows]  # one per TeacherSpec of the run, in order
    decode_s: float  # image decoding, shared by the teachers
    worker: str  # host:pid


# --------------------------------------------------------------------------- per process

_TEACHERS: dict[tuple, Teacher] = {}
_LOCK = threading.Lock()  # a dask worker may run tasks on several threads
_POOL: list[ThreadPoolExecutor | None] = []  # [the decode pool] once decided


def _slot() -> int:
    """This process's slot for GPU round-robin: 0 in the client, else from its dask worker."""
    if "distributed" not in sys.modules or cuda_device_count() < 2:
        return 0  # not a dask worker (importing distributed costs 0.5 s), or one GPU at most
    try:
        from distributed import get_client, get_worker

        w = get_worker()
    except (ImportError, ValueError):  # not inside a dask task
        return 0
    workers = None
    if not (isinstance(w.name, int) or str(w.name).isdigit()):
        workers = get_client().scheduler_info(n_workers=-1)["workers"]
    return worker_slot(w.name, w.address, workers)


def teacher(spec: TeacherSpec) -> Teacher:
    """This process's session for a spec, built once."""
    key = (spec.path, spec.sha256, spec.threads, spec.device)
    with _LOCK:
        if key not in _TEACHERS:
            t = Teacher(Path(spec.path), threads=spec.threads, device=spec.device, slot=_slot())
            if t.sha256 != spec.sha256:
                raise UniError(f"{spec.path}: the model changed while caching (sha256 differs)")
            _TEACHERS[key] = t
        return _TEACHERS[key]


def cores() -> int:
    """CPU cores this process may use (a SLURM or container allotment included)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def decode_pool(teachers: list[Teacher], force: bool | None = None) -> ThreadPoolExecutor | None:
    """The process's decode-and-crop pool: cores per visible GPU threads when a teacher runs on
    a GPU (force: True / False overrides, for tests), else None (inline)."""
    on_gpu = any(t.provider != CPU for t in teachers)
    want = on_gpu if force is None else force
    if not want:
        return None
    with _LOCK:
        if not _POOL:
            size = max(1, cores() // max(1, cuda_device_count()))
            _POOL.append(ThreadPoolExecutor(size, thread_name_prefix="uni-decode"))
        return _POOL[0]


# --------------------------------------------------------------------------- infer and encode


def _infer_encode(cropped: Cropped, specs: list[TeacherSpec]) -> TaskResult:
    done = cropped.result()
    parts = []
    for spec, t, p in zip(specs, cropped.teachers, done.teachers, strict=True):
        k, (w, h) = t.info.num_keypoints, t.heatmap_wh
        t0 = time.perf_counter()
        maps = (t.predict(p.crops, flip_test=spec.flip_test) if len(p.crops)
                else np.zeros((0, k, h, w), np.float32))  # (n, K, h, w) float32
        t1 = time.perf_counter()
        bad = ~np.isfinite(maps).all(axis=(1, 2, 3))
        if bad.any():
            row = int(p.rows[bad][0])
            instance = cropped.task.instance_of(row)
            raise UniError(f"{spec.path}: instance {instance}: heatmaps not finite")
        encoded = encode_rows(maps, spec.threshold, spec.codec) if len(maps) else None
        t2 = time.perf_counter()
        parts.append(TeacherRows(p.rows, encoded, p.affines, p.skipped, t.provider,
                                 {"crop": p.crop_s, "infer": t1 - t0, "encode": t2 - t1}))
    return TaskResult(parts, done.decode_s, f"{socket.gethostname()}:{os.getpid()}")


def run_task(specs: list[TeacherSpec], task: Task) -> TaskResult:
    """One dask task: decode and crop (in the pool on a GPU), infer, encode."""
    kill_point("cache-task")  # test hook (core/killpoints.py): a worker killed inside a task
    teachers = [teacher(s) for s in specs]
    return _infer_encode(Cropped(task, teachers, decode_pool(teachers)), specs)


def local_results(specs: list[TeacherSpec], tasks: Iterable[Task], pool: bool | None = None
                  ) -> Iterator[TaskResult]:
    """The tasks in this process, in order. With the pool (default: when a teacher runs on a
    GPU) the next PREFETCH_BATCHES tasks are decoded and cropped while this one is inferred."""
    teachers = [teacher(s) for s in specs]
    executor = decode_pool(teachers, pool)
    ahead: deque[Cropped] = deque()
    todo = iter(tasks)
    while True:
        while len(ahead) < (PREFETCH_BATCHES + 1 if executor else 1):
            task = next(todo, None)
            if task is None:
                break
            ahead.append(Cropped(task, teachers, executor))
        if not ahead:
            return
        yield _infer_encode(ahead.popleft(), specs)


# --------------------------------------------------------------------------- on dask


def _result(client, fut) -> TaskResult:
    """A finished task's result; a lost scheduler or a task that kept killing its workers is
    one UniError line (the rows written so far stay in the stores: a rerun resumes)."""
    from distributed.client import FutureCancelledError
    from distributed.scheduler import KilledWorker

    try:
        return fut.result()
    except UniError:
        raise
    except (OSError, TimeoutError, asyncio.CancelledError, FutureCancelledError,
            KilledWorker) as e:
        where = getattr(client.scheduler, "address", "the scheduler")
        raise UniError(f"dask cluster at {where}: lost mid-run ({type(e).__name__}); the rows "
                       "written so far are kept, run again to resume") from None


def dask_results(client, specs: list[TeacherSpec], tasks: Iterable[Task],
                 in_flight: Callable[[], int]) -> Iterator[TaskResult]:
    """Results as they complete, never more than in_flight() tasks submitted at once
    (asked again every few seconds: workers may join or leave)."""
    from distributed import as_completed

    def submit(task: Task):
        return client.submit(run_task, specs, task, pure=False, retries=2)

    todo = iter(tasks)
    ac = as_completed()
    limit, asked = in_flight(), time.monotonic()
    for task in todo:
        ac.add(submit(task))
        if ac.count() >= limit:
            break
    for fut in ac:
        result = _result(client, fut)
        fut.release()
        if time.monotonic() - asked > 5:
            limit, asked = in_flight(), time.monotonic()
        while ac.count() < limit:
            task = next(todo, None)
            if task is None:
                break
            ac.add(submit(task))
        yield result


def start_client(workers: int, scheduler: str | None = None,
                 scheduler_file: Path | None = None, threads_per_worker: int = 1):
    """A dask client: of a running cluster (address or scheduler file), waiting for its first
    worker, or of a LocalCluster of `workers` processes named 0, 1, … (their GPU slots).

    Results come straight from the worker that holds them (direct_to_workers: `Future.result`
    then asks the scheduler only who has a key, never for its bytes); otherwise the scheduler
    fetches and forwards every result, carrying all of stage one's output twice through one
    process (tests/test_cluster.py measures the bytes)."""
    from distributed import Client, LocalCluster

    if scheduler or scheduler_file:
        # A lost scheduler is reported as one line (_result); the client's own reconnect
        # attempts would otherwise print tracebacks first.
        logging.getLogger("distributed.client").setLevel(logging.CRITICAL)
        flag = f"--scheduler {scheduler}" if scheduler else f"--scheduler-file {scheduler_file}"
        if scheduler_file and not Path(scheduler_file).is_file():
            raise UniError(f"{flag}: not found (start `dask scheduler --scheduler-file` first)")
        try:
            client = (Client(scheduler, timeout="20s", direct_to_workers=True) if scheduler
                      else Client(scheduler_file=str(scheduler_file), timeout="20s",
                                  direct_to_workers=True))
        except (OSError, TimeoutError, ValueError) as e:
            raise UniError(f"{flag}: cannot connect ({e})") from None
        try:
            client.wait_for_workers(1, timeout=WORKER_WAIT_S)
        except (OSError, TimeoutError):
            client.close()
            raise UniError(f"{flag}: no dask worker joined within {WORKER_WAIT_S} s") from None
        return client
    cluster = LocalCluster(n_workers=workers, threads_per_worker=threads_per_worker,
                           processes=True, dashboard_address=None, silence_logs=logging.ERROR)
    return Client(cluster, direct_to_workers=True)
