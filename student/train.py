"""Stage two: train a student on GT and cached teacher targets (`uni train-student`).

`train(config)` takes one plain dict (keys: student/config.py) and returns the run directory.
The same code runs single-process or under ``torchrun --nproc-per-node N`` (student/ddp.py;
rank 0 alone writes files).

Run directory: config.toml (the resolved config), metrics.csv, tb/ (TensorBoard),
loss_curves.png (student/metrics.py), last.pt and best.pt (lowest validation loss;
student/checkpoint.py). A checkpoint holds model, optimizer, position, RNG states and config, so
`resume` continues exactly where last.pt left off: augmentations are seeded per
(seed, epoch, sample) and the learning rate is a function of the step.
Every store is verified (each chunk read once) before training: damaged cached targets are
refused, or their instances left out with skip_corrupt — never trained on.
Validation loss = the GT loss on un-augmented crops (teacher-free, so runs compare).
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from pipeline.datasets import load_dataset
from pipeline.errors import UniError
from pipeline.skeletons import NUM_UNIFIED
from student import ddp
from student.checkpoint import Position, load_checkpoint, restore, save_checkpoint
from student.config import resolve_config, teacher_weights, write_config
from student.data import (
    Augment,
    PoseSamples,
    check_stores,
    collate,
    match_stores,
    split_items,
)
from student.losses import heatmap_mse, total_loss
from student.metrics import RunLog
from student.models import build_model


def lr_factor(step: int, warmup: int, total: int) -> float:
    """The learning rate at `step` as a fraction of the peak: linear warm-up over `warmup`
    steps, then cosine down to 1 % at `total`."""
    if step < warmup:
        return (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return 0.01 + 0.99 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, t)))


def _autocast(cfg: dict, device: torch.device) -> torch.autocast:
    if not cfg["amp"]:
        return torch.autocast(device.type, enabled=False)
    dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    return torch.autocast(device.type, dtype=dtype)


def _evaluate(model: torch.nn.Module, loader: DataLoader | None, cfg: dict,
              device: torch.device) -> float | None:
    """Mean GT loss over the validation set (all processes), None without one."""
    if loader is None:
        return None
    model.eval()
    total, count = 0.0, 0.0
    with torch.no_grad():
        for batch in loader:
            if "image" not in batch:
                continue
            with _autocast(cfg, device):
                pred = model(batch["image"].to(device))
            w = batch["gt_weights"].to(device)
            loss = heatmap_mse(pred, batch["gt_heatmaps"].to(device), w)
            n = float(w.sum().clamp(min=1.0))
            total += float(loss) * n
            count += n
    model.train()
    total, count = ddp.all_sum([total, count], device)
    return total / count if count else None


@dataclass
class Data:
    """What the loop reads: training samples and their sampler, validation, step counts."""

    teachers: list[str]
    train_ds: PoseSamples
    sampler: DistributedSampler
    val_loader: DataLoader | None
    loader_kw: dict
    steps_per_epoch: int
    total_steps: int


def _data(cfg: dict, rank: int, world: int, device: torch.device, progress: bool) -> Data:
    """Datasets, teacher stores (verified) and loaders; fills in cfg's per-teacher KD weights."""
    train_sets = [load_dataset(s) for s in cfg["data"]]
    val_sets = [load_dataset(s) for s in cfg["val_data"]]
    ids = [d.dataset_id for d in train_sets]
    if len(set(ids)) != len(ids):
        raise UniError("--data: the same dataset is given twice")
    teachers, skeletons, sources = [], {}, {}
    if cfg["stores"]:
        teachers, skeletons, sources = match_stores(cfg["stores"], train_sets, val_sets)
    cfg["kd_weight"], cfg["kd_decay"] = teacher_weights(cfg, skeletons)
    train_items, held_items = split_items(
        train_sets, 0.0 if cfg["val_data"] else cfg["val_fraction"], cfg["seed"])
    train_items = check_stores(sources, train_sets, train_items, cfg["skip_corrupt"],
                               progress and rank == 0, rank == 0)
    input_wh = tuple(cfg["input_wh"])
    train_ds = PoseSamples(train_sets, input_wh, teachers, sources, Augment(), cfg["seed"],
                           instances=train_items)
    if val_sets:
        val_ds = PoseSamples(val_sets, input_wh, augment=None)
    elif held_items:
        val_ds = PoseSamples(train_sets, input_wh, augment=None, instances=held_items)
    else:
        val_ds = None
    if len(train_ds) == 0:
        raise UniError("--data: no training instances")
    sampler = DistributedSampler(train_ds, num_replicas=world, rank=rank, shuffle=True,
                                 seed=cfg["seed"])
    steps_per_epoch = math.ceil(len(sampler) / cfg["batch_size"])
    total_steps = steps_per_epoch * cfg["epochs"]
    if cfg["max_steps"]:
        total_steps = min(total_steps, cfg["max_steps"])
    loader_kw = dict(num_workers=cfg["workers"], collate_fn=collate,
                     worker_init_fn=ddp.worker_init if cfg["workers"] else None,
                     pin_memory=device.type == "cuda")
    val_loader = None
    if val_ds is not None:
        val_sampler = DistributedSampler(val_ds, num_replicas=world, rank=rank, shuffle=False)
        val_loader = DataLoader(val_ds, cfg["batch_size"], sampler=val_sampler, **loader_kw)
    return Data(teachers, train_ds, sampler, val_loader, loader_kw, steps_per_epoch,
                total_steps)


def _run_config(config: dict) -> tuple[dict, dict | None]:
    """(resolved config, the checkpoint to resume or None). A resumed run continues as it was
    configured; only how it executes (workers) may change."""
    if not config.get("resume"):
        cfg = resolve_config(config)
        if (Path(cfg["out"]) / "last.pt").exists():
            raise UniError(f"{cfg['out']}: already holds a run (last.pt); use --resume or "
                           "another --out")
        return cfg, None
    out = Path(config.get("out") or "")
    if not (out / "last.pt").is_file():
        raise UniError(f"{out}: nothing to resume (no last.pt)")
    ckpt = load_checkpoint(out / "last.pt")
    saved = dict(ckpt["config"])
    saved.update(out=str(out), resume=True, workers=config.get("workers", saved["workers"]))
    return resolve_config(saved), ckpt


def train(config: dict, progress: bool = True) -> Path:
    """Train (or resume) a student; returns the run directory."""
    cfg, resume = _run_config(config)
    rank, world, device = ddp.setup()
    if device.type == "cpu":
        torch.set_num_threads(ddp.cpu_threads(world, cfg["workers"]))
    try:
        return _train(cfg, resume, rank, world, device, progress)
    finally:
        ddp.teardown()


def _train(cfg: dict, resume: dict | None, rank: int, world: int, device: torch.device,
           progress: bool) -> Path:
    d = _data(cfg, rank, world, device, progress)
    out, bs, teachers, total = Path(cfg["out"]), cfg["batch_size"], d.teachers, d.total_steps
    torch.manual_seed(cfg["seed"])
    model = build_model(cfg["model"], NUM_UNIFIED).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"])
    scaler = torch.amp.GradScaler("cuda", enabled=cfg["amp"] and device.type == "cuda")
    warmup = max(1, min(cfg["warmup_steps"], total // 10 or 1))
    pos = restore(resume, model, opt) if resume is not None else Position()
    net = ddp.wrap(model, world, device)
    log = None
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        write_config(out / "config.toml", cfg)
        log = RunLog(out, teachers, pos.step if resume is not None else None)
    skipped: dict[str, None] = {}  # unreadable samples: unique, in order of appearance
    while pos.epoch < cfg["epochs"] and pos.step < total:
        d.sampler.set_epoch(pos.epoch)
        d.train_ds.set_epoch(pos.epoch)
        loader = DataLoader(d.train_ds, bs, **d.loader_kw,
                            sampler=ddp.SkipSampler(d.sampler, pos.step_in_epoch * bs))
        bar = tqdm(loader, total=d.steps_per_epoch, initial=pos.step_in_epoch, unit="batch",
                   desc=f"epoch {pos.epoch + 1}/{cfg['epochs']}", file=sys.stderr,
                   disable=not progress or rank != 0, dynamic_ncols=True)
        sums: dict[str, float] = {}  # loss term → sum over this epoch's samples
        seen, t0 = 0, time.perf_counter()
        for batch in bar:
            skipped.update(dict.fromkeys(batch["skipped"]))
            if batch["skipped"] and cfg["strict"]:
                raise UniError(f"{batch['skipped'][0]} (--strict)")
            if "image" in batch:
                x = {k: v.to(device, non_blocking=True) for k, v in batch.items()
                     if isinstance(v, torch.Tensor)}
                for group in opt.param_groups:
                    group["lr"] = cfg["lr"] * lr_factor(pos.step, warmup, total)
                with _autocast(cfg, device):
                    pred = net(x["image"])
                loss, terms = total_loss(pred, x, teachers, cfg["gt_weight"], cfg["kd_weight"],
                                         cfg["kd_decay"], cfg["kd_loss"], cfg["kd_beta"],
                                         pos.step / total)
                opt.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
                n = len(x["image"])
                seen += n
                for k, v in terms.items():
                    sums[k] = sums.get(k, 0.0) + v * n
                rate = seen * world / max(time.perf_counter() - t0, 1e-9)
                bar.set_postfix(loss=f"{terms['total']:.4f}", samples_s=f"{rate:.1f}")
            pos.step += 1
            pos.step_in_epoch += 1
            end = pos.step_in_epoch >= d.steps_per_epoch or pos.step >= total
            if log is not None and seen and (pos.step % cfg["log_every"] == 0 or end):
                means = {k: v / seen for k, v in sums.items()}
                lr = cfg["lr"] * lr_factor(pos.step, warmup, total)
                rate = seen * world / max(time.perf_counter() - t0, 1e-9)
                log.scalars(pos.step, means, lr, rate)
                if not end:  # the epoch's last row comes with its validation loss
                    log.row(pos.epoch, pos.step, means, lr, rate)
            if end:
                break
            if rank == 0 and cfg["save_every"] and pos.step % cfg["save_every"] == 0:
                save_checkpoint(out / "last.pt", model, opt, pos, cfg, teachers)
        bar.close()
        rate = seen * world / max(time.perf_counter() - t0, 1e-9)
        lr = cfg["lr"] * lr_factor(pos.step, warmup, total)
        val = _evaluate(model, d.val_loader, cfg, device)
        pos.epoch += 1
        pos.step_in_epoch = 0
        if log is not None:
            means = {k: v / seen for k, v in sums.items()} if seen else {}
            log.row(pos.epoch - 1, pos.step, means, lr, rate, val)
            log.epoch_end(pos.step, val)
        if val is not None and val < pos.best:
            pos.best = val
            if rank == 0:
                save_checkpoint(out / "best.pt", model, opt, pos, cfg, teachers, val)
        if rank == 0:
            save_checkpoint(out / "last.pt", model, opt, pos, cfg, teachers, val)
    n_skipped = int(ddp.all_sum([float(len(skipped))], device)[0])
    if log is not None:
        log.close()
        if n_skipped:
            first = f"; first: {next(iter(skipped))}" if skipped else ""
            print(f"uni: skipped {n_skipped} unreadable samples{first}", file=sys.stderr)
    return out
