"""Stage two at COCO-train size: `uni train-student`'s process-tree memory and its first step,
at a small and a large person count, without and with one teacher store.

    .venv/bin/python bench/scale_train.py [--sizes 10000 150000] [--at 30] [--workers 2]
                                          [--work DIR]

Data: bench/scale_data.py's repeated synthetic COCO files. The store: one teacher-like
17×64×48 map per person (bench/store_scale.py's maps, cycled) with each person's crop affine,
written by uni's own writer as stage one writes it (EncodedRows batches of 32, then finalize).
Small activations, so that the data structures dominate (issue 24): `--model tiny --batch-size 4
--input-size 64x48`, 2 DataLoader workers, the dataset cache warm. Each configuration starts
twice: the first start of a fresh store (just written) and the second start; without a store
the second start only, and at the large size once more with the dataset cache empty (parsed).
Memory over the 15 s before `--at` (at least 10 s, after the first step), second start: the
trainer's median at the ends of its steps (its activations come and go within each step) plus
the workers' median, as PSS (pages the forked workers share count once) and RSS (counted in
every process). Global hooks time the first optimiser step's end.
Goals (issue 24): ≤ +10 % tree PSS from the small to the large size, with and without a store;
first step ≤ 5 s on the first and the second start of a fresh store.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import scale_data
from store_scale import SHAPE, teacher_like_maps

from uniskel.core.datasets import load_dataset
from uniskel.core.geometry import bbox_to_center_size, compose, crop_affine, crop_to_heatmap
from uniskel.stores.create import create_store
from uniskel.stores.encode import encode_rows
from uniskel.stores.schema import StoreMeta
from uniskel.stores.verify import record_path
from uniskel.stores.writer import StoreWriter

SMALL = ["--model", "tiny", "--batch-size", "4", "--input-size", "64x48"]
TEACHER_WH = (192, 256)  # the store's teacher input (W, H): 17×64×48 maps
BATCH = 32

# Runs the CLI with global hooks that record when the first batch reaches the model, when the
# first optimiser step ends, and the trainer's PSS and RSS at the end of every step, when its
# activations are freed (argv[1]: a folder for these files).
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
def memory(*_):
    kb = {l.split(":")[0]: int(l.split()[1]) for l in open("/proc/self/smaps_rollup")
          if l.startswith(("Pss:", "Rss:"))}
    with open(marks / "steps", "a") as f:
        f.write(f"{time.time()!r} {kb['Pss']} {kb['Rss']}\\n")
register_module_forward_pre_hook(mark("first_batch"))
register_optimizer_step_post_hook(mark("first_step"))
register_optimizer_step_post_hook(memory)
from uniskel.cli import uni
uni(prog_name="uni")
"""


def fake_store(spec: str, path: Path, cache: Path) -> Path:
    """A complete store for `spec` written as stage one writes one: teacher-like maps cycled,
    each person's own crop affine (image → teacher grid), batches of EncodedRows, finalize."""
    before = os.environ.get("UNI_CACHE_DIR")
    os.environ["UNI_CACHE_DIR"] = str(cache)  # the runs' own dataset cache
    try:
        ds = load_dataset(spec)
    finally:
        if before is None:
            del os.environ["UNI_CACHE_DIR"]
        else:
            os.environ["UNI_CACHE_DIR"] = before
    for stale in (path, record_path(path)):
        stale.unlink(missing_ok=True)
    k, h, w = SHAPE
    meta = StoreMeta(teacher_name="bench_teacher", teacher_sha256="0" * 64,
                     teacher_metadata={"head": "heatmap"}, skeleton="coco17",
                     dataset_id=ds.dataset_id, dataset_spec=str(ds.spec), input_wh=TEACHER_WH,
                     padding=1.25, flip_test=True, heatmap_shape=SHAPE)
    create_store(path, meta, ds.instance_ids)
    to_grid = crop_to_heatmap(TEACHER_WH, (w, h))
    affines = np.stack([compose(to_grid, crop_affine(
        *bbox_to_center_size(b, TEACHER_WH[0] / TEACHER_WH[1], 1.25), TEACHER_WH))
        for b in ds.bboxes])
    maps = teacher_like_maps(8 * BATCH, SHAPE)
    encoded = [encode_rows(maps[i:i + BATCH]) for i in range(0, len(maps), BATCH)]
    n = len(ds.instance_ids)
    with StoreWriter(path) as writer:
        for j, start in enumerate(range(0, n, BATCH)):
            rows = np.arange(start, min(start + BATCH, n))
            enc = encoded[j % len(encoded)] if len(rows) == BATCH else encode_rows(
                maps[:len(rows)])
            writer.write_encoded(rows, enc, affines[rows])
        writer.finalize()
    return path


def train_student(spec: str, val_spec: str, run: Path, at: float, workers: int,
                  cache: Path | None, extra: list[str] = ()) -> dict:
    """Process-tree PSS and RSS over the 15 s before `at` s after the start (at least 10 s, all
    after the first step; none when at is 0: then the run stops at its first step), and the
    seconds to the first batch and the first optimiser step.

    The trainer's own memory swings within each step (activations), so one sample is noise:
    each tree figure is the trainer's median at the ends of its steps in the window (its own
    hook reads it then) plus the workers' median; the workers' USS (what they own:
    copy-on-write shows there) is a median too."""
    shutil.rmtree(run, ignore_errors=True)
    run.mkdir(parents=True)
    (run / "config.toml").write_text("max_steps = 100000\n")  # no CLI option; stopped at `at`
    cmd = [sys.executable, "-c", _TRAIN, str(run), "train-student", "--data", spec,
           "--val-data", val_spec, "--out", str(run / "run"), "--config", str(run / "config.toml"),
           "--epochs", "1", "--workers", str(workers), *extra]
    t0 = time.time()
    log = open(run / "stderr.txt", "wb")  # a file: a full pipe would stall the trainer
    proc = subprocess.Popen(cmd, env=scale_data._env(cache), stdout=subprocess.DEVNULL,
                            stderr=log)
    p = psutil.Process(proc.pid)
    window: list[tuple[float, float, float]] = []  # workers' (PSS, RSS, USS)
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
                mems = [q.memory_full_info() for q in p.children(recursive=True)]
            except psutil.Error:  # a process exited between listing and sampling
                continue
            window.append(tuple(sum(getattr(m, f) for m in mems) / 2**20
                                for f in ("pss", "rss", "uss")))
        time.sleep(0.2)
    code = proc.wait()
    log.close()
    err = (run / "stderr.txt").read_text(errors="replace")
    if code not in (0, -9):
        raise RuntimeError(f"train-student failed:\n{err[-2000:]}")
    if not (run / "first_step").exists() or (at and not window):
        raise RuntimeError(f"train-student made no step:\n{err[-2000:]}")
    w = np.median(np.array(window or [(np.nan,) * 3]), axis=0)
    steps = (np.loadtxt(run / "steps", ndmin=2) if (run / "steps").exists()  # at 0: maybe not
             else np.zeros((0, 3)))  # (steps, 3): time, trainer PSS, RSS kB
    in_window = steps[steps[:, 0] - t0 >= (since if since is not None else np.inf)]
    trainer = (np.median(in_window[:, 1:], axis=0) / 1024 if len(in_window)
               else np.full(2, np.nan))
    marks = {f"{k}_s": float((run / k).read_text()) - t0 for k in ("first_batch", "first_step")}
    return {"pss_mb": float(trainer[0] + w[0]), "rss_mb": float(trainer[1] + w[1]),
            "trainer_pss_mb": float(trainer[0]), "workers_pss_mb": float(w[0]),
            "workers_uss_mb": float(w[2]), **marks}


def measure(args: argparse.Namespace) -> dict:
    """{(size, store?): {"first": first start, "second": second start}} and the parsed run."""
    work = args.work
    src = scale_data.synth_source(work)
    val_spec = f"coco:{src / 'coco' / 'val.json'}"
    cache = work / "scale_dataset_cache"
    out: dict = {}
    for n in args.sizes:
        spec = scale_data.repeated_coco(src, n, work / "scale_data")
        scale_data.say(f"train-student, {n} persons, no store ({args.at:.0f} s)")
        scale_data.inspect_data(spec, cache)  # the dataset cache warm, as a second start has it
        out[n, False] = {"second": train_student(spec, val_spec, work / f"scale_train_{n}",
                                                 args.at, args.workers, cache, SMALL)}
        scale_data.say(f"writing a {n}-person store")
        store = fake_store(spec, work / f"scale_store_{n}" / "bench_teacher.h5", cache)
        with_store = [*SMALL, "--stores", str(store)]
        scale_data.say(f"train-student, {n} persons, the fresh store: first and second start")
        first = train_student(spec, val_spec, work / f"scale_train_{n}_s1", 0, args.workers,
                              cache, with_store)
        second = train_student(spec, val_spec, work / f"scale_train_{n}_s2", args.at,
                               args.workers, cache, with_store)
        out[n, True] = {"first": first, "second": second}
        shutil.rmtree(store.parent, ignore_errors=True)  # GBs at the large size
    hi = max(args.sizes)
    scale_data.say(f"train-student, {hi} persons, dataset cache empty")
    shutil.rmtree(cache, ignore_errors=True)
    out["parsed"] = train_student(scale_data.repeated_coco(src, hi, work / "scale_data"),
                                  val_spec, work / f"scale_train_{hi}_parse", 0, args.workers,
                                  cache, SMALL)
    return out


def run(args: argparse.Namespace) -> str:
    """The markdown table and the goals' lines."""
    args.work.mkdir(parents=True, exist_ok=True)
    figs = measure(args)
    lo, hi = min(args.sizes), max(args.sizes)
    rows = []
    for n in args.sizes:
        for store in (False, True):
            f = figs[n, store]
            s, first = f["second"], f.get("first")
            first_s = f"{first['first_step_s']:.1f}" if first else "–"
            rows.append(f"| {n:,} | {'one' if store else 'none'} | {s['pss_mb']:.0f} | "
                        f"{s['rss_mb']:.0f} | {s['trainer_pss_mb']:.0f} | "
                        f"{s['workers_pss_mb']:.0f} / {s['workers_uss_mb']:.0f} | {first_s} | "
                        f"{s['first_step_s']:.1f} |")
    lines = [f"### Stage two at scale ({lo:,} → {hi:,} persons)", "",
             f"`uni train-student {' '.join(SMALL)}`, {args.workers} DataLoader workers, "
             "dataset cache warm; one store: 17×64×48 maps written by uni's writer just "
             f"before (bench/scale_train.py). Memory over {args.at - 15:.0f}–{args.at:.0f} s "
             "after the second start (≥ 10 s, after the first step).", "",
             "| persons | store | tree PSS MB | tree RSS MB | trainer PSS MB | workers PSS / "
             "USS MB | first step s, first start | first step s, second start |",
             "|---|---|---|---|---|---|---|---|", *rows,
             f"| {hi:,}, dataset parsed | none | | | | | {figs['parsed']['first_step_s']:.1f} "
             "| |", ""]
    span = hi - lo
    for store in (False, True):
        a, b = figs[lo, store]["second"], figs[hi, store]["second"]
        pct = 100 * (b["pss_mb"] / a["pss_mb"] - 1)
        slope = (b["pss_mb"] - a["pss_mb"]) * 2**20 / span / 1000
        rss = (b["rss_mb"] - a["rss_mb"]) * 2**20 / span / 1000
        lines.append(f"- {'one store' if store else 'no store'}: tree PSS {a['pss_mb']:.0f} → "
                     f"{b['pss_mb']:.0f} MB, **{pct:+.1f} %** (goal ≤ +10 %: "
                     f"{'met' if pct <= 10 else '**missed**'}); per person {slope:.2f} kB PSS, "
                     f"{rss:.2f} kB RSS")
    per_store = [(figs[n, True]["second"]["pss_mb"] - figs[n, False]["second"]["pss_mb"])
                 for n in (lo, hi)]
    lines.append(f"- the store's own cost: {per_store[0]:+.0f} MB PSS at {lo:,}, "
                 f"{per_store[1]:+.0f} MB at {hi:,}: "
                 f"{(per_store[1] - per_store[0]) * 2**20 / span / 1000:.2f} kB PSS per person")
    worst = max(figs[n, True][k]["first_step_s"] for n in args.sizes
                for k in ("first", "second"))
    lines.append(f"- first step with the store, first and second start, every size: at most "
                 f"**{worst:.1f} s** (goal ≤ 5 s: {'met' if worst <= 5 else '**missed**'})")
    return "\n".join(lines)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10000, 150000])
    ap.add_argument("--at", type=float, default=30.0,
                    help="seconds after start at which memory is taken [30]")
    ap.add_argument("--workers", type=int, default=2, help="DataLoader workers [2]")
    ap.add_argument("--work", type=Path, default=scale_data.DEFAULT_WORK,
                    help=f"scratch folder [{scale_data.DEFAULT_WORK}]")
    print(run(ap.parse_args()))
