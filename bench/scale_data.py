"""Datasets at COCO-train size: `uni inspect-data` peak RSS and time, and `uni train-student`
process-tree PSS and time to the first optimiser step, at a small and a large instance count.

    .venv/bin/python bench/scale_data.py [--sizes 10000 150000] [--at 30] [--work DIR]

Data: `uni synth` COCO training persons repeated with fresh annotation and image ids to each
size (image records grow with persons, as in real files; their files repeat). Every figure comes
from a fresh process with its own dataset cache folder (core/dataset_cache.py; emptied first):
inspect-data runs twice, parsing the file and then reading the cached columns, and its peak RSS
is the kernel's maximum (wait4). train-student (tiny student, 2 DataLoader workers, no stores)
runs with the cache warm (and the large size once more with it empty, a first start); its process
tree's PSS (PSS counts pages the forked workers share once) is sampled over the 15 s before
`--at` (at least 10 s, after the first step): the trainer's median at the ends of its steps
(its activations come and go within each step) plus the workers' median. Global hooks time
the first batch reaching the model and the end of the first step.
Goals (issue 14): inspect-data peak RSS ≤ +150 MB, train-student PSS ≤ +10 %, first step ≤ 5 s
at the large size.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil

from uniskel.core import dataset_cache

DEFAULT_WORK = Path(os.environ.get("TMPDIR", "/tmp")) / "uni-bench"

# Runs the CLI with global hooks that record when the first batch reaches the model, when the
# first optimiser step ends, and the trainer's PSS at the end of every step, when its activations
# are freed (argv[1]: a folder for these files).
_TRAIN = """
import sys, time
from pathlib import Path
from torch.nn.modules.module import register_module_forward_pre_hook
from torch.optim.optimizer import register_optimizer_step_post_hook
marks = Path(sys.argv.pop(1))
seen = set()
def mark(name):
    def hook(*_):
        if name not in seen:
            seen.add(name)
            (marks / name).write_text(repr(time.time()))
    return hook
def pss(*_):
    kb = next(int(line.split()[1]) for line in open("/proc/self/smaps_rollup")
              if line.startswith("Pss:"))
    with open(marks / "steps", "a") as f:
        f.write(f"{time.time()!r} {kb}\\n")
register_module_forward_pre_hook(mark("first_batch"))
register_optimizer_step_post_hook(mark("first_step"))
register_optimizer_step_post_hook(pss)
from uniskel.cli import uni
uni(prog_name="uni")
"""


def say(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def uni_cmd() -> list[str]:
    return [str(Path(sys.executable).with_name("uni"))]


def synth_source(work: Path) -> Path:
    """A small `uni synth` output (its COCO training file is what gets repeated)."""
    src = work / "scale_synth"
    if not (src / "coco" / "train.json").is_file():
        subprocess.run([*uni_cmd(), "synth", "--out", str(src), "--persons", "200",
                        "--overwrite"], check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
    return src


def repeated_coco(src: Path, n: int, out: Path) -> str:
    """A COCO file of exactly n persons: src's training annotations cycled with new ids, each
    cycle on its own image records (new ids, the same files), so images grow with persons as in
    real data (COCO train: 150k persons, 118k image records). Returns its data spec."""
    ann = out / f"coco_{n}_v2.json"
    spec = f"coco:{ann}:{src / 'coco' / 'images'}"
    if ann.is_file():
        return spec
    raw = json.loads((src / "coco" / "train.json").read_text())
    anns = [a for a in raw["annotations"] if not a.get("iscrowd") and a.get("num_keypoints")]
    cycles = -(-n // len(anns))
    raw["images"] = [{**im, "id": c * 10**7 + im["id"]} for c in range(cycles)
                     for im in raw["images"]]
    raw["annotations"] = [{**a, "id": j + 1, "image_id": j // len(anns) * 10**7 + a["image_id"]}
                          for j, a in ((j, anns[j % len(anns)]) for j in range(n))]
    out.mkdir(parents=True, exist_ok=True)
    tmp = ann.with_suffix(".tmp")
    tmp.write_text(json.dumps(raw))
    tmp.replace(ann)
    return spec


def _env(cache: Path | None) -> dict:
    """The environment of a measured command: its own dataset cache, or none."""
    return {**os.environ, "UNI_CACHE_DIR": str(cache) if cache else "off"}


# Runs the CLI and prints its peak RSS (VmHWM) last on stderr. VmHWM starts afresh at exec,
# unlike wait4's ru_maxrss, which keeps the RSS of the forked parent (the bench process itself).
_PEAK = """
import atexit, sys
def peak():
    kb = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:"))
    print(f"VmHWM {kb}", file=sys.stderr)
atexit.register(peak)
from uniskel.cli import uni
uni(prog_name="uni")
"""


def inspect_data(spec: str, cache: Path | None) -> tuple[float, float]:
    """(peak RSS MB, seconds) of `uni inspect-data SPEC --json` in a fresh process."""
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", _PEAK, "inspect-data", spec, "--json"],
                          env=_env(cache), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          text=True)
    seconds = time.perf_counter() - t0
    if proc.returncode:
        raise RuntimeError(f"inspect-data failed: {proc.stderr[-2000:]}")
    kb = int(proc.stderr.strip().splitlines()[-1].split()[1])
    return kb / 1024, seconds


def train_student(spec: str, val_spec: str, run: Path, at: float, workers: int,
                  cache: Path | None) -> dict:
    """Process-tree memory over the 15 s before `at` s after the start (at least 10 s, all
    after the first step; none when at is 0: then the run stops at its first step), and the
    seconds to the first batch and the first optimiser step.

    The trainer's own memory swings by ~1 GB within each step (activations), so one sample is
    noise: the tree's PSS is the trainer's median at the ends of its steps in the window (its
    own hook reads it then) plus the workers' median; the workers' PSS and USS (what they own:
    copy-on-write shows there) are medians."""
    shutil.rmtree(run, ignore_errors=True)
    run.mkdir(parents=True)
    (run / "config.toml").write_text("max_steps = 100000\n")  # no CLI option; stopped at `at`
    cmd = [sys.executable, "-c", _TRAIN, str(run), "train-student", "--data", spec,
           "--val-data", val_spec, "--out", str(run / "run"), "--config", str(run / "config.toml"),
           "--model", "tiny", "--epochs", "1", "--workers", str(workers)]
    t0 = time.time()
    log = open(run / "stderr.txt", "wb")  # a file: a full pipe would stall the trainer
    proc = subprocess.Popen(cmd, env=_env(cache), stdout=subprocess.DEVNULL, stderr=log)
    p = psutil.Process(proc.pid)
    window: list[tuple[float, float, float]] = []  # (tree PSS, workers' PSS, workers' USS)
    since = None  # when the window opened: 15 s before `at`, and not before the first step
    while proc.poll() is None:
        now = time.time() - t0
        stepped = (run / "first_step").exists()
        if at and stepped and now >= at - 15 and since is None:
            since = now
        if stepped and (not at or since is not None and now >= max(at, since + 10)):
            proc.kill()  # measured: the rest of the run is not this benchmark's
            break
        if since is not None:
            try:
                kids = p.children(recursive=True)
                main, mems = p.memory_full_info(), [q.memory_full_info() for q in kids]
            except psutil.Error:  # a process exited between listing and sampling
                continue
            window.append(tuple(x / 2**20 for x in (
                main.pss, sum(m.pss for m in mems), sum(m.uss for m in mems))))
        time.sleep(0.2)
    code = proc.wait()
    log.close()
    err = (run / "stderr.txt").read_text(errors="replace")
    if code not in (0, -9):
        raise RuntimeError(f"train-student failed:\n{err[-2000:]}")
    if not (run / "first_step").exists() or (at and not window):
        raise RuntimeError(f"train-student made no step:\n{err[-2000:]}")
    w = np.array(window or [(np.nan,) * 3])
    steps = np.loadtxt(run / "steps", ndmin=2)  # (steps, 2): time, trainer PSS kB
    in_window = steps[steps[:, 0] - t0 >= (since if since is not None else np.inf)]
    trainer = float(np.median(in_window[:, 1]) / 1024) if len(in_window) else np.nan
    return {"pss_mb": trainer + float(np.median(w[:, 1])), "trainer_pss_mb": trainer,
            "workers_pss_mb": float(np.median(w[:, 1])),
            "workers_uss_mb": float(np.median(w[:, 2])),
            **{f"{k}_s": float((run / k).read_text()) - t0 for k in ("first_batch",
                                                                      "first_step")}}


def run(args: argparse.Namespace) -> str:
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    src = synth_source(work)
    val_spec = f"coco:{src / 'coco' / 'val.json'}"
    cache = work / "scale_dataset_cache"
    shutil.rmtree(cache, ignore_errors=True)  # the first inspect-data of each size parses
    rows, figs = [], {}
    for n in args.sizes:
        spec = repeated_coco(src, n, work / "scale_data")
        say(f"inspect-data, {n} instances: parsed, then from the dataset cache")
        cold = inspect_data(spec, cache)
        warm = inspect_data(spec, cache)
        tr = {}
        if not args.no_train:
            say(f"train-student, {n} instances ({args.at:.0f} s)")
            tr = train_student(spec, val_spec, work / f"scale_train_{n}", args.at,
                               args.workers, cache)
        figs[n] = cold, warm, tr
        rows.append(f"| {n:,} | {cold[0]:.0f} | {cold[1]:.1f} | {warm[0]:.0f} | {warm[1]:.1f} | "
                    + (f"{tr['pss_mb']:.0f} | {tr['trainer_pss_mb']:.0f} | "
                       f"{tr['workers_pss_mb']:.0f} / {tr['workers_uss_mb']:.0f} | "
                       f"{tr['first_batch_s']:.1f} | {tr['first_step_s']:.1f} |"
                       if tr else "– | – | – | – | – |"))
    if not args.no_train:  # the largest once more, parsing its file: a first start
        hi = max(args.sizes)
        say(f"train-student, {hi} instances, dataset cache empty")
        shutil.rmtree(cache, ignore_errors=True)
        first = train_student(repeated_coco(src, hi, work / "scale_data"), val_spec,
                              work / f"scale_train_{hi}_parse", 0, args.workers, cache)
        rows.append(f"| {hi:,} parsed | | | | | | | | {first['first_batch_s']:.1f} | "
                    f"{first['first_step_s']:.1f} |")
    lo, hi = min(args.sizes), max(args.sizes)
    lines = [f"## Datasets at scale ({lo:,} → {hi:,} instances)", "",
             f"Synthetic COCO files (`uni synth` persons repeated); the dataset cache is "
             f"used from {dataset_cache.MIN_INSTANCES:,} persons (core/dataset_cache.py). "
             f"train-student: tiny, {args.workers} DataLoader workers, no stores, dataset "
             f"cache warm; memory over {args.at - 15:.0f}–{args.at:.0f} s after the start "
             "(≥ 10 s, after the first step).", "",
             "| instances | inspect-data peak RSS MB (parse) | s | peak RSS MB (cached) | s | "
             "train-student tree PSS MB | trainer PSS MB at step ends | workers PSS / USS MB | "
             "first batch s | first step s |",
             "|---|---|---|---|---|---|---|---|---|---|", *rows, ""]
    grow = figs[hi][0][0] - figs[lo][0][0]
    lines.append(f"- inspect-data peak RSS {lo:,} → {hi:,} (parsing): **{grow:+.0f} MB** (goal "
                 f"≤ +150 MB: {'met' if grow <= 150 else '**missed**'})")
    if not args.no_train:
        a, b = figs[lo][2], figs[hi][2]
        pct = 100 * (b["pss_mb"] / a["pss_mb"] - 1)
        lines.append(f"- train-student tree PSS (trainer + {args.workers} workers): "
                     f"**{pct:+.1f} %** (goal ≤ +10 %: {'met' if pct <= 10 else '**missed**'})"
                     f"; first step at {hi:,}: **{b['first_step_s']:.1f} s** (goal ≤ 5 s: "
                     f"{'met' if b['first_step_s'] <= 5 else '**missed**'}), of which the "
                     f"step itself {b['first_step_s'] - b['first_batch_s']:.1f} s; the first "
                     f"batch comes {b['first_batch_s'] - a['first_batch_s']:+.1f} s later than at "
                     f"{lo:,}")
    return "\n".join(lines)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10000, 150000])
    ap.add_argument("--at", type=float, default=30.0,
                    help="seconds after start at which train-student's PSS is taken [30]")
    ap.add_argument("--workers", type=int, default=2, help="DataLoader workers [2]")
    ap.add_argument("--no-train", action="store_true", help="inspect-data only")
    ap.add_argument("--work", type=Path, default=DEFAULT_WORK,
                    help=f"scratch folder [{DEFAULT_WORK}]")
    print(run(ap.parse_args()))
