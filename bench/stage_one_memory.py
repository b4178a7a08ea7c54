"""Stage one's client memory: peak RSS of `uni cache-teachers --workers 1` (the client, running
the tasks in process and writing the store) at a small and a large person count.

    .venv/bin/python bench/stage_one_memory.py [--sizes 10000 150000] [--work DIR]

Data: `uni synth` COCO persons repeated to each size (bench/scale_data.py, image records growing
with persons); teacher: random convs with a small grid (coco17, input 32×24, grid 8×6), so that
the client's own data structures, not the maps, are what is measured. The dataset's columns are
cached first (one `uni inspect-data`, as any run after the first finds them), then
cache-teachers runs in a fresh process into a fresh store; its peak RSS is the kernel's
(VmHWM at exit). Goal (issue 24): ≤ +50 MB from 10k to 150k persons.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import scale_data
import wire_bytes

DEFAULT_WORK = Path(os.environ.get("TMPDIR", "/tmp")) / "uni-bench"


def client_peak_rss(persons: int, work: Path) -> dict:
    """{"persons", "peak_rss_mb", "seconds", "bytes_per_person_stored"}: one fresh
    `uni cache-teachers --workers 1` over `persons` synthetic COCO persons."""
    work = Path(work) / "stage_one_memory"
    teacher = wire_bytes.make_teacher(work / "small.onnx", input_wh=(24, 32), stride=4)
    spec = scale_data.repeated_coco(scale_data.synth_source(Path(work).parent), persons, work)
    cache = work / "dataset_cache"
    env = {**os.environ, "UNI_CACHE_DIR": str(cache), "OMP_NUM_THREADS": "1"}
    subprocess.run([*scale_data.uni_cmd(), "inspect-data", spec, "--json"], env=env,
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    out = work / f"stores_{persons}"
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", scale_data._PEAK, "cache-teachers", "--data",
                           spec, "--teacher", str(teacher), "--out", str(out), "--workers", "1"],
                          env=env, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)
    seconds = time.perf_counter() - t0
    if proc.returncode:
        raise RuntimeError(f"cache-teachers failed: {proc.stderr[-2000:]}")
    kb = int(proc.stderr.strip().splitlines()[-1].split()[1])
    stored = sum(p.stat().st_size for p in out.glob("*.h5"))
    shutil.rmtree(out, ignore_errors=True)
    return {"persons": persons, "peak_rss_mb": kb / 1024, "seconds": seconds,
            "bytes_per_person_stored": stored / persons}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10000, 150000])
    ap.add_argument("--work", type=Path, default=DEFAULT_WORK)
    args = ap.parse_args()
    rows = [client_peak_rss(n, args.work) for n in args.sizes]
    for r in rows:
        print(f"{r['persons']:>8,} persons: peak RSS {r['peak_rss_mb']:,.0f} MB, "
              f"{r['seconds']:.0f} s, {r['bytes_per_person_stored']:,.0f} B/person stored")
    if len(rows) > 1:
        a, b = rows[0], rows[-1]
        slope = (b["peak_rss_mb"] - a["peak_rss_mb"]) * 2**20 / (b["persons"] - a["persons"])
        print(f"+{b['peak_rss_mb'] - a['peak_rss_mb']:,.0f} MB from {a['persons']:,} to "
              f"{b['persons']:,} persons ({slope:,.0f} B/person)")


if __name__ == "__main__":
    main()
