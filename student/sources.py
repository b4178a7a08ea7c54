"""Which cached teacher stores feed a run: --stores files and folders matched to the --data
datasets by dataset id, each teacher's skeleton as its stores record it, and the check of every
store before training (damaged targets refused, or their instances left out).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from uniskel.core.datasets import Dataset
from uniskel.core.errors import UniError
from uniskel.core.skeletons import Skeleton
from uniskel.stores.reader import StoreReader, open_store
from uniskel.stores.verify import missing_instances


@dataclass(frozen=True)
class TeacherSource:
    """The store holding one teacher's maps for one dataset (opened lazily per process)."""

    teacher: str
    skeleton: Skeleton  # the teacher's native skeleton, as the store records it
    path: Path
    reader: StoreReader  # picklable, opens h5py lazily in each process



def match_stores(store_paths: list[Path], datasets: list[Dataset],
                 other_datasets: list[Dataset] = ()
                 ) -> tuple[list[str], dict[str, str], dict[tuple[str, str], TeacherSource]]:
    """Stores (files, or folders of *.h5) → (teacher names sorted, {teacher: skeleton},
    {(teacher, dataset id): source}) for the training datasets.

    Each source carries the teacher's skeleton as the store records it (its full definition;
    a store older than that names a built-in one). Stores of `other_datasets` (validation data)
    are accepted and ignored. UniError for a store whose dataset is not given, whose skeleton is
    unknown or disagrees with its maps, that lacks instances the training data needs, or that
    repeats a (teacher, dataset) pair.
    """
    files: list[Path] = []
    for p in map(Path, store_paths):
        if p.is_dir():
            found = sorted(p.glob("*.h5"))
            if not found:
                raise UniError(f"--stores {p}: no *.h5 stores in this folder")
            files += found
        elif p.is_file():
            files.append(p)
        else:
            raise UniError(f"--stores {p}: no such file or folder")
    by_id = {ds.dataset_id: ds for ds in datasets}
    other_ids = {ds.dataset_id for ds in other_datasets}
    skeletons: dict[str, str] = {}
    defs: dict[str, Skeleton] = {}
    sources: dict[tuple[str, str], TeacherSource] = {}
    for f in files:
        reader = open_store(f)
        meta = reader.meta
        sk = store_skeleton(meta, f)
        ds = by_id.get(meta.dataset_id)
        if ds is None:
            if meta.dataset_id in other_ids:
                continue
            raise UniError(f"{f}: its dataset {meta.dataset_spec} (id {meta.dataset_id[:12]}) "
                           "is not one of the --data datasets")
        key = (meta.teacher_name, meta.dataset_id)
        if key in sources:
            raise UniError(f"{f}: a second store of teacher {meta.teacher_name!r} for "
                           f"{ds.spec} (the first is {sources[key].path})")
        if defs.setdefault(meta.teacher_name, sk) != sk:
            raise UniError(f"{f}: teacher {meta.teacher_name!r} has skeleton {sk.name} "
                           f"here but {defs[meta.teacher_name].name} (as defined) in another "
                           "store")
        skeletons[meta.teacher_name] = sk.name
        missing = len(missing_instances(ds.instance_ids, reader.instance_ids, reader.done,
                                        reader.skipped))
        if missing:
            raise UniError(f"{f}: missing {missing} of {len(ds.instances)} instances of "
                           f"{ds.spec} (run uni cache-teachers again)")
        sources[key] = TeacherSource(meta.teacher_name, sk, f, reader)
    return sorted(skeletons), skeletons, sources


def store_skeleton(meta, where: Path) -> Skeleton:
    """A store's teacher skeleton (the definition it records); UniError when its maps do not
    have that skeleton's K channels."""
    sk = meta.skeleton_def
    if sk is None:
        raise UniError(f"{where}: teacher skeleton {meta.skeleton!r} has no definition")
    if meta.heatmap_shape[0] != sk.num_keypoints:
        raise UniError(f"{where}: heatmap_shape has {meta.heatmap_shape[0]} channels but the "
                       f"teacher skeleton {sk.name} has {sk.num_keypoints} keypoints")
    return sk


def teacher_skeletons(sources: dict[tuple[str, str], TeacherSource]) -> list[Skeleton]:
    """Each teacher's skeleton once, in teacher-name order."""
    return list({s.teacher: s.skeleton for s in sorted(sources.values(),
                                                       key=lambda s: s.teacher)}.values())


def check_stores(sources: dict[tuple[str, str], TeacherSource], progress: bool = False
                 ) -> tuple[dict[str, set[int]], str | None]:
    """Check every store once before training (one rank does; student/train.py shares the
    answer): → ({dataset id: instance ids whose cached targets are damaged}, the first problem
    as one line, or None). A store recorded as verified and unchanged since is trusted: only
    its new rows' chunks are read, every row's metadata is checked (stores/verify.py)."""
    bad: dict[str, set[int]] = {}
    first = None
    for (_, dataset_id), src in sources.items():
        damaged = src.reader.check(progress=progress, trust=True).damaged
        src.reader.close()  # DataLoader workers open their own handles
        if damaged:
            first = first or f"{src.path}: {next(iter(damaged.values()))}"
            bad.setdefault(dataset_id, set()).update(
                int(src.reader.instance_ids[r]) for r in damaged)
    return bad, first


def drop_damaged(bad: dict[str, set[int]], first: str | None, datasets: list[Dataset],
                 items: np.ndarray, skip_corrupt: bool, verbose: bool = True) -> np.ndarray:
    """check_stores' damaged instances refused in one line, or (skip_corrupt) dropped from
    `items` ((M, 2) int64 (dataset index, row)) and counted."""
    if not bad:
        return items
    n = sum(len(ids) for ids in bad.values())
    if not skip_corrupt:
        raise UniError(f"{first}; {n} damaged instance(s) in the stores (uni inspect-store "
                       "--verify lists them; --skip-corrupt trains without them)")
    drop = np.zeros(len(items), bool)
    for d, ds in enumerate(datasets):
        ids = np.fromiter(bad.get(ds.dataset_id, ()), np.int64)
        mine = items[:, 0] == d
        drop[mine] = np.isin(ds.instance_ids[items[mine, 1]], ids)
    if verbose:
        print(f"uni: skipping {int(drop.sum())} training instances whose cached "
              f"targets are damaged (--skip-corrupt); first: {first}", file=sys.stderr)
    return items[~drop]
