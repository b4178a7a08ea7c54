"""Online KD for the benchmarks: the ONNX teachers run inside the DataLoader on every sample,
instead of reading the cached stores — the baseline that caching replaces.

`OnlineTeacher` stands in for a StoreReader in a student.data.TeacherSource (train() and
PoseSamples only use ``row``, ``done``, ``check()``, ``close()`` and
``read(row) → (maps, affine image → teacher grid)``), so the maps are warped, flipped and
masked by exactly the code that warps cached targets; the only
difference is that they are fresh float32 teacher outputs rather than quantised stored ones.
`online_training()` makes student.train.train use such sources: it swaps the one function
through which train() gets its teacher sources (student.run_data's match_stores) for the
duration of the call.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import numpy as np

import uniskel.student.run_data as student_train  # where train() calls match_stores
from uniskel.core.crops import crop_person, read_image
from uniskel.core.datasets import Dataset
from uniskel.core.geometry import compose, crop_to_heatmap
from uniskel.pipeline.teachers import Teacher, read_info
from uniskel.stores.verify import StoreCheck
from uniskel.student.sources import TeacherSource

_LAST_IMAGE: dict[str, np.ndarray] = {}  # per process: both teachers crop the same image


def _image(path: Path) -> np.ndarray:
    key = str(path)
    if key not in _LAST_IMAGE:
        _LAST_IMAGE.clear()
        _LAST_IMAGE[key] = read_image(path)
    return _LAST_IMAGE[key]


class OnlineTeacher:
    """Row → (maps (K, h, w) float32, affine (2, 3)) by running the teacher on the row's crop."""

    def __init__(self, teacher_path: Path, dataset: Dataset, flip: bool = True, threads: int = 1):
        self.teacher_path, self.flip, self.threads = Path(teacher_path), flip, threads
        self.instances = dataset.instances
        self.rows_of = dataset.rows_of  # instance ids → rows (-1: none)
        self.done = np.ones(len(self.instances), bool)
        self._teacher, self._pid = None, None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_teacher": None, "_pid": None}

    def _get(self) -> Teacher:
        if self._pid != os.getpid():  # onnxruntime sessions do not survive a fork
            self._teacher = Teacher(self.teacher_path, providers=["CPUExecutionProvider"],
                                    threads=self.threads)
            self._pid = os.getpid()
        return self._teacher

    def row(self, instance_id: int) -> int:
        """The row of an instance id, or -1 (as StoreReader.row)."""
        return int(self.rows_of([instance_id])[0])

    def check(self, progress: bool = False, trust: bool = True) -> StoreCheck:
        return StoreCheck(problems=[], damaged={})  # nothing stored, nothing to verify

    def close(self) -> None:
        pass

    def read(self, row: int) -> tuple[np.ndarray, np.ndarray]:
        t = self._get()
        inst = self.instances[row]
        crop, affine = crop_person(_image(inst.image_path), inst.bbox, t.info.input_wh,
                                   t.info.padding)
        maps = t.predict(crop[None], flip_test=self.flip)[0]
        return maps, compose(crop_to_heatmap(t.info.input_wh, t.heatmap_wh), affine)


def online_match(teacher_paths: list[Path], flip: bool = True):
    """A drop-in for student.data.match_stores giving every teacher online on every dataset."""
    infos = [(Path(p), read_info(Path(p))) for p in teacher_paths]

    def match(_store_paths, datasets, _other_datasets=()):
        skeletons = {info.name: info.skeleton for _, info in infos}
        sources = {(info.name, ds.dataset_id): TeacherSource(
            info.name, info.skeleton_def, path, OnlineTeacher(path, ds, flip))
            for path, info in infos for ds in datasets}
        return sorted(skeletons), skeletons, sources

    return match


@contextlib.contextmanager
def online_training(teacher_paths: list[Path], flip: bool = True):
    """Within this block, train() runs these teachers online instead of reading its stores
    (config 'stores' must be non-empty for train() to ask for teachers; its value is ignored)."""
    saved = student_train.match_stores
    student_train.match_stores = online_match(teacher_paths, flip)
    try:
        yield
    finally:
        student_train.match_stores = saved
