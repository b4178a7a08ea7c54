"""Stage one's plan: which stores a run makes, resumes or leaves alone, and the tasks that fill
them.

A dataset's rows, in image order (so an image is decoded once), are cut every B rows at fixed
places whatever is already done; a task carries one cut with, per teacher, the rows that
teacher's store still lacks. Each store writes a task's rows at once, so a resumed run feeds
every model exactly the batches a fresh run would and each store comes out the same.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from uniskel.core.datasets import Dataset, missing_images
from uniskel.core.errors import UniError
from uniskel.pipeline.teachers import Teacher
from uniskel.stores.create import StoreWriteFailed, create_store
from uniskel.stores.reader import check_compatible, open_store
from uniskel.stores.schema import StoreMeta
from uniskel.stores.writer import StoreWriter, repair_store


class Items(NamedTuple):
    """A dataset pass's persons in image order, as arrays (no object per person: a client's
    memory stays flat in the dataset's size)."""

    dataset: Dataset
    rows: np.ndarray  # (N,) int64 store rows (the same in every store of the dataset), in order
    at: np.ndarray  # (N,) int64 the dataset row of each entry of `rows`


class Task(NamedTuple):
    """One cut of a dataset's rows, in image order, for every teacher that needs some of it;
    arrays and each image path once, so that it pickles small."""

    rows: np.ndarray  # (n,) int64 store rows
    instance_ids: np.ndarray  # (n,) int64
    bboxes: np.ndarray  # (n, 4) float64 (x, y, w, h) image pixels
    image_paths: tuple[str, ...]  # the task's images, each once
    image_of: np.ndarray  # (n,) int32 index into image_paths
    wants: list[np.ndarray]  # per teacher (n,) bool: the items its store still lacks

    def instance_of(self, row: int) -> int:
        """The instance id of a store row of this task."""
        return int(self.instance_ids[np.flatnonzero(self.rows == row)[0]])


@dataclass(frozen=True)
class StoreJob:
    """One store this run writes."""

    teacher: Teacher
    dataset: Dataset
    path: Path  # where the store ends up
    work_path: Path  # where it is written (a temp file when overwriting)
    meta: StoreMeta
    create: bool = False  # work_path is to be created (empty) before the pass


def store_name(teacher_name: str, dataset: Dataset) -> str:
    return f"{teacher_name}__{dataset.kind.name}-{dataset.dataset_id[:12]}.h5"


# --------------------------------------------------------------------------- tasks


def dataset_items(dataset: Dataset, instance_ids: np.ndarray) -> Items:
    """A store's rows (its instance ids (N,)) in image order (by image path), ties by store
    row."""
    at = dataset.rows_of(instance_ids)  # (N,) dataset row of each store row
    if (at < 0).any():
        raise UniError(f"{dataset.spec}: instance {int(instance_ids[np.argmax(at < 0)])} of "
                       "its store is not in the dataset (use --overwrite to rebuild the store)")
    rank = _path_rank(dataset.image_paths)
    order = np.lexsort((np.arange(len(at)), rank[dataset.image_index[at]]))
    return Items(dataset, order.astype(np.int64), at[order].astype(np.int64))


def _path_rank(paths: np.ndarray, block: int = 65536) -> np.ndarray:
    """(I,) int64 rank of each image's path among the distinct paths, sorted: sorting by it
    sorts by path (equal paths, equal rank) without copying the strings (a 150k-image file's
    would be ~30 MB at once); the neighbours are compared a block at a time."""
    perm = np.argsort(paths, kind="stable")
    new = np.ones(len(paths), bool)  # sorted entry i starts a new path
    for s in range(1, len(paths), block):
        e = min(s + block, len(paths))
        new[s:e] = paths[perm[s:e]] != paths[perm[s - 1:e - 1]]
    rank = np.empty(len(paths), np.int64)
    rank[perm] = np.cumsum(new) - 1
    return rank


def _task(items: Items, picked: np.ndarray, wants: list[np.ndarray]) -> Task:
    """The task of items' entries `picked` (indices into items.rows)."""
    ds, at = items.dataset, items.at[picked]
    images, image_of = np.unique(ds.image_index[at], return_inverse=True)
    return Task(items.rows[picked], ds.instance_ids[at].astype(np.int64),
                ds.bboxes[at].astype(np.float64), tuple(str(p) for p in ds.image_paths[images]),
                image_of.reshape(-1).astype(np.int32), wants)


def plan_tasks(items: Items, dones: list[np.ndarray], batch: int) -> Iterator[Task]:
    """Cut `items` every `batch`; a task keeps the rows some teacher still needs (dones[t]:
    (N,) bool per row of teacher t's store). Tasks are made as they are taken.

    The cuts do not depend on `dones`, and each store writes a task's rows at once, so a
    resumed run gives every teacher exactly the batches of an uninterrupted one.
    """
    for start in range(0, len(items.rows), batch):
        cut = np.arange(start, min(start + batch, len(items.rows)))
        wants = [~d[items.rows[cut]] for d in dones]  # per teacher (n,) bool
        keep = np.any(wants, axis=0)
        if keep.any():
            yield _task(items, cut[keep], [w[keep] for w in wants])


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


def prepare_store(teacher: Teacher, dataset: Dataset, out_dir: Path, flip_test: bool,
                  overwrite: bool, threshold: float) -> StoreJob | None:
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
        return StoreJob(teacher, dataset, path, tmp, meta, create=state == "missing")
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
    return StoreJob(teacher, dataset, path, path, meta, create=state == "missing")


def make_store(job: StoreJob, threshold: float) -> None:
    """Create the job's empty store when it is to be created."""
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
