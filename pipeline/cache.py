"""Stage one's job: every teacher × every dataset → one HDF5 store of soft heatmaps.

One store per (teacher, dataset): ``OUT/<teacher name>__<format>-<dataset id[:12]>.h5``.
A dataset is passed over once for all its teachers: pipeline/cache_plan.py decides which stores
to make or resume and cuts the dataset's rows into tasks; pipeline/cache_tasks.py, the worker
side, decodes, crops, infers and compresses. Tasks run on dask workers (local processes, or a
cluster's through --scheduler / --scheduler-file), at most 2 per worker thread in flight so
memory stays flat; this process is the single writer of every store. One local worker without a
scheduler runs the tasks in this process instead (no cluster start).

Layering: stage one's top, with pipeline/cache_plan.py and pipeline/cache_tasks.py: the pipeline
modules that use `stores` (they write them), while the foundation modules of pipeline/ stay
store-free.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
from tqdm import tqdm

from uniskel.core.datasets import Dataset, load_dataset
from uniskel.core.errors import UniError, io_reason
from uniskel.core.killpoints import kill_point
from uniskel.pipeline.cache_plan import (
    StoreJob,
    Task,
    check_images,
    dataset_items,
    make_store,
    plan_tasks,
    prepare_store,
    store_name,
)
from uniskel.pipeline.cache_tasks import (
    TaskResult,
    TeacherRows,
    TeacherSpec,
    cores,
    dask_results,
    local_results,
    start_client,
)
from uniskel.pipeline.devices import cuda_device_count, parse_device, resolve_device
from uniskel.pipeline.teachers import Teacher
from uniskel.stores.create import replace_store
from uniskel.stores.encode import CODEC, THRESHOLD
from uniskel.stores.lock import StoreLock, refuse_if_held, release_lock, take_lock
from uniskel.stores.reader import open_store
from uniskel.stores.writer import StoreWriter

DEFAULT_BATCH = 32
IN_FLIGHT_PER_THREAD = 2
STEPS = ("decode", "crop", "infer", "encode", "write")
Runner = Callable[[list[TeacherSpec], list[Task]], Iterator[TaskResult]]
SpecFor = Callable[[StoreJob, dict], TeacherSpec]  # a job and its store's attrs → worker spec


@dataclass
class StoreSummary:
    path: Path
    instances: int
    heatmap_shape: tuple[int, int, int]  # (K, h, w)
    computed: int = 0  # crops run in this invocation
    skipped: dict[int, str] = field(default_factory=dict)
    seconds: float = 0.0  # wall time of the dataset's pass (shared by its stores)
    up_to_date: bool = False
    bytes_on_disk: int = 0
    written: int = 0  # rows in the store (done), for the compression ratio
    steps: dict[str, float] = field(default_factory=dict)  # STEPS → worker / writer seconds
    shared_by: int = 1  # stores of one dataset pass, which share its decoding
    workers: dict[str, str] = field(default_factory=dict)  # host:pid → provider it ran on

    @property
    def crops_per_s(self) -> float:
        return self.computed / self.seconds if self.seconds > 0 else 0.0


class PassStores(NamedTuple):
    """A dataset pass's stores as they stand before it, one entry per store of the pass."""

    instance_ids: np.ndarray  # (N,) int64, the rows of every store
    dones: list[np.ndarray]  # (N,) bool per store
    specs: list[TeacherSpec]  # what a worker runs for each store
    providers: list[list[str]]  # the providers each store records (grows during the pass)


# --------------------------------------------------------------------------- one dataset pass


def _open_stores(jobs: list[StoreJob], spec_for: SpecFor) -> PassStores:
    """Read what each store of a pass has done, and the spec its worker runs."""
    ids, dones, specs, providers = None, [], [], []
    for job in jobs:
        r = open_store(job.work_path)
        if ids is None:
            ids = np.asarray(r.instance_ids)
        elif not np.array_equal(ids, r.instance_ids):
            raise UniError(f"{job.work_path}: lists other instances than the dataset's other "
                           "stores (use --overwrite to rebuild it)")
        dones.append(np.asarray(r.done, bool).copy())
        specs.append(spec_for(job, r.attrs))
        try:
            providers.append(list(json.loads(r.attrs.get("providers", "[]"))))
        except (TypeError, ValueError):  # unreadable: this run's providers replace it
            providers.append([])
        r.close()
    return PassStores(ids, dones, specs, providers)


def _write_part(writer: StoreWriter, s: StoreSummary, part: TeacherRows, result: TaskResult,
                known: list[str], strict: bool) -> int:
    """One store's share of a task's result: rows written, time and skips counted in `s`;
    → how many of its rows the task settled (computed or skipped)."""
    if part.skipped and strict:
        first = next(iter(part.skipped))
        raise UniError(f"{part.skipped[first]} (instance {first}; --strict)")
    s.steps["decode"] += result.decode_s
    for step, sec in part.seconds.items():
        s.steps[step] += sec
    if len(part.rows):
        t1 = time.perf_counter()
        writer.write_encoded(part.rows, part.encoded, part.affines)
        s.steps["write"] += time.perf_counter() - t1
        s.workers[result.worker] = part.provider
        if part.provider not in known:  # the store records what computed it
            known.append(part.provider)
            writer.set_attr("providers", json.dumps(sorted(known)))
        kill_point("cache-batch")
    s.skipped.update(part.skipped)
    s.computed += len(part.rows)
    return len(part.rows) + len(part.skipped)


def _run_dataset(jobs: list[StoreJob], run: Runner, spec_for: SpecFor, batch_size: int,
                 strict: bool, progress: bool) -> list[StoreSummary]:
    """One pass over a dataset for all its stores: plan, run, write each store, finalize."""
    stores = _open_stores(jobs, spec_for)
    ids, dones = stores.instance_ids, stores.dones
    tasks = plan_tasks(dataset_items(jobs[0].dataset, ids), dones, batch_size)
    summaries = [StoreSummary(j.path, len(ids), tuple(j.meta.heatmap_shape), shared_by=len(jobs),
                              steps=dict.fromkeys(STEPS, 0.0)) for j in jobs]
    names = ", ".join(j.teacher.info.name for j in jobs)
    t0 = time.perf_counter()
    with ExitStack() as stack:
        writers = [stack.enter_context(StoreWriter(j.work_path)) for j in jobs]
        bar = stack.enter_context(tqdm(
            total=len(ids) * len(jobs), initial=int(sum(d.sum() for d in dones)), unit="crop",
            desc=f"{names} × {jobs[0].dataset.kind.name}", file=sys.stderr, dynamic_ncols=True,
            disable=not progress, smoothing=0.1))
        kill_point("cache-start")  # test hook (core/killpoints.py), as every kill_point() is
        for result in run(stores.specs, tasks):
            for writer, s, part, known in zip(writers, summaries, result.parts, stores.providers,
                                              strict=True):
                bar.update(_write_part(writer, s, part, result, known, strict))
        for writer, s in zip(writers, summaries, strict=True):
            writer.finalize(skipped=s.skipped)
    seconds = time.perf_counter() - t0
    for job, s in zip(jobs, summaries, strict=True):
        s.seconds = seconds
        if job.work_path != job.path:  # the rebuild replaces the old store (with skipped
            replace_store(job.work_path, job.path)  # rows: resumable), under its lock
        _with_sizes(s)
    return summaries


def _with_sizes(summary: StoreSummary) -> StoreSummary:
    reader = open_store(summary.path)
    summary.written = int(np.asarray(reader.done).sum())
    summary.bytes_on_disk = summary.path.stat().st_size
    if summary.up_to_date:
        summary.skipped = dict(reader.skipped)
    return summary


# --------------------------------------------------------------------------- the job's steps


def _default_workers(device: str, gpus: int) -> int:
    """Local workers when none are asked for: one per visible GPU the teachers run on (one for
    cuda:N), else one per 4 cores, at least 1."""
    if gpus:
        return 1 if device.startswith("cuda:") else gpus
    # Measured (BENCHMARKS.md §1): on 2 cores one in-process worker running onnxruntime on both
    # beats 2 one-thread dask workers; bigger machines get a worker per 4 cores.
    return max(1, cores() // 4)


def _describing_teachers(paths: list[Path]) -> list[Teacher]:
    """The teachers as this process opens them, only to describe their stores (grid, sha256);
    workers build their own sessions. Their names must differ (they name the stores)."""
    models = [Teacher(Path(t), providers=["CPUExecutionProvider"], threads=1) for t in paths]
    names = [m.info.name for m in models]
    if len(set(names)) != len(names):
        raise UniError(f"teacher names must differ, got {', '.join(names)} (--name when "
                       "describing)")
    return models


def _hold(path: Path, held: dict[Path, StoreLock]) -> None:
    """Take the lock of the store a rebuild replaces, kept until the run ends (in `held`): no
    other writer may write it meanwhile, and none is writing it now (else one line: wait)."""
    if path not in held and path.parent.is_dir():  # else: taken once _make_stores made it
        held[path] = take_lock(path)


def _plan_stores(datasets: list[Dataset], models: list[Teacher], out_dir: Path, flip_test: bool,
                 overwrite: bool, threshold: float, held: dict[Path, StoreLock]
                 ) -> tuple[list[StoreSummary], list[list[StoreJob]]]:
    """(summaries of the stores already complete, per dataset pass the jobs of the others).
    A store another process is writing is refused first, in one line (wait for it or stop it);
    a rebuild's store is locked (`held`) before anything of it is touched."""
    summaries, passes = [], []
    for ds in datasets:
        jobs = []
        for teacher in models:
            path = out_dir / store_name(teacher.info.name, ds)
            if overwrite:
                _hold(path, held)
            else:
                refuse_if_held(path)
            try:
                job = prepare_store(teacher, ds, out_dir, flip_test, overwrite, threshold)
            except UniError:
                refuse_if_held(path)  # a writer that started meanwhile: wait, not overwrite
                raise
            if job is None:
                k, (w, h) = teacher.info.num_keypoints, teacher.heatmap_wh
                summaries.append(_with_sizes(StoreSummary(
                    path, len(ds.instances), (k, h, w), up_to_date=True)))
            else:
                jobs.append(job)
        if jobs:
            passes.append(jobs)
    return summaries, passes


def _make_stores(passes: list[list[StoreJob]], out_dir: Path, threshold: float,
                 held: dict[Path, StoreLock]) -> None:
    """Check every dataset's images, then make OUT and the new stores: only now, so that bad
    input leaves nothing behind. A rebuild in an OUT made only now takes its store's lock."""
    for jobs in passes:
        check_images(jobs[0].dataset)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UniError(f"--out {out_dir}: cannot create it ({io_reason(e)})") from None
    for job in (job for jobs in passes for job in jobs):
        if job.work_path != job.path:
            _hold(job.path, held)
        make_store(job, threshold)


@contextmanager
def _runner(workers: int, scheduler: str | None, scheduler_file: Path | None, gpus: int,
            threads: int | None) -> Iterator[tuple[Runner, int]]:
    """(how tasks run, onnxruntime threads per worker): in this process for one local worker,
    else on a dask client (and its local cluster), closed on the way out."""
    remote = bool(scheduler or scheduler_file)
    if workers == 1 and not remote:
        yield local_results, 0 if threads is None else threads
        return
    # A GPU worker runs 2 tasks at once: one decodes and crops while the other infers.
    client = start_client(workers, scheduler, scheduler_file, threads_per_worker=2 if gpus else 1)
    try:
        if threads is None and remote:  # their cores are unknown: one each
            threads = 1 if sum(client.nthreads().values()) > 1 else 0
        elif threads is None:
            threads = max(1, cores() // workers)  # share this machine's cores

        def run(specs: list[TeacherSpec], tasks: list[Task]) -> Iterator[TaskResult]:
            return dask_results(client, specs, tasks, lambda: IN_FLIGHT_PER_THREAD * max(
                1, sum(client.nthreads().values())))

        yield run, threads
    finally:
        cluster = client.cluster
        client.close()
        if cluster is not None:
            cluster.close()


# --------------------------------------------------------------------------- the job


def cache_teachers(data: list[str], teachers: list[Path], out_dir: Path,
                   workers: int | None = None, scheduler: str | None = None,
                   threads: int | None = None, batch_size: int = DEFAULT_BATCH,
                   flip_test: bool = True, overwrite: bool = False, strict: bool = False,
                   progress: bool = True, threshold: float | None = None,
                   device: str = "auto", scheduler_file: Path | None = None
                   ) -> list[StoreSummary]:
    """Run every teacher over every person of every dataset into OUT stores (resumable).

    workers: local worker processes (None: one per visible GPU when the teachers run on GPUs,
    else one per 4 cores, at least 1; 1 runs in this process). device: pipeline.devices (auto |
    cpu | cuda | cuda:N); local workers take the GPUs round-robin. threads: onnxruntime intra-op
    threads per worker; None = this machine's cores shared among the local workers, or 1 per
    task on a cluster (scheduler address or scheduler_file). threshold: stored values under
    threshold × their channel's peak are zeroed (None: the store's default); flip_test: store
    the average of each crop's and its mirror's maps."""
    threshold = THRESHOLD if threshold is None else float(threshold)
    device = parse_device(device)
    if batch_size < 1:
        raise UniError(f"--batch-size must be at least 1, got {batch_size}")
    remote = bool(scheduler or scheduler_file)
    # Local runs check the device here, before anything is written; a cluster's workers do.
    gpus = 0 if remote or resolve_device(device) == "cpu" else cuda_device_count()
    workers = workers or _default_workers(device, gpus)
    out_dir = Path(out_dir)
    datasets = [load_dataset(d) for d in data]
    models = _describing_teachers(teachers)
    held: dict[Path, StoreLock] = {}  # the stores rebuilt (--overwrite): locked till replaced
    try:
        summaries, passes = _plan_stores(datasets, models, out_dir, flip_test, overwrite,
                                         threshold, held)
        _make_stores(passes, out_dir, threshold, held)
        if not passes:
            return summaries
        with _runner(workers, scheduler, scheduler_file, gpus, threads) as (run, threads):

            def spec_for(job: StoreJob, attrs: dict) -> TeacherSpec:
                return TeacherSpec(
                    str(job.teacher.path.resolve()), job.teacher.sha256, threads, flip_test,
                    device, float(attrs.get("threshold", THRESHOLD)),
                    str(attrs.get("codec", CODEC)))

            for jobs in passes:
                summaries.extend(_run_dataset(jobs, run, spec_for, batch_size, strict,
                                              progress))
        return summaries
    finally:
        for lock in held.values():
            release_lock(lock)


def format_run_summary(s: StoreSummary, max_skipped: int = 20) -> str:
    """Lines for one store of this run: counts, time, rate, size on disk and ratio to raw fp16;
    what each worker ran on, and where the time went."""
    raw_fp16 = 2 * int(np.prod(s.heatmap_shape)) * s.written
    ratio = f" ({raw_fp16 / s.bytes_on_disk:.1f}x smaller than raw fp16)" if s.bytes_on_disk else ""
    head = f"{s.path}: {s.instances} instances"
    if s.up_to_date:
        return (f"{head}, {len(s.skipped)} skipped, up to date, "
                f"{s.bytes_on_disk / 1e6:.2f} MB on disk{ratio}")
    retry = ", will be retried on the next run" if s.skipped else ""
    lines = [f"{head}, {s.computed} computed, {len(s.skipped)} skipped{retry}, {s.seconds:.1f} s, "
             f"{s.crops_per_s:.1f} crops/s, {s.bytes_on_disk / 1e6:.2f} MB on disk{ratio}"]
    if s.workers:
        by: dict[str, list[str]] = {}
        for worker, provider in sorted(s.workers.items()):
            by.setdefault(provider, []).append(worker)
        lines.append("  ran on " + "; ".join(
            f"{p} by {', '.join(w[:4])}{f' and {len(w) - 4} more' if len(w) > 4 else ''}"
            for p, w in sorted(by.items())))
    total = sum(s.steps.values())
    if total > 0:
        shared = f" (shared by {s.shared_by} stores)" if s.shared_by > 1 else ""
        parts = [f"{k} {v:.2f} s{shared if k == 'decode' else ''}" for k, v in s.steps.items()]
        top = max(s.steps, key=s.steps.get)
        lines.append(f"  time (summed over workers): {', '.join(parts)}; most in {top} "
                     f"({100 * s.steps[top] / total:.0f} %)")
    for i, (instance_id, reason) in enumerate(sorted(s.skipped.items())):
        if i == max_skipped:
            lines.append(f"  ... and {len(s.skipped) - max_skipped} more skipped")
            break
        lines.append(f"  skipped instance {instance_id}: {reason}")
    return "\n".join(lines)
