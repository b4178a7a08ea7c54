"""Data-parallel plumbing for the trainer: process group, CPU threads, sums, broadcasts,
samplers.

The trainer runs single-process or under ``torchrun --nproc-per-node N`` (gloo on CPU, nccl on
GPU); these helpers make the single-process case a world of one.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator

import torch
import torch.distributed as dist


def setup() -> tuple[int, int, torch.device]:
    """(rank, world size, device), joining torchrun's process group when there is one."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    rank = dist.get_rank() if dist.is_initialized() else 0
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    else:
        device = torch.device("cpu")
    return rank, world, device


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def cpu_threads(world: int, workers: int) -> int:
    """Intra-op threads per training process: the cores left after DataLoader workers.

    Oversubscribed OpenMP threads spin against each other (BENCHMARKS.md "Torch threads per training
    process" has the measurement).
    """
    return max(1, (os.cpu_count() or 1) // world - workers)


def sync_batchnorm(model: torch.nn.Module, world: int, device: torch.device) -> torch.nn.Module:
    """BatchNorm layers as SyncBatchNorm under a multi-GPU run (same parameters, buffers and
    state_dict keys, so checkpoints load into the plain model), else the model itself."""
    if world == 1 or device.type != "cuda":
        return model
    return torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)


def wrap(model: torch.nn.Module, world: int, device: torch.device) -> torch.nn.Module:
    """The model as DistributedDataParallel when there are several processes, else itself."""
    if world == 1:
        return model
    return torch.nn.parallel.DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None)


def all_sum(values: list[float], device: torch.device) -> list[float]:
    """Element-wise sum over all processes (the values themselves in a single process)."""
    if not dist.is_initialized():
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def broadcast(obj: object, src: int = 0) -> object:
    """Rank `src`'s (picklable) `obj` on every rank; the others wait for it."""
    if not dist.is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def merge_lists(items: list[str]) -> list[str]:
    """Every rank's items, each once, in rank then list order (the same list on all ranks)."""
    if not dist.is_initialized():
        return list(dict.fromkeys(items))
    lists: list = [None] * dist.get_world_size()
    dist.all_gather_object(lists, items)
    return list(dict.fromkeys(x for part in lists for x in part))


class SkipSampler(torch.utils.data.Sampler):
    """The first `skip` indices of a DistributedSampler's epoch dropped (mid-epoch resume)."""

    def __init__(self, base: torch.utils.data.DistributedSampler, skip: int):
        self.base, self.skip = base, skip

    def __iter__(self) -> Iterator[int]:
        return itertools.islice(iter(self.base), self.skip, None)

    def __len__(self) -> int:
        return max(0, len(self.base) - self.skip)


def worker_init(_: int) -> None:
    """DataLoader worker start: one intra-op thread (the training process keeps the cores)."""
    torch.set_num_threads(1)  # OpenCV is single-threaded already (pipeline/__init__.py)
