"""`make bench`: every benchmark group in turn → BENCHMARKS.md (machine, date, one section each).

    .venv/bin/python bench/run_all.py --out BENCHMARKS.md [--demo-dir DIR] [--only store ...]
                                      [--big]

Small sizes by default (minutes on 2 CPU cores); --big uses the sizes meant for a GPU box.
Each group is also a script of its own (bench/<group>.py --help) with its size flags.
"""

from __future__ import annotations

import argparse
import time
import traceback
from pathlib import Path

import common
import eval_speed
import memory
import parity
import rtmpose
import scale
import stage_one
import stage_two
import store

from uniskel.core.files import write_text

# Design measurements from earlier runs (store format, dataset reader, threads): appended as is.
DESIGN = Path(__file__).with_name("earlier_runs.md")
GROUPS = {"stage_one": stage_one, "store": store, "stage_two": stage_two, "memory": memory,
          "parity": parity, "scale": scale, "rtmpose": rtmpose, "eval_speed": eval_speed}
SMALL = {"instances": 1000, "batch_size": 32, "codecs": list(store.CODECS), "steps": 30,
         "workers": 1, "student": "tiny", "sizes": [1000, 20000], "train_steps": 20,
         "epochs": 4, "seeds": 2, "big_teacher": "base",
         "quick": False, "scale_sizes": [10000, 150000], "at": 60.0, "ingest": 6400,
         "verify_rows": 20000, "eval_images": 6000, "eval_persons": 11000,
         "eval_predictions": 25000, "eval_rounds": 3, "crowd_images": 2000, "skip_uni": False}
BIG = {**SMALL, "instances": 5000, "steps": 100, "workers": 4, "epochs": 10, "seeds": 3}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("BENCHMARKS.md"))
    ap.add_argument("--only", nargs="+", choices=list(GROUPS), default=list(GROUPS))
    ap.add_argument("--big", action="store_true", help="GPU-box sizes")
    common.add_common_args(ap)
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    for key, value in (BIG if args.big else SMALL).items():
        setattr(args, key, value)
    demo = common.demo_dir(args)
    args.demo_dir = demo
    info = common.machine()
    sections, seconds = [], {}
    for name in args.only:
        common.say(f"=== {name}")
        t0 = time.perf_counter()
        try:
            sections.append(GROUPS[name].run(args))
        except Exception:  # one broken group must not hide the others' figures
            sections.append(f"## {name}\n\nFAILED:\n\n```\n{traceback.format_exc()}```\n")
        seconds[name] = time.perf_counter() - t0
    machine = "\n".join(f"- {k}: {v}" for k, v in info.items())
    timing = ", ".join(f"{k} {v:.0f} s" for k, v in seconds.items())
    text = f"""# uni benchmarks

Written by `make bench` (bench/run_all.py{' --big' if args.big else ''}); every figure below is
a ratio of two things measured side by side in the same run on this machine — absolute rates
are context only (the machine may be shared: each section gives the load average).
Teachers and data: `{demo}` (the `uni demo` teachers: a COCO-17 and an MPII-16 model trained on
the synthetic data, exported to ONNX). Group wall times: {timing}.

{machine}

{chr(10).join(sections)}
{DESIGN.read_text()}"""
    write_text(args.out, text)
    common.say(f"wrote {args.out}")


if __name__ == "__main__":
    main()
