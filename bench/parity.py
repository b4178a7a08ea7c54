"""Parity: the same student trained with cached targets and with online teachers.

    .venv/bin/python bench/parity.py [--epochs 4] [--seeds 2]

Same seed, epochs, augmentation, data (the demo's COCO + MPII training sets) and code
(student.train.train); the only difference is where the teacher maps come from: the stores
cache-teachers wrote (quantised) or the ONNX teachers run on every sample (bench/online.py).
Both students are evaluated on the demo's COCO and MPII validation sets (goal: AP / PCKh
within 1 point). Each arm runs with several seeds: the mean over seeds is compared, and the
spread between seeds of one arm shows how much a seed alone moves the figures.
"""

from __future__ import annotations

import argparse
import shutil
import time

import common
import numpy as np
import online

from uniskel.evaluation.evaluate import evaluate
from uniskel.pipeline.cache import cache_teachers
from uniskel.pipeline.teachers import read_info
from uniskel.student.config import TrainConfig
from uniskel.student.train import train


def _score(results: dict) -> list[float]:
    """COCO AP and PCKh (both already in points, 0–100), in spec order."""
    return [float(r["value"]) for r in results.values()]


def run(args: argparse.Namespace) -> str:
    demo = common.demo_dir(args)
    paths = common.teachers(demo)
    train_specs = [common.spec(demo, f, "train") for f in ("coco", "mpii")]
    val_specs = [common.spec(demo, f, "val") for f in ("coco", "mpii")]
    common.say("parity: caching the teachers over the demo's training sets (reused if present)")
    stores = [str(s.path) for s in cache_teachers(train_specs, paths, args.work / "parity_stores",
                                                 workers=1, progress=False)]
    load_before = common.load()
    input_wh = list(read_info(paths[0]).input_wh)
    seeds = list(range(args.seeds))
    results: dict[tuple[str, int], tuple[list[float], float]] = {}
    for seed in seeds:
        for kd in ("cached", "online"):
            out = args.work / f"parity_{kd}_seed{seed}"
            shutil.rmtree(out, ignore_errors=True)
            cfg = TrainConfig(data=train_specs, stores=stores if kd == "cached" else
                              [str(p) for p in paths], out=str(out), model=args.student,
                              input_wh=input_wh, epochs=args.epochs, batch_size=32, lr=4e-3,
                              workers=1, seed=seed, val_fraction=0.0)
            common.say(f"parity: training {kd}, seed {seed}, {args.epochs} epochs")
            t0 = time.perf_counter()
            if kd == "online":
                with online.online_training(paths):
                    train(cfg, progress=False)
            else:
                train(cfg, progress=False)
            seconds = time.perf_counter() - t0
            results[kd, seed] = (_score(evaluate(val_specs, model=out, progress=False)), seconds)
    load_after = common.load()
    rows = [[kd, str(seed), f"{sc[0]:.2f}", f"{sc[1]:.2f}", f"{(sc[0] + sc[1]) / 2:.2f}",
             f"{sec:.0f}"] for (kd, seed), (sc, sec) in results.items()]

    def mean(kd: str, i: int) -> float:
        return float(np.mean([results[kd, s][0][i] for s in seeds]))

    d_ap, d_pckh = mean("online", 0) - mean("cached", 0), mean("online", 1) - mean("cached", 1)
    ok = abs(d_ap) <= 1 and abs(d_pckh) <= 1
    spread = [max(results[kd, s][0][i] for s in seeds) - min(results[kd, s][0][i] for s in seeds)
              for kd in ("cached", "online") for i in (0, 1)]
    t_c = float(np.mean([results["cached", s][1] for s in seeds]))
    t_o = float(np.mean([results["online", s][1] for s in seeds]))
    rows.append(["cached, mean", "", f"{mean('cached', 0):.2f}", f"{mean('cached', 1):.2f}",
                 f"{(mean('cached', 0) + mean('cached', 1)) / 2:.2f}", f"{t_c:.0f}"])
    rows.append(["online, mean", "", f"{mean('online', 0):.2f}", f"{mean('online', 1):.2f}",
                 f"{(mean('online', 0) + mean('online', 1)) / 2:.2f}", f"{t_o:.0f}"])
    return f"""## 5. Parity: cached vs online teachers

Student `{args.student}`, {args.epochs} epochs, batch 32, lr 4e-3, seeds {seeds} for both arms
(the same seed gives the same initialisation, sample order and augmentation), the demo's COCO +
MPII training sets, 1 DataLoader worker; evaluated on the demo's validation sets (flip test).
{load_before} before, {load_after} after.

{common.table(["targets", "seed", "COCO AP", "MPII PCKh@0.5", "average", "training s"], rows)}

- **online − cached, mean over seeds: AP {d_ap:+.2f}, PCKh {d_pckh:+.2f} points** (goal within 1
  point: {common.verdict(ok)}). For scale, the spread between seeds of one arm: AP
  {spread[0]:.2f} / {spread[2]:.2f}, PCKh {spread[1]:.2f} / {spread[3]:.2f} (cached / online).
- Training time: online ÷ cached = **{t_o / t_c:.2f}×** ({t_o:.0f} s against {t_c:.0f} s per
  run; the cached time excludes stage one, which ran once for all runs).
- Online targets are computed from the same un-augmented teacher crop as the cached ones and
  warped by the same code, so the runs differ only by the store's quantisation; a teacher run
  on the student's augmented crop instead would give other targets by design, not by caching.
"""


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--seeds", type=int, default=2, help="seeds per arm [2]")
    ap.add_argument("--student", default="tiny")
    common.main(run, ap)
