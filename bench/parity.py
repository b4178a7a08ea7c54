"""Parity: the same student trained with cached targets and with online teachers.

    .venv/bin/python bench/parity.py [--epochs 2]

Same seed, epochs, augmentation, data (the demo's COCO + MPII training sets) and code
(student.train.train); the only difference is where the teacher maps come from: the stores
cache-teachers wrote (quantised) or the ONNX teachers run on every sample (bench/online.py).
Both students are evaluated on the demo's COCO and MPII validation sets (goal: AP / PCKh
within 1 point). A third run — cached, another seed — shows how much a seed alone moves them.
"""

from __future__ import annotations

import argparse
import shutil
import time

import common
import online

from pipeline.cache import cache_teachers
from pipeline.teachers import read_info
from student.evaluate import evaluate
from student.train import train


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
    results = {}
    for name, kd, seed in (("cached", "cached", 0), ("online", "online", 0),
                           ("cached, seed 1", "cached", 1)):
        out = args.work / f"parity_{name.replace(', ', '_').replace(' ', '')}"
        shutil.rmtree(out, ignore_errors=True)
        cfg = {"data": train_specs, "stores": stores if kd == "cached" else [str(p) for p in paths],
               "out": str(out), "model": args.student, "input_wh": input_wh,
               "epochs": args.epochs, "batch_size": 32, "lr": 4e-3, "workers": 1, "seed": seed,
               "val_fraction": 0.0}
        common.say(f"parity: training {name}, {args.epochs} epochs")
        t0 = time.perf_counter()
        if kd == "online":
            with online.online_training(paths):
                train(cfg, progress=False)
        else:
            train(cfg, progress=False)
        seconds = time.perf_counter() - t0
        scores = _score(evaluate(val_specs, model=out, progress=False))
        results[name] = (scores, seconds)
    load_after = common.load()
    (c, tc), (o, to), (s, _) = results["cached"], results["online"], results["cached, seed 1"]
    rows = [[name, f"{sc[0]:.2f}", f"{sc[1]:.2f}", f"{(sc[0] + sc[1]) / 2:.2f}", f"{sec:.0f}"]
            for name, (sc, sec) in results.items()]
    d_ap, d_pckh = o[0] - c[0], o[1] - c[1]
    ok = abs(d_ap) <= 1 and abs(d_pckh) <= 1
    return f"""## 5. Parity: cached vs online teachers

Student `{args.student}`, {args.epochs} epochs, batch 32, lr 4e-3, seed 0, the demo's COCO + MPII
training sets and augmentation, 1 DataLoader worker; evaluated on the demo's validation sets
(flip test). {load_before} before, {load_after} after.

{common.table(["targets", "COCO AP", "MPII PCKh@0.5", "average", "training s"], rows)}

- **online − cached: AP {d_ap:+.2f}, PCKh {d_pckh:+.2f} points** (goal within 1 point:
  {common.verdict(ok)}); seed 1 − seed 0 (both cached): AP {s[0] - c[0]:+.2f}, PCKh
  {s[1] - c[1]:+.2f} — the noise a seed alone brings.
- Training time: online ÷ cached = **{to / tc:.2f}×** ({to:.0f} s against {tc:.0f} s; the
  cached time excludes stage one, which ran once for all runs).
- Online targets are computed from the same un-augmented teacher crop as the cached ones and
  warped by the same code, so the runs differ only by the store's quantisation; a teacher run
  on the student's augmented crop instead would give other targets by design, not by caching.
"""


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--student", default="tiny")
    common.main(run, ap)
