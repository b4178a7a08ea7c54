"""What a training run reads: its datasets, teacher stores (checked), the unified skeleton it
trains and the loaders (student/train.py runs the loop over them).

The run's unified skeleton (config `unified`; student/config.py) is chosen once at the start
from its datasets' skeletons (skeleton files named by `skeletons` are loaded first) and fixes the
student's head: U channels. A resume keeps the checkpoint's. Unified keypoints that no dataset
labels and no teacher knows get no loss at all; the run says which, once.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler

from uniskel.core.datasets import Dataset, load_dataset
from uniskel.core.errors import UniError
from uniskel.core.skeletons import Skeleton, load_skeleton_file, unified_skeleton
from uniskel.student import ddp
from uniskel.student.augment import Augment, RTMPoseAugment
from uniskel.student.checkpoint import student_unified
from uniskel.student.config import TrainConfig, teacher_weights
from uniskel.student.data import PoseSamples, collate, split_items
from uniskel.student.models import model_head
from uniskel.student.sources import check_stores, drop_damaged, match_stores, teacher_skeletons


@dataclass
class Data:
    """What the loop reads: training samples and their sampler, validation, step counts."""

    teachers: list[str]
    unified: Skeleton  # the run's: the student's output channels
    train_ds: PoseSamples
    sampler: ArraySampler
    val_loader: DataLoader | None
    loader_kw: dict
    steps_per_epoch: int
    total_steps: int


def build_data(cfg: TrainConfig, rank: int, world: int, device: torch.device, progress: bool,
               resume: dict | None = None) -> tuple[TrainConfig, Data]:
    """Datasets, teacher stores (checked), the unified skeleton and loaders; → (cfg with its
    per-teacher KD weights and decays filled in, the data)."""
    for path in cfg.skeletons:  # before the datasets: a spec may name a kind defined there
        load_skeleton_file(Path(path))
    train_sets = [load_dataset(s) for s in cfg.data]
    val_sets = [load_dataset(s) for s in cfg.val_data]
    ids = [d.dataset_id for d in train_sets]
    if len(set(ids)) != len(ids):
        raise UniError("--data: the same dataset is given twice")
    teachers, skeletons, sources = [], {}, {}
    if cfg.stores:
        teachers, skeletons, sources = match_stores(cfg.stores, train_sets, val_sets)
    weights, decays = teacher_weights(skeletons, cfg.kd_weight, cfg.kd_decay)
    cfg = replace(cfg, kd_weight=weights, kd_decay=decays)
    unified = (student_unified(resume) if resume is not None
               else unified_skeleton(cfg.unified, [ds.skeleton for ds in train_sets]))
    if rank == 0:
        say_coverage(unified, train_sets, teacher_skeletons(sources))
    train_items, held_items = split_items(
        train_sets, 0.0 if cfg.val_data else cfg.val_fraction, cfg.seed)
    # One rank reads the stores; the others wait for its answer instead of repeating it.
    damage = check_stores(sources, progress) if rank == 0 else None
    bad, first = ddp.broadcast(damage)
    train_items = drop_damaged(bad, first, train_sets, train_items, cfg.skip_corrupt,
                               rank == 0)
    input_wh, head = cfg.input_wh, model_head(cfg.model)
    augment = RTMPoseAugment() if cfg.augment == "rtmpose" else Augment()
    train_ds = PoseSamples(train_sets, input_wh, teachers, sources, augment, cfg.seed,
                           instances=train_items, unified=unified, head=head,
                           sample_ratio=sample_ratio_list(cfg.sample_ratio, train_sets),
                           stage2_from=rtmpose_stage2_epoch(cfg.epochs),
                           kd_power=cfg.kd_beta if head == "simcc" else 1.0)
    if val_sets:
        val_ds = PoseSamples(val_sets, input_wh, augment=None, unified=unified, head=head)
    elif len(held_items):
        val_ds = PoseSamples(train_sets, input_wh, augment=None, instances=held_items,
                             unified=unified, head=head)
    else:
        val_ds = None
    if len(train_ds) == 0:
        raise UniError("--data: no training instances")
    sampler = ArraySampler(train_ds, num_replicas=world, rank=rank, shuffle=True,
                           seed=cfg.seed)
    steps_per_epoch = math.ceil(len(sampler) / cfg.batch_size)
    total_steps = steps_per_epoch * cfg.epochs
    if cfg.max_steps:
        total_steps = min(total_steps, cfg.max_steps)
    loader_kw = dict(num_workers=cfg.workers, collate_fn=collate,
                     worker_init_fn=ddp.worker_init if cfg.workers else None,
                     pin_memory=device.type == "cuda")
    val_loader = None
    if val_ds is not None:
        val_sampler = DistributedSampler(val_ds, num_replicas=world, rank=rank, shuffle=False)
        val_loader = DataLoader(val_ds, cfg.batch_size, sampler=val_sampler, **loader_kw,
                                generator=loader_generator(cfg.seed, -1))
    return cfg, Data(teachers, unified, train_ds, sampler, val_loader, loader_kw,
                     steps_per_epoch, total_steps)


class ArraySampler(DistributedSampler):
    """DistributedSampler's order exactly, kept as one tensor instead of a list of Python ints
    (two per item, in the trainer, every epoch); each index becomes an int as it is taken."""

    def __iter__(self) -> Iterator[int]:
        n = len(self.dataset)
        if self.shuffle:
            g = torch.Generator()
            g.manual_seed(self.seed + self.epoch)
            idx = torch.randperm(n, generator=g)
        else:
            idx = torch.arange(n)
        if not self.drop_last and self.total_size > n:  # padded by repeating the order
            idx = torch.cat([idx, idx.repeat(math.ceil((self.total_size - n) / n))[
                :self.total_size - n]])
        idx = idx[:self.total_size][self.rank:self.total_size:self.num_replicas].numpy()
        return map(int, idx)


def rtmpose_stage2_epoch(epochs: int) -> int:
    """The first epoch of RTMPose's second augmentation stage: its configs switch for the last
    30 of 420 epochs; a run of another length switches for the same share (at least one)."""
    return epochs - max(1, round(epochs * 30 / 420))


def sample_ratio_list(ratios: dict[str, float], datasets: list[Dataset]) -> list[float] | None:
    """--sample-ratio KIND=F → one factor per dataset (1 for kinds not named); None when none
    is given. UniError for a kind no --data dataset has."""
    if not ratios:
        return None
    kinds = {ds.kind.name for ds in datasets}
    for kind in ratios:
        if kind not in kinds:
            raise UniError(f"--sample-ratio {kind}: no --data dataset is of that kind "
                           f"(kinds: {', '.join(sorted(kinds))})")
    return [ratios.get(ds.kind.name, 1.0) for ds in datasets]


def say_coverage(unified: Skeleton, datasets: list[Dataset], teachers: list[Skeleton]) -> None:
    """A unified skeleton other than the default is said once, in one line, with the keypoints
    nothing supervises (no dataset labels them, no teacher knows them: no loss at all). The
    default's are the paper's and go unsaid (a COCO-only run leaves its four extra points)."""
    if unified.name == "unified21":
        return
    covered = np.zeros(unified.num_keypoints, bool)
    for sk in [ds.skeleton for ds in datasets] + teachers:
        covered |= sk.mask(unified)
    idle = [n for n, c in zip(unified.keypoints, covered, strict=True) if not c]
    say(f"uni: unified skeleton {unified.name}: {unified.num_keypoints} keypoints"
        + (f"; no dataset labels and no teacher knows {', '.join(idle)}: no loss there"
           if idle else ""))


def loader_generator(seed: int, epoch: int) -> torch.Generator:
    """A loader's own generator: creating a loader draws its worker seed from it, not from the
    global RNG, so the RNG states a resume restores are those of an uninterrupted run."""
    return torch.Generator().manual_seed(seed * 100_003 + epoch + 1)


def say(line: str) -> None:
    """One line on stderr, from rank 0 only (torchrun sets RANK before the process group)."""
    if os.environ.get("RANK", "0") == "0":
        print(line, file=sys.stderr)
