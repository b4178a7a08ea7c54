"""Stage one's job: every teacher × every dataset → one HDF5 store of soft heatmaps.

One store per (teacher, dataset): ``OUT/<teacher name>__<format>-<dataset id[:12]>.h5``.
A dataset is passed over once for all its teachers: its rows, in image order (so an image is
decoded once), are cut every B rows at fixed places whatever is already done, and a task carries
one cut with, per teacher, the rows that teacher's store still lacks (pipeline/cache_tasks.py,
the worker side, decodes, crops, infers and compresses). Each store writes a task's rows at once,
so a resumed run feeds every model exactly the batches a fresh run would and each store comes
out the same. Tasks run on dask workers (local processes, or a cluster's through --scheduler /
--scheduler-file), at most 2 per worker thread in flight so memory stays flat; this process is
the single writer of every store. One local worker without a scheduler runs the tasks in this
process instead (no cluster start).

Layering: stage one's top, with pipeline/cache_tasks.py; the pipeline modules that use `stores`
(they write them), while the foundation modules of pipeline/ stay store-free.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from uniskel.core.datasets import Dataset, load_dataset, missing_images
from uniskel.core.errors import UniError, io_reason
from uniskel.core.files import atomic_write
from uniskel.core.killpoints import kill_point
from uniskel.pipeline.cache_tasks import (
    Item,
    Task,
    TaskResult,
    TeacherSpec,
    cores,
    dask_results,
    local_results,
    start_client,
)
from uniskel.pipeline.devices import cuda_device_count, parse_device, resolve_device
from uniskel.pipeline.teachers import Teacher
from uniskel.stores.heatmap_store import CODEC, THRESHOLD, StoreMeta, check_compatible, open_store
from uniskel.stores.writer import StoreWriteFailed, StoreWriter, create_store, repair_store

DEFAULT_BATCH = 32
IN_FLIGHT_PER_THREAD = 2
STEPS = ("decode", "crop", "infer", "encode", "write")
Runner = Callable[[list[TeacherSpec], list[Task]], Iterator[TaskResult]]


def store_name(teacher_name: str, dataset: Dataset) -> str:
    return f"{teacher_name}__{dataset.kind.name}-{dataset.dataset_id[:12]}.h5"


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


@dataclass
class _Job:
    teacher: Teacher
    dataset: Dataset
    path: Path  # where the store ends up
    work_path: Path  # where it is written (a temp file when overwriting)
    meta: StoreMeta
    create: bool = False  # work_path is to be created (empty) before the pass


# --------------------------------------------------------------------------- planning


def dataset_items(dataset: Dataset, instance_ids: np.ndarray) -> list[Item]:
    """A store's rows (its instance ids (N,)) as items in image order, ties by store row."""
    at = dataset.rows_of(instance_ids)  # (N,) dataset row of each store row
    if (at < 0).any():
        raise UniError(f"{dataset.spec}: instance {int(instance_ids[np.argmax(at < 0)])} of "
                       "its store is not in the dataset (use --overwrite to rebuild the store)")
    paths = dataset.image_paths[dataset.image_index[at]]  # (N,) str
    order = np.lexsort((np.arange(len(at)), paths))
    ids, boxes = dataset.instance_ids[at], dataset.bboxes[at]
    return [(int(r), int(ids[r]), str(paths[r]), tuple(boxes[r].tolist())) for r in order]


def plan_tasks(items: list[Item], dones: list[np.ndarray], batch: int) -> list[Task]:
    """Cut `items` every `batch`; a task keeps the rows some teacher still needs (dones[t]:
    (N,) bool per row of teacher t's store).

    The cuts do not depend on `dones`, and each store writes a task's rows at once, so a
    resumed run gives every teacher exactly the batches of an uninterrupted one.
    """
    out = []
    for start in range(0, len(items), batch):
        cut = items[start:start + batch]
        rows = np.fromiter((it[0] for it in cut), np.int64, len(cut))
        wants = [~d[rows] for d in dones]  # per teacher (n,) bool
        keep = np.any(wants, axis=0)
        if keep.any():
            out.append(Task([cut[i] for i in np.flatnonzero(keep)], [w[keep] for w in wants]))
    return out


# --------------------------------------------------------------------------- stores


def _repair_if_possible(path: Path) -> None:
    """Repair chunks a killed run tore, before anything reads the store. When that is not
    possible (no such store, read-only, locked, not a store) the checks that follow say why;
    a write that HDF5 failed stops here (StoreWriteFailed: the CLI must exit hard)."""
    if path.exists():
        try:
            repair_store(path)
        except StoreWriteFailed:
            raise
        except UniError:
            pass


def _prepare(teacher: Teacher, dataset: Dataset, out_dir: Path, flip_test: bool,
             overwrite: bool, threshold: float) -> _Job | None:
    """The job for one store, or None when it is already complete (nothing created yet)."""
    info = teacher.info
    k, (w, h) = info.num_keypoints, teacher.heatmap_wh
    meta = StoreMeta(
        teacher_name=info.name, teacher_sha256=teacher.sha256, teacher_metadata=asdict(info),
        skeleton=info.skeleton, dataset_id=dataset.dataset_id, dataset_spec=str(dataset.spec),
        input_wh=tuple(info.input_wh), padding=info.padding, flip_test=flip_test,
        heatmap_shape=(k, h, w), skeleton_def=teacher.skeleton)
    path = out_dir / store_name(info.name, dataset)
    if overwrite:
        tmp = path.with_name(path.name + ".tmp")
        _repair_if_possible(tmp)
        try:  # resume an interrupted rebuild when it is the same rebuild
            state = check_compatible(tmp, meta, threshold)
        except UniError:
            state = "missing"
        return _Job(teacher, dataset, path, tmp, meta, create=state == "missing")
    _repair_if_possible(path)
    try:
        state = check_compatible(path, meta, threshold)
    except UniError as e:
        raise UniError(f"{e} (use --overwrite to rebuild it)") from None
    if state == "complete":
        reader = open_store(path)
        skipped = reader.skipped
        reader.close()
        if not skipped:
            return None
        with StoreWriter(path) as w:  # finished with skipped rows by an older uni: retry them
            w.reopen()
    return _Job(teacher, dataset, path, path, meta, create=state == "missing")


def _create(job: _Job, threshold: float) -> None:
    if job.create:
        job.work_path.unlink(missing_ok=True)  # a rebuild's leftover that was not resumable
        create_store(job.work_path, job.meta, job.dataset.instance_ids, threshold=threshold)


def check_images(dataset: Dataset) -> None:
    """Stop (one line naming the image folder) when more than half of the images with people
    are not files: a wrong IMAGE_ROOT, found by stat before any store is made or teacher run,
    rather than every person skipped. Fewer missing images are skipped and retried later."""
    gone, used = missing_images(dataset)
    if 2 * len(gone) > used:
        raise UniError(f"{dataset.spec.image_root}: {len(gone)} of {used} images of "
                       f"{dataset.spec.annotations} are missing (more than half, found before "
                       f"running any teacher; first: {gone[0]}): is the image folder right? "
                       "(KIND:ANNOTATIONS:IMAGE_ROOT)")


def _open_jobs(jobs: list[_Job], spec_for: Callable[[_Job, dict], TeacherSpec]
               ) -> tuple[np.ndarray, list[np.ndarray], list[TeacherSpec], list[list[str]]]:
    """(instance ids (N,), done (N,) bool per store, specs, providers recorded per store)."""
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
    return ids, dones, specs, providers


def _run_dataset(jobs: list[_Job], run: Runner, spec_for: Callable[[_Job, dict], TeacherSpec],
                 batch_size: int, strict: bool, progress: bool) -> list[StoreSummary]:
    """One pass over a dataset for all its stores: plan, run, write each store, finalize."""
    ids, dones, specs, providers = _open_jobs(jobs, spec_for)
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
        for result in run(specs, tasks):
            for writer, s, part, known in zip(writers, summaries, result.parts, providers,
                                              strict=True):
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
                bar.update(len(part.rows) + len(part.skipped))
        for writer, s in zip(writers, summaries, strict=True):
            writer.finalize(skipped=s.skipped)
    seconds = time.perf_counter() - t0
    for job, s in zip(jobs, summaries, strict=True):
        s.seconds = seconds
        if job.work_path != job.path:  # the rebuild replaces the old store (with skipped
            atomic_write(job.path, lambda tmp: None, tmp=job.work_path)  # rows: resumable)
        _with_sizes(s)
    return summaries


def _with_sizes(summary: StoreSummary) -> StoreSummary:
    reader = open_store(summary.path)
    summary.written = int(np.asarray(reader.done).sum())
    summary.bytes_on_disk = summary.path.stat().st_size
    if summary.up_to_date:
        summary.skipped = dict(reader.skipped)
    return summary


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
    n_cores = cores()
    # Measured (BENCHMARKS.md §1): on 2 cores one in-process worker running onnxruntime on both
    # beats 2 one-thread dask workers; bigger machines get a worker per 4 cores.
    workers = workers or ((1 if device.startswith("cuda:") else gpus) if gpus
                          else max(1, n_cores // 4))
    out_dir = Path(out_dir)
    datasets = [load_dataset(d) for d in data]
    # Client-side teachers only describe the store (grid, sha); workers build their own.
    models = [Teacher(Path(t), providers=["CPUExecutionProvider"], threads=1) for t in teachers]
    names = [m.info.name for m in models]
    if len(set(names)) != len(names):
        raise UniError(f"teacher names must differ, got {', '.join(names)} (--name when "
                       "describing)")
    summaries, passes = [], []
    for ds in datasets:
        jobs = []
        for teacher in models:
            job = _prepare(teacher, ds, out_dir, flip_test, overwrite, threshold)
            if job is None:
                path = out_dir / store_name(teacher.info.name, ds)
                k, (w, h) = teacher.info.num_keypoints, teacher.heatmap_wh
                summaries.append(_with_sizes(StoreSummary(
                    path, len(ds.instances), (k, h, w), up_to_date=True)))
            else:
                jobs.append(job)
        if jobs:
            passes.append(jobs)
    for jobs in passes:  # every dataset's images before any store is made
        check_images(jobs[0].dataset)
    try:  # only now: bad input leaves nothing behind
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UniError(f"--out {out_dir}: cannot create it ({io_reason(e)})") from None
    for job in (job for jobs in passes for job in jobs):
        _create(job, threshold)
    if not passes:
        return summaries
    local = workers == 1 and not remote
    # A GPU worker runs 2 tasks at once: one decodes and crops while the other infers.
    client = None if local else start_client(workers, scheduler, scheduler_file,
                                             threads_per_worker=2 if gpus else 1)
    try:
        if client is not None:
            n_threads = sum(client.nthreads().values())
            if threads is None and remote:
                threads = 1 if n_threads > 1 else 0  # their cores are unknown: one each
            elif threads is None:
                threads = max(1, n_cores // workers)  # share this machine's cores

            def run(specs, tasks):
                return dask_results(client, specs, tasks, lambda: IN_FLIGHT_PER_THREAD * max(
                    1, sum(client.nthreads().values())))
        else:
            threads = 0 if threads is None else threads
            run = local_results

        def spec_for(job: _Job, attrs: dict) -> TeacherSpec:
            return TeacherSpec(
                str(job.teacher.path.resolve()), job.teacher.sha256, threads, flip_test, device,
                float(attrs.get("threshold", THRESHOLD)), str(attrs.get("codec", CODEC)))

        for jobs in passes:
            summaries.extend(_run_dataset(jobs, run, spec_for, batch_size, strict, progress))
    finally:
        if client is not None:
            cluster = client.cluster
            client.close()
            if cluster is not None:
                cluster.close()
    return summaries


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
