"""Stage two: training step time with GT only, cached KD (2 teachers) and online KD.

    .venv/bin/python bench/stage_two.py [--steps 30] [--batch-size 32] [--workers 1]

All three run student.train.train (one epoch, --steps optimiser steps, same seed, data and
augmentation) on the demo's COCO + MPII persons repeated to steps × batch size; cached KD reads
the stores cache-teachers wrote for that data, online KD runs the same two ONNX teachers on
every sample inside the DataLoader (bench/online.py). Step time = the median of per-step times
taken from train()'s own metrics (log every step), first 3 steps dropped.
Goals: cached ÷ GT-only step time ≤ 1.10; online ÷ cached ≥ 3 with teachers ≥ 4× the
student's FLOPs. Bottleneck: the DataLoader alone (batches/s, no model) against the model alone
(forward + backward + AdamW on one fixed batch, no loading), same workers and threads.
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import time
from pathlib import Path

import common
import numpy as np
import online
import torch

from uniskel.core.datasets import load_dataset
from uniskel.core.skeletons import NUM_UNIFIED
from uniskel.pipeline.cache import cache_teachers
from uniskel.pipeline.teachers import read_info
from uniskel.student.augment import Augment
from uniskel.student.config import TrainConfig, teacher_weights
from uniskel.student.data import PoseSamples, collate
from uniskel.student.losses import total_loss
from uniskel.student.models import build_model
from uniskel.student.sources import match_stores
from uniskel.student.train import train


def step_times(run: Path, batch: int, skip: int = 3) -> np.ndarray:
    """Per-step seconds from metrics.csv (log_every 1: cumulative samples/s since epoch start)."""
    with open(run / "metrics.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["samples_per_s"] and r["epoch"] == "0"]
    steps = np.array([int(r["step"]) for r in rows])
    t = steps * batch / np.array([float(r["samples_per_s"]) for r in rows])
    order = np.argsort(steps)
    return np.diff(t[order])[skip:]


def _config(specs, stores, out, args, input_wh, steps: int) -> TrainConfig:
    return TrainConfig(data=specs, stores=stores, out=str(out), model=args.student,
                       input_wh=input_wh, epochs=1, batch_size=args.batch_size,
                       workers=args.workers, seed=0, val_fraction=0.0, log_every=1,
                       max_steps=steps)


def loader_seconds(ds: PoseSamples, args, batches: int) -> float:
    """Seconds per batch of the DataLoader alone (after its first batch)."""
    loader = torch.utils.data.DataLoader(
        ds, args.batch_size, shuffle=True, num_workers=args.workers, collate_fn=collate,
        worker_init_fn=lambda _: torch.set_num_threads(1),
        generator=torch.Generator().manual_seed(0))
    it = iter(loader)
    next(it)
    t0 = time.perf_counter()
    n = 0
    for _ in range(batches):
        try:
            next(it)
        except StopIteration:
            break
        n += 1
    dt = (time.perf_counter() - t0) / max(n, 1)
    del it
    return dt


def model_seconds(batch: dict, teachers: list[str], skeletons: dict, args, steps: int) -> float:
    """Seconds per optimiser step of the model alone on one fixed batch."""
    torch.manual_seed(0)
    model = build_model(args.student, NUM_UNIFIED)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    weights, decays = teacher_weights(skeletons)
    tensors = {k: v for k, v in batch.items() if isinstance(v, torch.Tensor)}
    times = []
    for _ in range(steps + 2):
        t0 = time.perf_counter()
        loss, _ = total_loss(model(tensors["image"]), tensors, teachers, 0.3, weights, decays)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    return float(np.median(times[2:]))


def big_teachers(demo_paths: list[Path], arch: str, work: Path) -> list[Path]:
    """The demo's two teachers' interfaces (name, skeleton, input) on an `arch` student network
    with random weights: for timing online KD with teachers far bigger than the student."""
    from uniskel.evaluation.export import export_model
    from uniskel.student.models import build_model

    out = []
    for p in demo_paths:
        info = read_info(p)
        dst = work / f"{p.stem}_{arch}.onnx"
        if not dst.is_file():
            torch.manual_seed(0)
            export_model(build_model(arch), info.input_wh, f"{info.name}_{arch}", dst,
                         skeleton=info.skeleton)
        out.append(dst)
    return out


def run(args: argparse.Namespace) -> str:
    demo = common.demo_dir(args)
    n = args.steps * args.batch_size
    specs = [common.repeat_dataset(demo, kind, (n + 1) // 2, args.work / f"{kind}_x{(n + 1) // 2}")
             for kind in ("coco", "mpii")]
    paths = common.teachers(demo)
    input_wh = tuple(read_info(paths[0]).input_wh)  # the demo trains students at its input
    common.say(f"stage two: caching the teachers over {n} persons (reused when present)")
    stores = [str(s.path) for s in cache_teachers(specs, paths, args.work / f"s2_stores_{n}",
                                                 workers=1, progress=False)]
    load_before = common.load()
    threads = max(1, (os.cpu_count() or 1) - args.workers)  # student.train._cpu_threads
    big = big_teachers(paths, args.big_teacher, args.work)
    online_big = f"online KD, {args.big_teacher}-size teachers"
    plan = {"GT only": (None, args.steps), "cached KD": ("cached", args.steps),
            "online KD": (paths, args.steps),
            # ~4× slower per step than the demo teachers' online run: fewer steps suffice.
            online_big: (big, max(8, args.steps // 3))}
    runs = {}
    for name, (kd, steps) in plan.items():
        out = args.work / f"s2_run_{name.replace(' ', '_').replace(',', '')}"
        shutil.rmtree(out, ignore_errors=True)
        common.say(f"stage two: {name}, {steps} steps")
        cfg = _config(specs, stores if kd == "cached" else (
            [str(p) for p in kd] if kd else []), out, args, input_wh, steps)
        t0 = time.perf_counter()
        if isinstance(kd, list):
            with online.online_training(kd):
                train(cfg, progress=False)
        else:
            train(cfg, progress=False)
        wall = time.perf_counter() - t0
        runs[name] = (float(np.median(step_times(out, args.batch_size))), wall)

    # Bottleneck: the loader alone and the model alone, per configuration.
    datasets = [load_dataset(s) for s in specs]
    torch.set_num_threads(threads)
    parts = {}
    for name in runs:
        if name == "GT only":
            teachers, skeletons, sources = [], {}, {}
        elif name == "cached KD":
            teachers, skeletons, sources = match_stores(stores, datasets)
        else:
            teachers, skeletons, sources = online.online_match(plan[name][0])(None, datasets)
        ds = PoseSamples(datasets, input_wh, teachers, sources, Augment(), 0)
        nb = min(args.steps, 10)
        t_load = loader_seconds(ds, args, nb)
        batch = collate([ds[i] for i in range(args.batch_size)])
        t_model = model_seconds(batch, teachers, skeletons, args, nb)
        parts[name] = (t_load, t_model)
    load_after = common.load()

    t_macs = [common.onnx_macs(p) for p in paths]
    big_macs = [common.onnx_macs(p) for p in big]
    s_macs = common.torch_macs(build_model(args.student), input_wh)
    flops_ratio, big_ratio = min(t_macs) / s_macs, min(big_macs) / s_macs
    gt, cached, onl, onl_big = (runs[k][0] for k in plan)
    rows = []
    for name, (step, wall) in runs.items():
        t_load, t_model = parts[name]
        neck = "DataLoader" if t_load > t_model else "model"
        rows.append([name, f"{1 / step:.2f}", f"{1e3 * step:.0f}", f"{step / gt:.2f}",
                     f"{1e3 * t_load:.0f}", f"{1e3 * t_model:.0f}", neck, f"{wall:.0f}"])
    r_cached, r_online, r_big = cached / gt, onl / cached, onl_big / cached
    return f"""## 3. Stage two: training step time

Student `{args.student}` at {input_wh[0]}×{input_wh[1]}, batch {args.batch_size},
{args.workers} DataLoader worker(s), {threads} torch thread(s) (train()'s rule: the cores left
after the workers); {args.steps} steps per run on {n} persons (the demo's COCO + MPII persons
repeated). Teachers: {', '.join(f'{p.stem} {m / 1e6:.0f} M MACs' for p, m in zip(paths, t_macs,
strict=True))} per crop, run with the flip test (×2) as cache-teachers does; student
{s_macs / 1e6:.0f} M MACs per crop: the demo's teachers = **{flops_ratio:.1f}× the student's
MACs**. The goal below assumes teachers ≥ 4× the student, so online KD is also timed with
`{args.big_teacher}`-size teachers ({big_macs[0] / 1e6:.0f} M MACs = **{big_ratio:.1f}×**; random
weights, the demo teachers' skeletons and input: step time does not depend on the weights;
the cached run stands for both, its stores having the same K × h × w whatever the teacher).
{load_before} before, {load_after} after.

{common.table(["run", "steps/s", "ms/step (median)", "÷ GT-only", "DataLoader alone ms/batch",
               "model alone ms/step", "bottleneck", "wall s (incl. start-up, checkpoint)"],
              rows)}

- **cached KD ÷ GT-only step time = {r_cached:.2f}** (goal ≤ 1.10:
  {common.verdict(r_cached <= 1.1)}).
- **online KD ÷ cached KD step time = {r_online:.2f}** with the demo's teachers
  ({flops_ratio:.1f}× the student's MACs), **{r_big:.2f}** with {args.big_teacher}-size teachers
  ({big_ratio:.1f}×; goal ≥ 3 with teachers ≥ 4×: {common.verdict(r_big >= 3)}).

The bottleneck column compares the DataLoader alone (PoseSamples: decode, augment, GT maps,
reading + warping teacher maps or running the teachers) with the model alone; a training step
overlaps the two, so its time is close to the larger one when the cores are free.
"""


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--student", default="tiny")
    ap.add_argument("--big-teacher", default="base",
                    help="student.models arch for the bigger online teachers [base]")
    common.main(run, ap)
