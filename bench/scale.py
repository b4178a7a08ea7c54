"""Scale: the figures of issue 14 in one section — writer ingest, worker → writer bytes, the
cost of checking stores at start, datasets at 10k vs 150k persons, stage one with 1 and 2 workers.

    .venv/bin/python bench/scale.py [--scale-sizes 10000 150000] [--ingest 6400]
                                    [--verify-rows 20000]
                                    [--instances 640] [--work DIR] [--demo-dir DIR]

Each figure is a ratio of two things measured side by side in this run; absolute rates are
context (the machine may be shared: the load average is given before and after).
The parts are scripts of their own: bench/store_scale.py (writer, verify), bench/scale_data.py
(inspect-data, train-student), bench/stage_one.py (cache-teachers).
"""

from __future__ import annotations

import argparse

import common
import scale_data
import stage_one
import store_scale


def _stage_one(args: argparse.Namespace) -> tuple[list[list[str]], float]:
    """cache-teachers end to end on the demo's teachers, 1 and 2 local workers."""
    demo = common.demo_dir(args)
    spec = common.repeat_dataset(demo, "coco", args.instances,
                                 args.work / f"coco_x{args.instances}")
    paths = common.teachers(demo)
    rows, rates = [], {}
    for workers in (1, 2):
        loop, wall, crops = stage_one._cache_rate(spec, paths, args.work / f"scale_w{workers}",
                                                  workers, 32)
        rates[workers] = loop
        rows.append([f"{workers}", f"{crops:,}", f"{loop:,.0f}", f"{wall:,.0f}"])
    return rows, rates[2] / rates[1]


def run(args: argparse.Namespace) -> str:
    before = common.load()
    common.say(f"scale: writer ingest ({args.ingest} instances) and verify ({args.verify_rows})")
    w = store_scale.writer_ingest(args.ingest, args.work)
    v = store_scale.verify_cost(args.verify_rows, args.work)
    common.say(f"scale: stage one, {args.instances} crops, 1 and 2 local workers")
    s1_rows, s1_ratio = _stage_one(args)
    common.say(f"scale: datasets at {args.scale_sizes}")
    data = scale_data.run(argparse.Namespace(sizes=args.scale_sizes, at=args.at, workers=2,
                                             no_train=False, work=args.work))
    after = common.load()
    k, h, wd = w["shape"]
    writer_rows = [
        ["StoreWriter.write, float32 maps (the writer quantises and compresses)",
         f"{w['ingest_float32_per_s']:,.0f}", "1.0"],
        ["StoreWriter.write_encoded, rows encoded by workers",
         f"{w['ingest_encoded_per_s']:,.0f}", f"{w['speedup']:.1f}"],
        ["the same, rows scattered over the store",
         f"{w['ingest_encoded_scattered_per_s']:,.0f}",
         f"{w['ingest_encoded_scattered_per_s'] / w['ingest_float32_per_s']:.1f}"]]
    return f"""## 6. Scale

{before} before, {after} after.

### Writer ingest and worker → writer bytes
{w['instances']:,} instances of {k}×{h}×{wd} teacher-like maps (bench/store_scale.py), batches
of {w['batch']}:

{common.table(["writer fed", "instances/s", "× float32 path"], writer_rows)}

- **Ingest from ready rows: {w['ingest_encoded_per_s']:,.0f} instances/s** (goal ≥ 20,000:
  {common.verdict(w['ingest_encoded_per_s'] >= 20000)}); one worker core encodes
  {w['encode_per_s_one_worker']:,.0f} instances/s, so encoding spreads over the workers.
- **Worker → writer: {w['bytes_per_instance_encoded']:,.0f} bytes per instance** against
  {w['bytes_per_instance_float32']:,.0f} for float32, **1/{1 / w['bytes_ratio']:.0f}** (goal ≤
  1/20: {common.verdict(w['bytes_ratio'] <= 1 / 20)}); on disk
  {w['store_bytes_per_instance']:,.0f} bytes per instance.

### Store checks at start
A {v['rows']:,}-row store: the first check reads every chunk ({v['first_check_s']:.2f} s,
{v['first_check_rows_read']:,} rows read) and records itself; the second start trusts the record
(**{v['second_check_s']:.3f} s**, {v['second_check_rows_read']:,} rows read; goal ≤ 1 s:
{common.verdict(v['second_check_s'] <= 1.0)}).

### Stage one end to end, 1 and 2 local workers
{args.instances} person crops × 2 demo teachers in one pass (`cache_teachers`, default threads):

{common.table(["workers", "crops", "crops/s (store-writing loop)", "crops/s incl. start-up"],
              s1_rows)}

- 2 workers ÷ 1 = **{s1_ratio:.2f}** on this machine's cores (section 1 gives the per-worker
  scaling with one onnxruntime thread each and the ratio to a bare onnxruntime loop).

{data.replace("## Datasets at scale", "### Datasets at scale")}
"""


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale-sizes", type=int, nargs="+", default=[10000, 150000])
    ap.add_argument("--at", type=float, default=30.0,
                    help="seconds after start at which train-student's PSS is taken [30]")
    ap.add_argument("--ingest", type=int, default=6400, help="instances for writer ingest")
    ap.add_argument("--verify-rows", type=int, default=20000)
    ap.add_argument("--instances", type=int, default=640, help="stage-one crops")
    common.main(run, ap)
