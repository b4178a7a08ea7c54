"""Stage two: train a student on GT and cached teacher targets (`uni train-student`).

`train(cfg)` takes a TrainConfig (student/config.py) and returns the run directory. The same
code runs single-process or under ``torchrun --nproc-per-node N`` (student/ddp.py; rank 0
alone writes files). The loop: `_epoch` (one screen), its step `_step`, then `_epoch_end`.

Run directory: config.toml (the resolved config, itself a --config file), metrics.csv, tb/
(TensorBoard), loss_curves.png (student/runlog.py), last.pt and best.pt (lowest validation
loss; student/checkpoint.py). last.pt is written at every epoch end, and mid-epoch every
save_every steps and every save_every_s seconds (a kill loses at most that much work).
`resume` continues exactly where last.pt left off, mid-epoch too: an epoch's sample order is a
function of (seed, epoch) and restarts at the checkpoint's step (ddp.SkipSampler),
augmentations are seeded per (seed, epoch, sample), the learning rate is a function of the step
(a LambdaLR whose state the checkpoint carries), loaders draw their worker seeds from their own
generators (never the global RNG), and the checkpoint carries the RNG states and the epoch's
running loss sums. The clock decides only when to save, never what is trained; under DDP rank
0's clock decides for every rank.
Every store is checked before training, by rank 0 while the others wait for its answer (a store
verified before and unchanged since is trusted): damaged cached targets are refused, or their
instances left out with skip_corrupt — never trained on; a chunk that fails later, while
training, is refused or skipped the same way. A non-finite loss stops the run in one line, the
last checkpoint kept. Validation loss = the GT loss on un-augmented crops (teacher-free, so
runs compare).
The student's head has one channel per keypoint of the run's unified skeleton (chosen in
student/run_data.py, which also assembles the data), recorded whole in its checkpoints.
"""
from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch.optim.lr_scheduler import LambdaLR
from torch.utils.data import DataLoader
from tqdm import tqdm

from uniskel.core.errors import UniError
from uniskel.core.killpoints import kill_point
from uniskel.student import ddp
from uniskel.student.checkpoint import (
    Position,
    TrainState,
    load_checkpoint,
    restore,
    save_checkpoint,
    seed_rngs,
)
from uniskel.student.config import TrainConfig, read_config_file, write_config
from uniskel.student.init import init_weights
from uniskel.student.losses import total_loss, validation_terms
from uniskel.student.models import build_model
from uniskel.student.optim import EMA, lr_factor, param_groups, rtmpose_lr_factor
from uniskel.student.rtmpose import RTMPose
from uniskel.student.run_data import Data, build_data, loader_generator, say
from uniskel.student.runlog import RunLog


def _autocast(cfg: TrainConfig, device: torch.device) -> torch.autocast:
    if not cfg.amp:
        return torch.autocast(device.type, enabled=False)
    dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    return torch.autocast(device.type, dtype=dtype)


def _evaluate(model: torch.nn.Module, loader: DataLoader | None, cfg: TrainConfig,
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
            x = {k: v.to(device) for k, v in batch.items() if isinstance(v, torch.Tensor)}
            with _autocast(cfg, device):
                pred = model(x["image"])
            weighted, n = validation_terms(pred, x)
            total += float(weighted)
            count += float(n)
    model.train()
    total, count = ddp.all_sum([total, count], device)
    return total / count if count else None


def _run_config(cfg: TrainConfig) -> tuple[TrainConfig, dict | None]:
    """(the run's config, the checkpoint to resume or None). A resumed run continues as it was
    configured (its last.pt, else its config.toml); only how it executes (cfg's workers and
    threads) may change. Resuming a run that has no checkpoint yet starts it, saying so."""
    out = Path(cfg.out)
    if not cfg.resume:
        if (out / "last.pt").exists():
            raise UniError(f"{cfg.out}: already holds a run (last.pt); use --resume or "
                           "another --out")
        return cfg, None
    ckpt = None
    if (out / "last.pt").is_file():
        ckpt = load_checkpoint(out / "last.pt")
        saved = TrainConfig.from_dict(ckpt["config"], f"{out / 'last.pt'}: config")
    elif (out / "config.toml").is_file():
        saved = TrainConfig.from_dict(read_config_file(out / "config.toml"))
        say(f"uni: {out}: no checkpoint yet; starting the run as its config.toml says")
    elif cfg.data:
        saved = cfg
        say(f"uni: {out}: no checkpoint yet; starting the run")
    else:
        raise UniError(f"{out}: nothing to resume (no last.pt or config.toml) and no --data "
                       "to start the run with")
    return replace(saved, out=cfg.out, resume=True, workers=cfg.workers,
                   threads=cfg.threads), ckpt


def train(config: TrainConfig, progress: bool = True) -> Path:
    """Train (or resume) a student as `config` says; returns the run directory."""
    cfg, resume = _run_config(config)
    rank, world, device = ddp.setup()
    if device.type == "cpu":
        torch.set_num_threads(cfg.threads or ddp.cpu_threads(world, cfg.workers))
    try:
        return _train(cfg, resume, rank, world, device, progress)
    finally:
        ddp.teardown()


@dataclass
class Run:
    """A run's moving parts, shared by the loop's functions."""

    cfg: TrainConfig  # its per-teacher KD weights filled in (run_data.build_data)
    d: Data
    state: TrainState  # model, optimiser, LR schedule, grad scaler
    net: torch.nn.Module  # the model, DDP-wrapped under torchrun
    pos: Position
    log: RunLog | None  # rank 0's
    rank: int
    device: torch.device
    saved_at: float  # time.monotonic() of the last checkpoint (rank 0's clock decides)
    saved_step: int | None  # the step last.pt holds, None before the first
    first_clip: list[torch.nn.Parameter] | None = None  # clipped to norm 1 at step one

    def lr(self) -> float:
        """The learning rate of the step at r.pos.step (the schedule's current one)."""
        return self.state.sched.get_last_lr()[0]


def _train(cfg: TrainConfig, resume: dict | None, rank: int, world: int, device: torch.device,
           progress: bool) -> Path:
    cfg, d = build_data(cfg, rank, world, device, progress, resume)
    out = Path(cfg.out)
    seed_rngs(cfg.seed)
    model = build_model(cfg.model, d.unified.num_keypoints, cfg.input_wh)
    first_clip = None
    if cfg.init and resume is None:  # a resume restores its own weights
        line = init_weights(Path(cfg.init), model, cfg.model, d.unified,
                            cfg.init_skeleton or None)
        if rank == 0:
            say(f"uni: --init {line}")
        if isinstance(model, RTMPose):
            # Fresh keypoint rows start at zero (the mapped keypoints then predict exactly what
            # the checkpoint did), where ScaleNorm's x / max(|x|, eps) gives them a ~1e6
            # gradient: Adam's second moment would then stall those rows for ~1/(1-β2)·ln 1e12
            # steps. Step one clips that layer's gradient norm to 1 (student/init.py).
            first_clip = list(model.head.final_layer.parameters())
    model = model.to(device)
    if cfg.sync_bn:
        model = ddp.sync_batchnorm(model, world, device)
    params = (model.parameters() if cfg.decay_norm_bias
              else param_groups(model, cfg.weight_decay))
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    warmup = max(1, min(cfg.warmup_steps, d.total_steps // 10 or 1))
    if cfg.schedule == "rtmpose":
        sched = LambdaLR(opt, lambda step: rtmpose_lr_factor(
            step, warmup, d.total_steps, d.steps_per_epoch, cfg.epochs))
    else:
        sched = LambdaLR(opt, lambda step: lr_factor(step, warmup, d.total_steps))
    scaler = torch.amp.GradScaler("cuda", enabled=cfg.amp and device.type == "cuda")
    ema = EMA(model) if cfg.ema else None
    state = TrainState(model, opt, sched, scaler, ema)
    pos = restore(resume, state) if resume is not None else Position()
    log = None
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        write_config(out / "config.toml", cfg)
        log = RunLog(out, d.teachers, pos.step if cfg.resume else None)
    r = Run(cfg, d, state, ddp.wrap(model, world, device), pos, log, rank, device,
            time.monotonic(), pos.step if resume is not None else None, first_clip)
    try:
        while pos.epoch < cfg.epochs and pos.step < d.total_steps:
            rate = _epoch(r, world, progress)
            _epoch_end(r, rate)
        pos.skipped = ddp.merge_lists(pos.skipped)
    finally:
        if log is not None:
            log.close()
    if rank == 0 and pos.skipped:
        print(f"uni: skipped {len(pos.skipped)} unreadable samples; first: {pos.skipped[0]}",
              file=sys.stderr)
    return out


def _epoch(r: Run, world: int, progress: bool) -> float:
    """Train from r.pos to the end of its epoch (or of the run); → samples/s (all ranks)."""
    cfg, d, pos, bs = r.cfg, r.d, r.pos, r.cfg.batch_size
    d.sampler.set_epoch(pos.epoch)
    d.train_ds.set_epoch(pos.epoch)
    loader = DataLoader(d.train_ds, bs, **d.loader_kw, generator=loader_generator(cfg.seed,
                        pos.epoch), sampler=ddp.SkipSampler(d.sampler, pos.step_in_epoch * bs))
    bar = tqdm(loader, total=d.steps_per_epoch, initial=pos.step_in_epoch, unit="batch",
               desc=f"epoch {pos.epoch + 1}/{cfg.epochs}", file=sys.stderr,
               disable=not progress or r.rank != 0, dynamic_ncols=True)
    seen0, t0, rate = pos.seen, time.perf_counter(), 0.0
    for batch in bar:
        _unreadable(r, batch)
        terms, due = _step(r, batch)
        pos.step += 1
        pos.step_in_epoch += 1
        r.state.sched.step()  # also after an all-unreadable batch: the rate follows pos.step
        end = pos.step_in_epoch >= d.steps_per_epoch or pos.step >= d.total_steps
        rate = (pos.seen - seen0) * world / max(time.perf_counter() - t0, 1e-9)
        if terms is not None:
            bar.set_postfix(loss=f"{terms['total']:.4f}", samples_s=f"{rate:.1f}")
        if r.log is not None and pos.seen and (pos.step % cfg.log_every == 0 or end):
            means = {k: v / pos.seen for k, v in pos.sums.items()}
            r.log.scalars(pos.step, means, r.lr(), rate)
            if not end:  # the epoch's last row comes with its validation loss
                r.log.row(pos.epoch, pos.step, means, r.lr(), rate)
        kill_point("train-step")  # test hook: a step taken, not yet checkpointed
        if end:
            break
        if due or (cfg.save_every and pos.step % cfg.save_every == 0):
            _save(r)
    bar.close()
    return rate


def _unreadable(r: Run, batch: dict) -> None:
    """Note a batch's unreadable images (fatal with strict) and cached targets damaged since
    the stores were checked (fatal unless skip_corrupt)."""
    if batch["skipped"] and r.cfg.strict:
        raise UniError(f"{batch['skipped'][0]} (--strict)")
    if batch["damaged"] and not r.cfg.skip_corrupt:
        raise UniError(f"{batch['damaged'][0]} (found while training; --skip-corrupt trains "
                       "without it)")
    for line in batch["skipped"] + batch["damaged"]:
        if line not in r.pos.skipped:
            r.pos.skipped.append(line)


def _step(r: Run, batch: dict) -> tuple[dict[str, float] | None, bool]:
    """One optimiser step (none when every sample of the batch was unreadable) → (its loss
    terms or None, whether a checkpoint is due by time). All ranks agree on both decisions:
    stopping on a non-finite loss and saving."""
    cfg, pos = r.cfg, r.pos
    loss, terms = None, None
    if "image" in batch:
        x = {k: v.to(r.device, non_blocking=True) for k, v in batch.items()
             if isinstance(v, torch.Tensor)}
        with _autocast(cfg, r.device):
            pred = r.net(x["image"])
        loss, terms = total_loss(pred, x, r.d.teachers, cfg.gt_weight, cfg.kd_weight,
                                 cfg.kd_decay, cfg.kd_loss, cfg.kd_beta,
                                 pos.step / r.d.total_steps, cfg.input_wh)
    bad = terms is not None and not math.isfinite(terms["total"])
    due = (r.rank == 0 and cfg.save_every_s > 0
           and time.monotonic() - r.saved_at >= cfg.save_every_s)
    bad, due = (v > 0 for v in ddp.all_sum([float(bad), float(due)], r.device))
    if bad:  # before the update: the weights stay those of the last good step
        what = ", ".join(f"{k} {v}" for k, v in (terms or {}).items() if not math.isfinite(v))
        kept = (f"{Path(cfg.out) / 'last.pt'} (step {r.saved_step}) is the last good "
                "checkpoint" if r.saved_step is not None else "no checkpoint was written")
        raise UniError(f"step {pos.step + 1}: the training loss is not finite "
                       f"({what or 'on another rank'}); stopped, {kept}")
    if loss is not None:
        opt, scaler = r.state.opt, r.state.scaler
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if cfg.clip_grad > 0 or (r.first_clip and pos.step == 0):
            scaler.unscale_(opt)
        if r.first_clip and pos.step == 0:
            torch.nn.utils.clip_grad_norm_(r.first_clip, 1.0)
        if cfg.clip_grad > 0:
            torch.nn.utils.clip_grad_norm_(r.state.model.parameters(), cfg.clip_grad)
        scaler.step(opt)
        scaler.update()
        if r.state.ema is not None:
            r.state.ema.update(r.state.model, pos.step + 1)
        n = len(x["image"])
        pos.seen += n
        for k, v in terms.items():
            pos.sums[k] = pos.sums.get(k, 0.0) + v * n
    return terms, due


def _epoch_end(r: Run, rate: float) -> None:
    """Validation, the epoch's metrics row, best.pt when validation improved, last.pt."""
    pos = r.pos
    # With EMA, the averaged weights are the run's model (validated, saved as best, exported).
    model = r.state.ema.module if r.state.ema is not None else r.state.model
    val = _evaluate(model, r.d.val_loader, r.cfg, r.device)
    if r.log is not None:
        means = {k: v / pos.seen for k, v in pos.sums.items()} if pos.seen else {}
        r.log.row(pos.epoch, pos.step, means, r.lr(), rate, val)
        r.log.epoch_end(pos.step, val)
    pos.epoch += 1
    pos.step_in_epoch, pos.sums, pos.seen = 0, {}, 0
    best = val is not None and val < pos.best
    if best:
        pos.best = val
    _save(r, val, best)


def _save(r: Run, val: float | None = None, best: bool = False) -> None:
    """Checkpoint the run as it stands: last.pt (and best.pt). Every rank calls it, so the
    unreadable samples all ranks met go into it; rank 0 writes."""
    r.pos.skipped = ddp.merge_lists(r.pos.skipped)
    if r.rank == 0:
        out = Path(r.cfg.out)
        for name in ("best.pt", "last.pt") if best else ("last.pt",):
            save_checkpoint(out / name, r.state, r.pos, r.cfg, r.d.teachers, r.d.unified, val)
    r.saved_at, r.saved_step = time.monotonic(), r.pos.step
