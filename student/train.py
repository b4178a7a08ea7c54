"""Stage two: train a student on GT and cached teacher targets (`uni train-student`).

`train(config)` takes one plain dict (keys below; `resolve_config` fills defaults and checks it)
and returns the run directory. The same code runs single-process or under
``torchrun --nproc-per-node N`` (DDP: gloo on CPU, nccl on GPU; rank 0 alone writes files).

Config keys (CLI option names with _ for -):
  data [specs], val_data [specs], stores [paths], out (run dir), model (tiny|small|base),
  input_wh [w, h] (CLI --input-size HxW), epochs, batch_size (per process), lr, weight_decay,
  warmup_steps, workers (DataLoader processes), gt_weight, kd_weight {teacher: w},
  kd_decay {teacher: none|linear}, kd_loss (kl|mse), kd_beta, seed, amp, strict,
  skip_corrupt (train without the instances whose cached targets fail verification),
  val_fraction (held-out slice of the training instances when val_data is empty; 0 = no val),
  save_every (steps between mid-epoch checkpoints; 0 = at epoch ends only), log_every (steps),
  max_steps (stop after this many optimiser steps; 0 = no limit), resume (bool).

Run directory: config.toml (the resolved config), metrics.csv, tb/ (TensorBoard),
loss_curves.png, last.pt and best.pt (lowest validation loss). A checkpoint holds model,
optimizer, scheduler, epoch, step, step_in_epoch, RNG states and config, so `resume` continues
exactly where last.pt left off (augmentations are seeded per (seed, epoch, sample)).
Checkpoints are written to a temp file, then renamed: a kill never leaves a half-written one.
Every store is verified (each chunk read once) before training: damaged cached targets are
refused, or their instances left out with skip_corrupt — never trained on.
Validation loss = the GT loss on un-augmented crops (teacher-free, so runs compare).
"""

from __future__ import annotations

import csv
import itertools
import math
import os
import random
import shutil
import sys
import time
import tomllib
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from pipeline.datasets import load_dataset
from pipeline.errors import UniError, io_reason
from pipeline.faults import fault
from pipeline.skeletons import NUM_UNIFIED
from student.data import Augment, PoseSamples, collate, match_stores
from student.losses import KD_DECAYS, KD_LOSSES, heatmap_mse, total_loss
from student.models import MODELS, build_model

DEFAULTS: dict = {
    "data": [], "val_data": [], "stores": [], "out": "", "model": "tiny", "input_wh": [192, 256],
    "epochs": 10, "batch_size": 32, "lr": 2e-3, "weight_decay": 0.01, "warmup_steps": 100,
    "workers": 2, "gt_weight": 0.3, "kd_weight": {}, "kd_decay": {}, "kd_loss": "kl",
    "kd_beta": 10.0, "seed": 0, "amp": False, "strict": False, "skip_corrupt": False,
    "val_fraction": 0.05,
    "save_every": 0, "log_every": 20, "max_steps": 0, "resume": False,
}
# The paper's weights (SPEC "The method") for the two-teacher COCO + MPII setting.
PAPER_KD = {"coco17": (0.25, "none"), "mpii16": (0.45, "linear")}
KD_TOTAL = 0.7


# --------------------------------------------------------------------------- config


def parse_input_size(text: str) -> list[int]:
    """'256x192' (H×W, as papers write it) → [w, h]."""
    try:
        h, w = (int(v) for v in str(text).lower().split("x"))
    except ValueError:
        raise UniError(f"--input-size: expected HxW such as 256x192, got {text!r}") from None
    return [w, h]


def parse_assignments(items, option: str, cast) -> dict:
    """['NAME=VALUE', …] or {NAME: VALUE} → {NAME: cast(VALUE)}."""
    if isinstance(items, dict):
        pairs = list(items.items())
    else:
        pairs = []
        for item in items:
            name, sep, value = str(item).partition("=")
            if not sep or not name:
                raise UniError(f"{option}: expected TEACHER=VALUE, got {item!r}")
            pairs.append((name, value))
    out = {}
    for name, value in pairs:
        try:
            out[str(name)] = cast(value)
        except ValueError:
            raise UniError(f"{option} {name}: bad value {value!r}") from None
    return out


def read_config_file(path: Path) -> dict:
    """A TOML file of option names (- or _) → config dict; UniError on unknown keys."""
    try:
        with open(path, "rb") as f:
            raw = tomllib.load(f)
    except FileNotFoundError:
        raise UniError(f"{path}: config file not found") from None
    except tomllib.TOMLDecodeError as e:
        raise UniError(f"{path}: not valid TOML ({e})") from None
    out = {}
    for key, value in raw.items():
        k = key.replace("-", "_")
        if k == "input_size":
            k, value = "input_wh", parse_input_size(value)
        if k not in DEFAULTS or k in ("resume",):
            raise UniError(f"{path}: unknown key {key!r}")
        out[k] = value
    return out


def resolve_config(config: dict) -> dict:
    """Defaults filled in, types checked; kd weights/decays are resolved later per teacher."""
    unknown = sorted(set(config) - set(DEFAULTS))
    if unknown:
        raise UniError(f"config: unknown key {unknown[0]!r}")
    cfg = {**DEFAULTS, **{k: v for k, v in config.items() if v is not None}}
    for key in ("data", "val_data", "stores"):
        value = cfg[key]
        cfg[key] = [str(v) for v in ([value] if isinstance(value, str | Path) else value)]
    if not cfg["data"]:
        raise UniError("config: 'data' needs at least one FORMAT:ANNOTATIONS spec")
    if not cfg["out"]:
        raise UniError("config: 'out' (the run directory) is required")
    cfg["out"] = str(cfg["out"])
    if cfg["model"] not in MODELS:
        raise UniError(f"config: unknown model {cfg['model']!r}; known: {', '.join(MODELS)}")
    if cfg["kd_loss"] not in KD_LOSSES:
        raise UniError(f"config: kd_loss must be one of {', '.join(KD_LOSSES)}")
    cfg["kd_weight"] = parse_assignments(cfg["kd_weight"], "--kd-weight", float)
    cfg["kd_decay"] = parse_assignments(cfg["kd_decay"], "--kd-decay", str)
    for name, decay in cfg["kd_decay"].items():
        if decay not in KD_DECAYS:
            raise UniError(f"--kd-decay {name}: {decay!r} is not one of {', '.join(KD_DECAYS)}")
    try:
        cfg["input_wh"] = [int(v) for v in cfg["input_wh"]]
        for key in ("epochs", "batch_size", "workers", "seed", "save_every", "log_every",
                    "max_steps", "warmup_steps"):
            cfg[key] = int(cfg[key])
        for key in ("lr", "weight_decay", "gt_weight", "kd_beta", "val_fraction"):
            cfg[key] = float(cfg[key])
    except (TypeError, ValueError) as e:
        raise UniError(f"config: bad value ({e})") from None
    if len(cfg["input_wh"]) != 2 or min(cfg["input_wh"]) < 4:
        raise UniError(f"config: input_wh must be [w, h], got {cfg['input_wh']}")
    if cfg["epochs"] < 1 or cfg["batch_size"] < 1 or cfg["workers"] < 0:
        raise UniError("config: epochs and batch_size must be ≥ 1, workers ≥ 0")
    if not 0.0 <= cfg["val_fraction"] < 1.0:
        raise UniError(f"config: val_fraction must be in [0, 1), got {cfg['val_fraction']}")
    for key in ("amp", "strict", "skip_corrupt", "resume"):
        cfg[key] = bool(cfg[key])
    return cfg


def teacher_weights(cfg: dict, skeletons: dict[str, str]) -> tuple[dict, dict]:
    """Per-teacher KD weight and decay: explicit ones, else the paper's for COCO + MPII, else
    equal weights summing to 0.7 without decay."""
    teachers = sorted(skeletons)
    for option, given in (("--kd-weight", cfg["kd_weight"]), ("--kd-decay", cfg["kd_decay"])):
        for name in given:
            if name not in skeletons:
                raise UniError(f"{option} {name}: no such teacher in the stores "
                               f"(teachers: {', '.join(teachers) or 'none'})")
    paper = (len(teachers) == 2 and sorted(skeletons.values()) == sorted(PAPER_KD))
    weights, decays = {}, {}
    for name in teachers:
        w, d = PAPER_KD[skeletons[name]] if paper else (KD_TOTAL / len(teachers), "none")
        weights[name] = cfg["kd_weight"].get(name, w)
        decays[name] = cfg["kd_decay"].get(name, d)
    return weights, decays


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {type(v).__name__} to TOML")


def to_toml(cfg: dict) -> str:
    """Flat values first, then one table per dict (tomllib reads it back to the same dict)."""
    flat = [f"{k} = {_toml_value(v)}" for k, v in cfg.items() if not isinstance(v, dict)]
    tables = []
    for k, v in cfg.items():
        if isinstance(v, dict):
            tables.append(f"\n[{k}]")
            tables += [f"{_toml_value(str(n))} = {_toml_value(x)}" for n, x in v.items()]
    return "\n".join(flat + tables) + "\n"


def _atomic_write(path: Path, write) -> None:
    tmp = path.with_name(path.name + ".tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


# --------------------------------------------------------------------------- checkpoints


def _rng_states() -> dict:
    return {"python": random.getstate(), "numpy": np.random.get_state(),
            "torch": torch.get_rng_state()}


def _set_rng_states(s: dict) -> None:
    random.setstate(s["python"])
    np.random.set_state(s["numpy"])
    torch.set_rng_state(s["torch"])


def _find_checkpoint(path: Path) -> Path:
    path = Path(path)
    if path.is_dir():
        for name in ("best.pt", "last.pt"):
            if (path / name).is_file():
                return path / name
        raise UniError(f"{path}: no best.pt or last.pt in this run directory")
    if not path.is_file():
        raise UniError(f"{path}: checkpoint not found")
    return path


def _load(path: Path) -> dict:
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # torch raises several types for a bad file
        raise UniError(f"{path}: not a readable checkpoint ({str(e)[:120]})") from None
    if not isinstance(ckpt, dict) or "model" not in ckpt or "config" not in ckpt:
        raise UniError(f"{path}: not a uni student checkpoint (no 'model' / 'config')")
    return ckpt


def load_student(path: Path) -> tuple[torch.nn.Module, dict]:
    """Run dir (best.pt, else last.pt) or .pt → (model in eval mode on CPU, config dict).

    config has at least 'model' and 'input_wh' (w, h); heatmaps come out at input / 4.
    """
    path = _find_checkpoint(path)
    ckpt = _load(path)
    cfg = ckpt["config"]
    model = build_model(cfg["model"], NUM_UNIFIED)
    model.load_state_dict(ckpt["model"])
    return model.eval(), cfg


# --------------------------------------------------------------------------- distributed


def _dist_setup() -> tuple[int, int, torch.device]:
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


def _cpu_threads(world: int, workers: int) -> int:
    """Intra-op threads per training process: the cores left after DataLoader workers.

    Oversubscribed OpenMP threads spin against each other: measured here, a step with 2 threads
    on 2 busy cores ran 10× slower than with 1.
    """
    return max(1, (os.cpu_count() or 1) // world - workers)


def _all_sum(values: list[float], device: torch.device) -> list[float]:
    if not dist.is_initialized():
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


class _SkipSampler(torch.utils.data.Sampler):
    """The first `skip` indices of a DistributedSampler's epoch dropped (mid-epoch resume)."""

    def __init__(self, base: torch.utils.data.DistributedSampler, skip: int):
        self.base, self.skip = base, skip

    def __iter__(self):
        return itertools.islice(iter(self.base), self.skip, None)

    def __len__(self) -> int:
        return max(0, len(self.base) - self.skip)


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)  # OpenCV is single-threaded already (pipeline/__init__.py)


# --------------------------------------------------------------------------- training


def _datasets(cfg: dict):
    train_sets = [load_dataset(s) for s in cfg["data"]]
    val_sets = [load_dataset(s) for s in cfg["val_data"]]
    ids = [d.dataset_id for d in train_sets]
    if len(set(ids)) != len(ids):
        raise UniError("--data: the same dataset is given twice")
    return train_sets, val_sets


def _split(train_sets, cfg) -> tuple[list, list]:
    """(train items, held-out items) as (dataset index, instance index) pairs."""
    items = [(d, i) for d, ds in enumerate(train_sets) for i in range(len(ds.instances))]
    if cfg["val_data"] or cfg["val_fraction"] == 0.0:
        return items, []
    rng = np.random.default_rng(cfg["seed"])
    n_val = max(1, round(len(items) * cfg["val_fraction"]))
    held = set(rng.permutation(len(items))[:n_val].tolist())
    return ([x for j, x in enumerate(items) if j not in held],
            [x for j, x in enumerate(items) if j in held])


def _check_stores(sources: dict, train_sets, items: list, cfg: dict, rank: int,
                  progress: bool) -> list:
    """Read every store's chunks once, before training: damaged cached targets are refused in
    one line, or (skip_corrupt) their instances are dropped from `items` and counted."""
    bad: dict[str, set[int]] = {}  # dataset id → instance ids with a damaged target
    first = None
    for (_, dataset_id), src in sources.items():
        damaged = src.reader.damaged(progress=progress)
        src.reader.close()  # DataLoader workers open their own handles
        if damaged:
            first = first or f"{src.path}: {next(iter(damaged.values()))}"
            bad.setdefault(dataset_id, set()).update(
                int(src.reader.instance_ids[r]) for r in damaged)
    if not bad:
        return items
    n = sum(len(ids) for ids in bad.values())
    if not cfg["skip_corrupt"]:
        raise UniError(f"{first}; {n} damaged instance(s) in the stores (uni inspect-store "
                       "--verify lists them; --skip-corrupt trains without them)")
    keep = [(d, i) for d, i in items if train_sets[d].instances[i].instance_id
            not in bad.get(train_sets[d].dataset_id, ())]
    if rank == 0:
        print(f"uni: skipping {len(items) - len(keep)} training instances whose cached "
              f"targets are damaged (--skip-corrupt); first: {first}", file=sys.stderr)
    return keep


def _autocast(cfg: dict, device: torch.device):
    if not cfg["amp"]:
        return torch.autocast(device.type, enabled=False)
    dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    return torch.autocast(device.type, dtype=dtype)


def _evaluate(model, loader, cfg, device) -> float | None:
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
    total, count = _all_sum([total, count], device)
    return total / count if count else None


class _Metrics:
    """metrics.csv rows (rank 0): a resumed run first drops rows past its checkpoint."""

    def __init__(self, path: Path, columns: list[str], resume_step: int | None):
        self.path, self.columns = path, columns
        rows = []
        if resume_step is not None and path.is_file():
            with open(path, newline="") as f:
                rows = [r for r in csv.DictReader(f) if int(r["step"]) <= resume_step]
        with open(path, "w", newline="") as f:
            w = csv.DictWriter(f, columns)
            w.writeheader()
            w.writerows({c: r.get(c, "") for c in columns} for r in rows)

    def add(self, row: dict) -> None:
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, self.columns).writerow(
                {c: ("" if row.get(c) is None else row.get(c)) for c in self.columns})


def plot_curves(metrics_csv: Path, out_png: Path) -> None:
    """Loss terms (train) and validation loss against step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(metrics_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return
    fig, ax = plt.subplots(figsize=(7, 4))
    for col in rows[0]:
        if col in ("total", "gt", "val_loss") or col.startswith("kd/"):
            pts = [(int(r["step"]), float(r[col])) for r in rows if r[col] not in ("", None)]
            if pts:
                xs, ys = zip(*pts, strict=True)
                ax.plot(xs, ys, marker="o" if col == "val_loss" else None, label=col)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.legend()
    fig.tight_layout()
    _atomic_write(out_png, lambda p: fig.savefig(p, format="png", dpi=100))
    plt.close(fig)


def train(config: dict, progress: bool = True) -> Path:
    """Train (or resume) a student; returns the run directory."""
    resume_ckpt = None
    if config.get("resume"):
        out = Path(config.get("out") or "")
        last = out / "last.pt"
        if not last.is_file():
            raise UniError(f"{out}: nothing to resume (no last.pt)")
        resume_ckpt = _load(last)
        saved = dict(resume_ckpt["config"])
        # The run continues as it was configured; only how it executes may change.
        saved.update(out=str(out), resume=True,
                     workers=config.get("workers", saved["workers"]))
        cfg = resolve_config(saved)
    else:
        cfg = resolve_config(config)
        out = Path(cfg["out"])
        if (out / "last.pt").exists():
            raise UniError(f"{out}: already holds a run (last.pt); use --resume or another --out")

    rank, world, device = _dist_setup()
    if device.type == "cpu":
        torch.set_num_threads(_cpu_threads(world, cfg["workers"]))
    try:
        return _train(cfg, out, resume_ckpt, rank, world, device, progress)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _train(cfg, out, resume_ckpt, rank, world, device, progress) -> Path:
    from tqdm import tqdm

    train_sets, val_sets = _datasets(cfg)
    teachers, skeletons, sources = [], {}, {}
    if cfg["stores"]:
        teachers, skeletons, sources = match_stores(cfg["stores"], train_sets, val_sets)
    kd_weights, kd_decays = teacher_weights(cfg, skeletons)
    cfg["kd_weight"], cfg["kd_decay"] = kd_weights, kd_decays
    train_items, held_items = _split(train_sets, cfg)
    train_items = _check_stores(sources, train_sets, train_items, cfg, rank,
                                progress and rank == 0)
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

    sampler = torch.utils.data.DistributedSampler(
        train_ds, num_replicas=world, rank=rank, shuffle=True, seed=cfg["seed"])
    bs = cfg["batch_size"]
    steps_per_epoch = math.ceil(len(sampler) / bs)
    total_steps = steps_per_epoch * cfg["epochs"]
    if cfg["max_steps"]:
        total_steps = min(total_steps, cfg["max_steps"])
    loader_kw = dict(num_workers=cfg["workers"], collate_fn=collate,
                     worker_init_fn=_worker_init if cfg["workers"] else None,
                     pin_memory=device.type == "cuda")
    val_loader = None
    if val_ds is not None:
        val_sampler = torch.utils.data.DistributedSampler(
            val_ds, num_replicas=world, rank=rank, shuffle=False)
        val_loader = torch.utils.data.DataLoader(val_ds, bs, sampler=val_sampler, **loader_kw)

    torch.manual_seed(cfg["seed"])
    model = build_model(cfg["model"], NUM_UNIFIED).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"])
    warm = max(1, min(cfg["warmup_steps"], total_steps // 10 or 1))

    def lr_at(step: int) -> float:  # linear warm-up, then cosine to 1 % of lr
        if step < warm:
            return (step + 1) / warm
        t = (step - warm) / max(1, total_steps - warm)
        return 0.01 + 0.99 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, t)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    scaler = torch.amp.GradScaler("cuda", enabled=cfg["amp"] and device.type == "cuda")
    epoch, step, step_in_epoch, best = 0, 0, 0, math.inf
    if resume_ckpt is not None:
        model.load_state_dict(resume_ckpt["model"])
        opt.load_state_dict(resume_ckpt["optimizer"])
        sched.load_state_dict(resume_ckpt["scheduler"])
        epoch, step = resume_ckpt["epoch"], resume_ckpt["step"]
        step_in_epoch, best = resume_ckpt["step_in_epoch"], resume_ckpt.get("best", math.inf)
        _set_rng_states(resume_ckpt["rng"])
    ddp_model = model
    if world > 1:
        ddp_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)

    writer = metrics = None
    columns = (["epoch", "step", "total", "gt"] + [f"kd/{t}" for t in teachers]
               + ["val_loss", "lr", "samples_per_s"])
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        _atomic_write(out / "config.toml", lambda p: p.write_text(to_toml(cfg)))
        metrics = _Metrics(out / "metrics.csv", columns,
                           step if resume_ckpt is not None else None)
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(out / "tb"), purge_step=step if resume_ckpt else None)

    def save(name: str, val: float | None = None) -> None:
        if rank != 0:
            return
        ckpt = {"model": model.state_dict(), "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(), "epoch": epoch, "step": step,
                "step_in_epoch": step_in_epoch, "best": best, "val_loss": val,
                "rng": _rng_states(), "config": cfg, "teachers": teachers}

        def write(p: Path) -> None:
            torch.save(ckpt, p)
            fault("checkpoint")  # test hook: written, not yet renamed over the old one

        try:
            _atomic_write(out / name, write)
        except (OSError, RuntimeError) as e:  # a full disk (torch says RuntimeError)
            free = shutil.disk_usage(out).free / 1e6
            raise UniError(f"{out / name}: cannot write the checkpoint ({io_reason(e, 120)}; "
                           f"{free:.0f} MB free); the previous one is kept") from None

    skipped: dict[str, None] = {}  # unique, in order of appearance
    sums: dict[str, float] = {}
    seen, t_log = 0, time.perf_counter()
    done = step >= total_steps
    while epoch < cfg["epochs"] and not done:
        sampler.set_epoch(epoch)
        train_ds.set_epoch(epoch)
        loader = torch.utils.data.DataLoader(
            train_ds, bs, sampler=_SkipSampler(sampler, step_in_epoch * bs), **loader_kw)
        bar = tqdm(loader, total=steps_per_epoch, initial=step_in_epoch, unit="batch",
                   desc=f"epoch {epoch + 1}/{cfg['epochs']}", file=sys.stderr,
                   disable=not progress or rank != 0, dynamic_ncols=True)
        for batch in bar:
            skipped.update(dict.fromkeys(batch["skipped"]))
            if batch["skipped"] and cfg["strict"]:
                raise UniError(f"{batch['skipped'][0]} (--strict)")
            if "image" in batch:
                tensors = {k: v.to(device, non_blocking=True) for k, v in batch.items()
                           if isinstance(v, torch.Tensor)}
                with _autocast(cfg, device):
                    pred = ddp_model(tensors["image"])
                loss, terms = total_loss(pred, tensors, teachers, cfg["gt_weight"], kd_weights,
                                         kd_decays, cfg["kd_loss"], cfg["kd_beta"],
                                         step / total_steps)
                opt.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
                n = len(tensors["image"])
                seen += n
                for k, v in terms.items():
                    sums[k] = sums.get(k, 0.0) + v * n
            sched.step()
            step += 1
            step_in_epoch += 1
            rate = seen * world / max(time.perf_counter() - t_log, 1e-9)
            if rank == 0 and "image" in batch:
                bar.set_postfix(loss=f"{terms['total']:.4f}", samples_s=f"{rate:.1f}")
            last_of_epoch = step_in_epoch >= steps_per_epoch
            done = step >= total_steps
            if rank == 0 and (step % cfg["log_every"] == 0 or last_of_epoch or done) and seen:
                row = {k: v / seen for k, v in sums.items()}
                for k, v in row.items():
                    writer.add_scalar(f"train/{k}", v, step)
                writer.add_scalar("train/lr", sched.get_last_lr()[0], step)
                writer.add_scalar("train/samples_per_s", rate, step)
                if not (last_of_epoch or done):
                    metrics.add({**row, "epoch": epoch, "step": step,
                                 "lr": sched.get_last_lr()[0], "samples_per_s": f"{rate:.2f}"})
            if last_of_epoch or done:
                break
            if cfg["save_every"] and step % cfg["save_every"] == 0:
                save("last.pt")
        bar.close()
        row = {k: v / seen for k, v in sums.items()} if seen else {}
        rate = seen * world / max(time.perf_counter() - t_log, 1e-9)
        val = _evaluate(ddp_model.module if world > 1 else model, val_loader, cfg, device)
        epoch += 1
        step_in_epoch = 0
        if rank == 0:
            metrics.add({**row, "epoch": epoch - 1, "step": step, "val_loss": val,
                         "lr": sched.get_last_lr()[0], "samples_per_s": f"{rate:.2f}"})
            if val is not None:
                writer.add_scalar("val/loss", val, step)
            writer.flush()
            plot_curves(out / "metrics.csv", out / "loss_curves.png")
        if val is not None and val < best:
            best = val
            save("best.pt", val)
        save("last.pt", val)
        sums, seen, t_log = {}, 0, time.perf_counter()
    n_skipped = int(_all_sum([float(len(skipped))], device)[0])
    if rank == 0:
        writer.close()
        if n_skipped:
            first = f"; first: {next(iter(skipped))}" if skipped else ""
            print(f"uni: skipped {n_skipped} unreadable samples{first}", file=sys.stderr)
    return out
