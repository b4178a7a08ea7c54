"""Peak memory of stage one and stage two against dataset size (goal: flat, < +50 MB).

    .venv/bin/python bench/memory.py [--sizes 1000 20000] [--train-steps 20]

Each measurement is a fresh child process (and its children: DataLoader workers), sampled with
psutil every 50 ms: the peak RSS of the main process and the peak of the PSS summed over the
process tree (forked workers' shared pages counted once). Data: the demo's COCO
training persons repeated to each size (bench/common.repeat_dataset).
Stage one: `uni cache-teachers --workers 1` with the COCO teacher (--no-flip-test: memory does not
depend on it, and it halves the time). Stage two: student.train.train with the store it wrote,
--train-steps optimiser steps, 1 DataLoader worker.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import common
import psutil

from uniskel.pipeline.teachers import read_info
from uniskel.student.config import TrainConfig

_LOAD = """
import sys
from uniskel.core.datasets import load_dataset
load_dataset(sys.argv[1])
"""

_TRAIN = """
import json, sys
from uniskel.student.config import TrainConfig
from uniskel.student.train import train
train(TrainConfig.from_dict(json.loads(sys.argv[1])), progress=False)
"""


def peak_rss(cmd: list[str], interval: float = 0.05) -> tuple[float, float, float]:
    """Run cmd; (peak RSS of the process, peak PSS summed over its tree, seconds), in MB.
    PSS splits each shared page among the processes sharing it, so forked DataLoader workers
    count only what they really add (an RSS sum would count the shared pages twice)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    p = psutil.Process(proc.pid)
    main = tree = 0.0
    while proc.poll() is None:
        try:
            rss = p.memory_info().rss
            tree_pss = sum(q.memory_full_info().pss
                           for q in (p, *p.children(recursive=True)))
        except psutil.Error:  # exited between poll and sample
            break
        main, tree = max(main, rss), max(tree, tree_pss)
        time.sleep(interval)
    err = proc.stderr.read().decode(errors="replace")
    if proc.wait() != 0:
        raise RuntimeError(f"{' '.join(cmd[:3])} failed:\n{err[-2000:]}")
    return main / 2**20, tree / 2**20, time.perf_counter() - t0


def run(args: argparse.Namespace) -> str:
    demo = common.demo_dir(args)
    teacher = common.teachers(demo)[0]
    input_wh = read_info(teacher).input_wh
    uni = str(Path(sys.executable).with_name("uni"))
    rows, peaks = [], {}
    load_before = common.load()
    for n in args.sizes:
        spec = common.repeat_dataset(demo, "coco", n, args.work / f"coco_x{n}")
        stores = args.work / f"mem_stores_{n}"
        shutil.rmtree(stores, ignore_errors=True)
        common.say(f"memory: the annotations alone, {n} persons")
        ann = peak_rss([sys.executable, "-c", _LOAD, spec])
        common.say(f"memory: stage one over {n} persons")
        one = peak_rss([uni, "cache-teachers", "--data", spec, "--teacher", str(teacher),
                        "--out", str(stores), "--workers", "1", "--no-flip-test"])
        run_dir = args.work / f"mem_run_{n}"
        shutil.rmtree(run_dir, ignore_errors=True)
        cfg = TrainConfig(data=[spec], stores=[str(stores)], out=str(run_dir), model="tiny",
                          input_wh=input_wh, epochs=1, batch_size=32, workers=1,
                          val_fraction=0.0, max_steps=args.train_steps, log_every=1000)
        common.say(f"memory: stage two over {n} persons, {args.train_steps} steps")
        two = peak_rss([sys.executable, "-c", _TRAIN, json.dumps(cfg.to_dict())])
        peaks[n] = (one, two, ann)
        rows.append([f"{n:,}", f"{ann[0]:.0f}", f"{one[0]:.0f}", f"{one[2]:.0f}",
                     f"{two[0]:.0f}", f"{two[1]:.0f}", f"{two[2]:.0f}"])
    load_after = common.load()
    lo, hi = min(args.sizes), max(args.sizes)
    g1 = peaks[hi][0][0] - peaks[lo][0][0]
    g2 = peaks[hi][1][1] - peaks[lo][1][1]
    ga = peaks[hi][2][0] - peaks[lo][2][0]
    return f"""## 4. Memory

Peak resident memory (MB) of fresh processes, {load_before} before, {load_after} after.
Stage one = `uni cache-teachers --workers 1 --no-flip-test` with {teacher.stem} (store written to
completion); stage two = `train()` for {args.train_steps} steps from that store (tiny student,
batch 32, 1 DataLoader worker; tree = PSS of trainer + worker). "annotations" = a process that
only loads the dataset (core.datasets.load_dataset): the part of the growth that is the
annotation file itself, which both stages must hold.

{common.table(["instances", "annotations alone peak MB", "stage one peak MB", "stage one s",
               "stage two peak MB", "stage two tree MB (PSS)", "stage two s"], rows)}

- Stage one, {lo:,} → {hi:,} instances: **{g1:+.0f} MB** (goal < +50 MB: {common.verdict(g1 < 50)}),
  of which loading the annotations alone grows {ga:+.0f} MB: the job itself adds
  **{g1 - ga:+.0f} MB** ({common.verdict(g1 - ga < 50)} without the annotations).
- Stage two (trainer + worker), {lo:,} → {hi:,} instances: **{g2:+.0f} MB**
  (goal < +50 MB: {common.verdict(g2 < 50)}); without the trainer's copy of the annotations
  (forked workers share it): **{g2 - ga:+.0f} MB** ({common.verdict(g2 - ga < 50)}).
- What grows is the annotations, held as numpy columns (core/datasets.py, streamed from the
  file without parsing it whole); the stores, batches in flight and DataLoader queues do not grow
  with the dataset. Section 6 takes this to 150,000 persons.
"""


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 20000])
    ap.add_argument("--train-steps", type=int, default=20)
    common.main(run, ap)
