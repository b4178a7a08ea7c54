"""Datasets at COCO-train size: `uni inspect-data` peak RSS and time at a small and a large
instance count, and the data the other scale benchmarks share (repeated synthetic COCO files).

    .venv/bin/python bench/scale_data.py [--sizes 10000 150000] [--work DIR]

Data: `uni synth` COCO training persons repeated with fresh annotation and image ids to each
size (image records grow with persons, as in real files; their files repeat). Every figure comes
from a fresh process with its own dataset cache folder (core/dataset_cache.py; emptied first):
inspect-data runs twice, parsing the file and then reading the cached columns, and its peak RSS
is the kernel's maximum (VmHWM). train-student at scale: bench/scale_train.py.
Goal (issue 14): inspect-data peak RSS ≤ +150 MB at the large size.
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

from uniskel.core import dataset_cache

DEFAULT_WORK = Path(os.environ.get("TMPDIR", "/tmp")) / "uni-bench"

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


def run(args: argparse.Namespace) -> str:
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    src = synth_source(work)
    cache = work / "scale_dataset_cache"
    shutil.rmtree(cache, ignore_errors=True)  # the first inspect-data of each size parses
    rows, figs = [], {}
    for n in args.sizes:
        spec = repeated_coco(src, n, work / "scale_data")
        say(f"inspect-data, {n} instances: parsed, then from the dataset cache")
        cold = inspect_data(spec, cache)
        warm = inspect_data(spec, cache)
        figs[n] = cold, warm
        rows.append(f"| {n:,} | {cold[0]:.0f} | {cold[1]:.1f} | {warm[0]:.0f} | {warm[1]:.1f} |")
    lo, hi = min(args.sizes), max(args.sizes)
    grow = figs[hi][0][0] - figs[lo][0][0]
    return "\n".join([
        f"## Datasets at scale ({lo:,} → {hi:,} instances)", "",
        f"Synthetic COCO files (`uni synth` persons repeated); the dataset cache is used from "
        f"{dataset_cache.MIN_INSTANCES:,} persons (core/dataset_cache.py; its columns are "
        "memory-mapped).", "",
        "| instances | inspect-data peak RSS MB (parse) | s | peak RSS MB (cached) | s |",
        "|---|---|---|---|---|", *rows, "",
        f"- inspect-data peak RSS {lo:,} → {hi:,} (parsing): **{grow:+.0f} MB** (goal "
        f"≤ +150 MB: {'met' if grow <= 150 else '**missed**'})"])


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10000, 150000])
    ap.add_argument("--work", type=Path, default=DEFAULT_WORK,
                    help=f"scratch folder [{DEFAULT_WORK}]")
    print(run(ap.parse_args()))
