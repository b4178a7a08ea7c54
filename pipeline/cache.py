"""Stage one's job: every teacher × every dataset → one HDF5 store of soft heatmaps.

One store per (teacher, dataset): ``OUT/<teacher name>__<format>-<dataset id[:12]>.h5``.
Work is split into batches of B instances, cut at fixed places in image order (so an image is
decoded once) whatever is already done; a batch is written at once, so a resumed run feeds the
model exactly the batches a fresh run would and the store comes out the same. Batches run on
dask workers (decode, crop, infer; the ONNX session is built once per worker process), at most
2 per worker in flight so memory stays flat; this process is the single HDF5 writer.
``workers=1`` without a scheduler runs the batches in this process instead (no cluster start).

Layering: stage one's top; the one pipeline module that uses `stores` (it writes them), while
the foundation modules of pipeline/ stay store-free.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from pipeline.crops import crop_person, read_image
from pipeline.datasets import Dataset, load_dataset
from pipeline.errors import UniError, io_reason
from pipeline.faults import fault
from pipeline.files import atomic_write
from pipeline.geometry import compose, crop_to_heatmap
from pipeline.teachers import Teacher
from stores.heatmap_store import THRESHOLD, StoreMeta, check_compatible, open_store
from stores.writer import StoreWriteFailed, StoreWriter, create_store, repair_store

DEFAULT_BATCH = 32
IN_FLIGHT_PER_WORKER = 2

Item = tuple[int, int, str, list[float]]  # (row, instance id, image path, bbox xywh)
# (rows (n,) int64, heatmaps (n, K, h, w) float32, affines (n, 2, 3), skipped {id: reason})
Result = tuple[np.ndarray, np.ndarray, np.ndarray, dict[int, str]]
TaskArgs = tuple[str, str, int, bool]  # (teacher path, its sha256, threads, flip_test)


def store_name(teacher_name: str, dataset: Dataset) -> str:
    return f"{teacher_name}__{dataset.format}-{dataset.dataset_id[:12]}.h5"


@dataclass
class StoreSummary:
    path: Path
    instances: int
    heatmap_shape: tuple[int, int, int]  # (K, h, w)
    computed: int = 0  # crops run in this invocation
    skipped: dict[int, str] = field(default_factory=dict)
    seconds: float = 0.0
    up_to_date: bool = False
    bytes_on_disk: int = 0
    written: int = 0  # rows in the store (done), for the compression ratio

    @property
    def crops_per_s(self) -> float:
        return self.computed / self.seconds if self.seconds > 0 else 0.0


# --------------------------------------------------------------------------- worker side

_TEACHERS: dict[tuple[str, str, int], Teacher] = {}  # per worker process: sessions can't pickle


def _teacher(path: str, sha256: str, threads: int) -> Teacher:
    key = (path, sha256, threads)
    if key not in _TEACHERS:
        t = Teacher(Path(path), threads=threads)
        if t.sha256 != sha256:
            raise UniError(f"{path}: the model changed while caching (sha256 differs)")
        _TEACHERS[key] = t
    return _TEACHERS[key]


def crop_batch(t: Teacher, items: list[Item]
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[int, str]]:
    """Decode and crop: items (row, instance id, image path, bbox xywh) → rows (n,) int64,
    crops (n, H, W, 3) uint8, affines (n, 2, 3) image → heatmap grid, skipped {id: reason}."""
    info = t.info
    to_grid = crop_to_heatmap(info.input_wh, t.heatmap_wh)
    images: dict[str, np.ndarray] = {}
    rows, crops, affines, skipped = [], [], [], {}
    for row, instance_id, image_path, bbox in items:
        try:
            if image_path not in images:
                images = {image_path: read_image(Path(image_path))}  # items are image-sorted
            crop, affine = crop_person(images[image_path], np.asarray(bbox), info.input_wh,
                                       info.padding)
        except UniError as e:
            skipped[instance_id] = str(e)
            continue
        rows.append(row)
        crops.append(crop)
        affines.append(compose(to_grid, affine))
    w, h = info.input_wh
    return (np.asarray(rows, np.int64),
            np.stack(crops) if crops else np.zeros((0, h, w, 3), np.uint8),
            np.asarray(affines, np.float64).reshape(-1, 2, 3), skipped)


def _predict(t: Teacher, crops: np.ndarray, flip_test: bool) -> np.ndarray:
    k, (w, h) = t.info.num_keypoints, t.heatmap_wh
    return (t.predict(crops, flip_test=flip_test) if len(crops)
            else np.zeros((0, k, h, w), np.float32))


def infer_batch(teacher_path: str, sha256: str, threads: int, flip_test: bool,
                items: list[Item]) -> Result:
    """One task: items (row, instance id, image path, bbox xywh) → rows (n,) int64,
    heatmaps (n, K, h, w) float32, affines (n, 2, 3) image → heatmap grid, skipped {id: reason}.
    """
    t = _teacher(teacher_path, sha256, threads)
    rows, crops, affines, skipped = crop_batch(t, items)
    return rows, _predict(t, crops, flip_test), affines, skipped


# --------------------------------------------------------------------------- client side


@dataclass
class _Job:
    teacher: Teacher
    dataset: Dataset
    path: Path  # where the store ends up
    work_path: Path  # where it is written (a temp file when overwriting)
    meta: StoreMeta


def _batches(dataset: Dataset, instance_ids: list[int], done: np.ndarray, batch: int
             ) -> list[list[Item]]:
    """Rows in image order (one decode per image), cut every `batch` rows, minus done rows.

    The cuts do not depend on `done`, and a batch is written at once, so a resumed run sees
    exactly the batches of an uninterrupted one.
    """
    by_id = dataset.by_id()
    insts = [by_id[i] for i in instance_ids]
    order = sorted(range(len(insts)), key=lambda r: (str(insts[r].image_path), r))
    out = []
    for start in range(0, len(order), batch):
        items = [(row, insts[row].instance_id, str(insts[row].image_path),
                  insts[row].bbox.tolist())
                 for row in order[start:start + batch] if not done[row]]
        if items:
            out.append(items)
    return out


def _local_results(batches: list[list[Item]], args: TaskArgs, prefetch: bool | None = None
                   ) -> Iterator[Result]:
    """In this process. With prefetch (default: when the teacher runs on an accelerator) the
    next batch is decoded and cropped on a thread while this one is inferred and written.
    On the CPU it is off: onnxruntime already keeps every core busy, and the thread measured
    slower (bench/stage_one.py), competing with onnxruntime's spinning threads."""
    if not batches:
        return
    teacher_path, sha256, threads, flip_test = args
    t = _teacher(teacher_path, sha256, threads)
    if prefetch is None:
        prefetch = t.session.get_providers()[0] != "CPUExecutionProvider"
    if not prefetch:
        for items in batches:
            rows, crops, affines, skipped = crop_batch(t, items)
            yield rows, _predict(t, crops, flip_test), affines, skipped
        return
    with ThreadPoolExecutor(1) as pool:
        nxt = pool.submit(crop_batch, t, batches[0])
        for i in range(len(batches)):
            rows, crops, affines, skipped = nxt.result()
            if i + 1 < len(batches):
                nxt = pool.submit(crop_batch, t, batches[i + 1])
            yield rows, _predict(t, crops, flip_test), affines, skipped


def _dask_results(client, batches: list[list[Item]], args: TaskArgs, in_flight: int
                  ) -> Iterator[Result]:
    """Results as they complete, never more than `in_flight` batches submitted at once."""
    from distributed import as_completed

    todo = iter(batches)
    ac = as_completed()
    for items in todo:
        ac.add(client.submit(infer_batch, *args, items, pure=False, retries=2))
        if ac.count() >= in_flight:
            break
    for fut in ac:
        result = fut.result()
        fut.release()
        nxt = next(todo, None)
        if nxt is not None:
            ac.add(client.submit(infer_batch, *args, nxt, pure=False, retries=2))
        yield result


def _start_client(workers: int, scheduler: str | None):
    from distributed import Client, LocalCluster

    if scheduler:
        try:
            return Client(scheduler, timeout="20s")
        except (OSError, TimeoutError) as e:
            raise UniError(f"--scheduler {scheduler}: cannot connect ({e})") from None
    cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                           dashboard_address=None, silence_logs=logging.ERROR)
    return Client(cluster)


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
    """The job for one store, or None when it is already complete."""
    info = teacher.info
    k, (w, h) = info.num_keypoints, teacher.heatmap_wh
    meta = StoreMeta(
        teacher_name=info.name, teacher_sha256=teacher.sha256, teacher_metadata=asdict(info),
        skeleton=info.skeleton, dataset_id=dataset.dataset_id, dataset_spec=str(dataset.spec),
        input_wh=tuple(info.input_wh), padding=info.padding, flip_test=flip_test,
        heatmap_shape=(k, h, w))
    path = out_dir / store_name(info.name, dataset)
    if overwrite:
        tmp = path.with_name(path.name + ".tmp")
        _repair_if_possible(tmp)
        try:  # resume an interrupted rebuild when it is the same rebuild
            state = check_compatible(tmp, meta, threshold)
        except UniError:
            state = "missing"
        if state == "missing":
            tmp.unlink(missing_ok=True)
            create_store(tmp, meta, [i.instance_id for i in dataset.instances],
                         threshold=threshold)
        return _Job(teacher, dataset, path, tmp, meta)
    _repair_if_possible(path)
    try:
        state = check_compatible(path, meta, threshold)
    except UniError as e:
        raise UniError(f"{e} (use --overwrite to rebuild it)") from None
    if state == "complete":
        return None
    if state == "missing":
        create_store(path, meta, [i.instance_id for i in dataset.instances],
                     threshold=threshold)
    return _Job(teacher, dataset, path, path, meta)


def _run_job(job: _Job, results_for: Callable[[list[list[Item]]], Iterator[Result]],
             batch_size: int, strict: bool, progress: bool) -> StoreSummary:
    reader = open_store(job.work_path)
    ids, done = list(reader.instance_ids), np.asarray(reader.done, bool).copy()
    del reader
    batches = _batches(job.dataset, ids, done, batch_size)
    summary = StoreSummary(job.path, len(ids), tuple(job.meta.heatmap_shape))
    name = f"{job.teacher.info.name} × {job.dataset.format}"
    t0 = time.perf_counter()
    with StoreWriter(job.work_path) as writer, tqdm(
            total=len(ids), initial=int(done.sum()), unit="crop", desc=name, file=sys.stderr,
            dynamic_ncols=True, disable=not progress, smoothing=0.1) as bar:
        fault("cache-start")  # test hook (pipeline/faults.py); so are the fault() calls below
        for rows, heatmaps, affines, skipped in results_for(batches):
            if skipped and strict:
                first = next(iter(skipped.values()))
                raise UniError(f"{first} (instance {next(iter(skipped))}; --strict)")
            if len(rows):
                writer.write(rows, heatmaps, affines)
                fault("cache-batch")
            summary.skipped.update(skipped)
            summary.computed += len(rows)
            bar.update(len(rows) + len(skipped))
        writer.finalize(skipped=summary.skipped)
    summary.seconds = time.perf_counter() - t0
    if job.work_path != job.path:  # the rebuild is complete: it replaces the old store
        atomic_write(job.path, lambda tmp: None, tmp=job.work_path)
    return _with_sizes(summary)


def _with_sizes(summary: StoreSummary) -> StoreSummary:
    reader = open_store(summary.path)
    summary.written = int(np.asarray(reader.done).sum())
    summary.bytes_on_disk = summary.path.stat().st_size
    if summary.up_to_date:
        summary.skipped = dict(reader.skipped)
    return summary


def cache_teachers(data: list[str], teachers: list[Path], out_dir: Path,
                   workers: int | None = None, scheduler: str | None = None,
                   threads: int | None = None, batch_size: int = DEFAULT_BATCH,
                   flip_test: bool = True, overwrite: bool = False, strict: bool = False,
                   progress: bool = True, threshold: float | None = None) -> list[StoreSummary]:
    """Run every teacher over every person of every dataset into OUT stores (resumable).

    workers: local worker processes (None: one per 4 cores, at least 1; 1 runs in this process).
    threads: onnxruntime intra-op threads per worker; None = this machine's cores shared among
    the local workers, or 1 per task on a --scheduler cluster. threshold: stored
    values under threshold × their channel's peak are zeroed (None: the store's default);
    flip_test: store the average of each crop's and its mirror's maps."""
    threshold = THRESHOLD if threshold is None else float(threshold)

    if batch_size < 1:
        raise UniError(f"--batch-size must be at least 1, got {batch_size}")
    cores = os.cpu_count() or 1
    # Measured (BENCHMARKS.md §1): on 2 cores one in-process worker running onnxruntime on both
    # beats 2 one-thread dask workers; bigger machines get a worker per 4 cores.
    workers = workers or max(1, cores // 4)
    out_dir = Path(out_dir)
    datasets = [load_dataset(d) for d in data]
    # Client-side teachers only describe the store (grid, sha); workers build their own.
    models = [Teacher(Path(t), providers=["CPUExecutionProvider"], threads=1) for t in teachers]
    names = [m.info.name for m in models]
    if len(set(names)) != len(names):
        raise UniError(f"teacher names must differ, got {', '.join(names)} (--name when "
                       "describing)")
    try:  # only now: bad input leaves nothing behind
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UniError(f"--out {out_dir}: cannot create it ({io_reason(e)})") from None
    summaries, jobs = [], []
    for teacher in models:
        for ds in datasets:
            job = _prepare(teacher, ds, out_dir, flip_test, overwrite, threshold)
            if job is None:
                path = out_dir / store_name(teacher.info.name, ds)
                k, (w, h) = teacher.info.num_keypoints, teacher.heatmap_wh
                summaries.append(_with_sizes(StoreSummary(
                    path, len(ds.instances), (k, h, w), up_to_date=True)))
            else:
                jobs.append(job)
    if not jobs:
        return summaries
    client = None if workers == 1 and not scheduler else _start_client(workers, scheduler)
    try:
        if client is not None:
            n_threads = sum(client.nthreads().values())
            in_flight = IN_FLIGHT_PER_WORKER * max(n_threads, 1)
            if threads is None and scheduler:
                threads = 1 if n_threads > 1 else 0  # their cores are unknown: one each
            elif threads is None:
                threads = max(1, cores // workers)  # share this machine's cores
        elif threads is None:
            threads = 0
        for job in jobs:
            # Absolute paths: a remote worker's working directory is not ours.
            args = (str(job.teacher.path.resolve()), job.teacher.sha256, threads, flip_test)
            if client is None:
                def results_for(batches, args=args):
                    return _local_results(batches, args)
            else:
                def results_for(batches, args=args):
                    return _dask_results(client, batches, args, in_flight)
            summaries.append(_run_job(job, results_for, batch_size, strict, progress))
    finally:
        if client is not None:
            cluster = client.cluster
            client.close()
            if cluster is not None:
                cluster.close()
    return summaries


def format_run_summary(s: StoreSummary, max_skipped: int = 20) -> str:
    """Lines for one store of this run: counts, time, rate, size on disk and ratio to raw fp16."""
    raw_fp16 = 2 * int(np.prod(s.heatmap_shape)) * s.written
    ratio = f" ({raw_fp16 / s.bytes_on_disk:.1f}x smaller than raw fp16)" if s.bytes_on_disk else ""
    head = f"{s.path}: {s.instances} instances"
    if s.up_to_date:
        return (f"{head}, {len(s.skipped)} skipped, up to date, "
                f"{s.bytes_on_disk / 1e6:.2f} MB on disk{ratio}")
    lines = [f"{head}, {s.computed} computed, {len(s.skipped)} skipped, {s.seconds:.1f} s, "
             f"{s.crops_per_s:.1f} crops/s, {s.bytes_on_disk / 1e6:.2f} MB on disk{ratio}"]
    for i, (instance_id, reason) in enumerate(sorted(s.skipped.items())):
        if i == max_skipped:
            lines.append(f"  ... and {len(s.skipped) - max_skipped} more skipped")
            break
        lines.append(f"  skipped instance {instance_id}: {reason}")
    return "\n".join(lines)
