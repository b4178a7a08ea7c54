"""Stage one's decode and crop, on the worker: each image of a task decoded once, each of its
people cropped for every teacher that wants them (its own input size and padding; teachers of
one geometry share a crop), inline or in a thread pool (pipeline/cache_tasks.py decides).
"""

from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

import numpy as np

from uniskel.core.crops import crop_person, read_image
from uniskel.core.errors import UniError
from uniskel.core.geometry import compose, crop_to_heatmap
from uniskel.pipeline.cache_plan import Task
from uniskel.pipeline.teachers import Teacher


class Geometry(NamedTuple):
    """How a teacher crops; teachers of one geometry share a crop (a dict key)."""

    input_wh: tuple[int, int]
    padding: float
    heatmap_wh: tuple[int, int]


class Wanted(NamedTuple):
    """A person of one image and the teachers that want its crop."""

    item: int  # index into the task's items
    bbox: np.ndarray  # (4,) (x, y, w, h) image pixels
    teachers: list[int]  # indices into the task's teachers


class Crop(NamedTuple):
    """One person cropped for one teacher."""

    item: int  # index into the task's items
    teacher: int  # index into the task's teachers
    crop: np.ndarray  # (H, W, 3) uint8 RGB, the teacher's input size
    affine: np.ndarray  # (2, 3) float64 image → the teacher's heatmap grid
    seconds: float  # time spent cropping it


class ImageCrops(NamedTuple):
    """One image decoded and its people cropped, or why it could not be read."""

    decode_s: float
    crops: list[Crop]  # empty when the image could not be read
    problem: str | None  # why it could not be read (one line), else None


class TeacherCrops(NamedTuple):
    """One teacher's crops of a task, in item order: what it infers."""

    rows: np.ndarray  # (n,) int64 store rows
    crops: np.ndarray  # (n, H, W, 3) uint8 RGB
    affines: np.ndarray  # (n, 2, 3) float64 image → heatmap grid
    skipped: dict[int, str]  # {instance id: why its image could not be read}
    crop_s: float  # seconds spent cropping


class CroppedTask(NamedTuple):
    """A task's crops, for every teacher of it."""

    decode_s: float  # image decoding, shared by the teachers
    teachers: list[TeacherCrops]  # one per teacher of the task, in order


def _geometry(t: Teacher) -> Geometry:
    return Geometry(tuple(t.info.input_wh), float(t.info.padding), tuple(t.heatmap_wh))


def _crop_image(path: str, entries: list[Wanted], geoms: list[Geometry]) -> ImageCrops:
    """One image: decode once, crop each entry for each of its teachers."""
    t0 = time.perf_counter()
    try:
        image = read_image(Path(path))
    except UniError as e:
        return ImageCrops(time.perf_counter() - t0, [], str(e))
    decode_s = time.perf_counter() - t0
    out = []
    for entry in entries:
        made: dict[Geometry, tuple[np.ndarray, np.ndarray]] = {}  # → (crop, affine)
        for t in entry.teachers:
            g = geoms[t]
            t1 = time.perf_counter()
            if g not in made:
                crop, affine = crop_person(image, entry.bbox, g.input_wh, g.padding)
                made[g] = crop, compose(crop_to_heatmap(g.input_wh, g.heatmap_wh), affine)
            out.append(Crop(entry.item, t, *made[g], time.perf_counter() - t1))
    return ImageCrops(decode_s, out, None)


class Cropped:
    """A task decoded and cropped (or being so, in the pool); result() waits for it."""

    def __init__(self, task: Task, teachers: list[Teacher], pool: ThreadPoolExecutor | None):
        if len(task.wants) != len(teachers):
            raise ValueError(f"a task for {len(task.wants)} teachers given {len(teachers)}")
        self.task, self.teachers = task, teachers
        geoms = [_geometry(t) for t in teachers]
        groups: dict[str, list[Wanted]] = {}
        for i in range(len(task.rows)):
            wanting = [t for t, w in enumerate(task.wants) if w[i]]
            if wanting:
                groups.setdefault(task.image_paths[task.image_of[i]], []).append(
                    Wanted(i, task.bboxes[i], wanting))
        self._groups = list(groups.items())
        jobs = [(path, entries, geoms) for path, entries in self._groups]
        self._parts: list[Future | ImageCrops] = (
            [pool.submit(_crop_image, *job) for job in jobs] if pool
            else [_crop_image(*job) for job in jobs])

    def result(self) -> CroppedTask:
        """Each teacher's crops, in item order, once the pool has made them."""
        n_t = len(self.teachers)
        decode_s = 0.0
        found: list[dict[int, Crop]] = [{} for _ in range(n_t)]  # teacher → {item: its crop}
        skipped: list[dict[int, str]] = [{} for _ in range(n_t)]
        crop_s = [0.0] * n_t
        for (_, entries), part in zip(self._groups, self._parts, strict=True):
            image = part.result() if isinstance(part, Future) else part
            decode_s += image.decode_s
            if image.problem is not None:
                for entry in entries:
                    for t in entry.teachers:
                        skipped[t][int(self.task.instance_ids[entry.item])] = image.problem
            for c in image.crops:
                found[c.teacher][c.item] = c
                crop_s[c.teacher] += c.seconds
        return CroppedTask(decode_s, [self._in_item_order(t, found[t], skipped[t], crop_s[t])
                                      for t in range(n_t)])

    def _in_item_order(self, t: int, found: dict[int, Crop], skipped: dict[int, str],
                       crop_s: float) -> TeacherCrops:
        w, h = _geometry(self.teachers[t]).input_wh
        order = sorted(found)  # item order: the order a fresh run feeds the model
        rows = self.task.rows[np.asarray(order, np.int64)]
        crops = (np.stack([found[i].crop for i in order]) if order
                 else np.zeros((0, h, w, 3), np.uint8))
        affines = np.asarray([found[i].affine for i in order], np.float64).reshape(-1, 2, 3)
        return TeacherCrops(rows, crops, affines, skipped, crop_s)
