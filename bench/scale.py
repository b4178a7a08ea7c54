"""Scale: the figures of issues 14 and 24 in one section — writer ingest, worker → writer
bytes, the cost of checking stores at start, stage one with 1 and 2 workers, datasets at 10k vs
150k persons, stage two at 10k vs 150k without and with a store, stage one's client memory at
10k vs 150k, and bytes on the wire against bytes stored on a command-line cluster.

    .venv/bin/python bench/scale.py [--scale-sizes 10000 150000] [--ingest 6400]
                                    [--verify-rows 20000] [--at 30]
                                    [--instances 640] [--work DIR] [--demo-dir DIR]

Each figure is a ratio of two things measured side by side in this run; absolute rates are
context (the machine may be shared: the load average is given before and after).
The parts are scripts of their own: bench/store_scale.py (writer, verify), bench/scale_data.py
(inspect-data), bench/scale_train.py (train-student), bench/stage_one.py (cache-teachers),
bench/stage_one_memory.py (stage one's client), bench/wire_bytes.py (the wire).
"""

from __future__ import annotations

import argparse

import common
import scale_data
import scale_train
import stage_one
import stage_one_memory
import store_scale
import wire_bytes

WIRE_PERSONS = 1200  # persons cached on the command-line cluster for the wire's bytes


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
    data = scale_data.run(argparse.Namespace(sizes=args.scale_sizes, work=args.work))
    common.say(f"scale: stage two at {args.scale_sizes}, without and with a store")
    train = scale_train.run(argparse.Namespace(sizes=args.scale_sizes, at=args.at, workers=2,
                                               work=args.work))
    common.say(f"scale: stage one's client at {args.scale_sizes}")
    client = _client(args)
    common.say(f"scale: bytes on the wire, {WIRE_PERSONS} persons on a command-line cluster")
    wire = wire_bytes.wire_bytes(args.work, WIRE_PERSONS)
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
A {v['rows']:,}-row store as uni's writer leaves it starts trusted ({v['fresh_check_s']:.2f} s,
{v['fresh_check_rows_read']:,} rows read: the writer vouches for the rows it wrote). Without that
record (a store another program wrote) the first check reads every chunk
({v['first_check_s']:.2f} s, {v['first_check_rows_read']:,} rows read) and records itself; the
second start trusts the record
(**{v['second_check_s']:.3f} s**, {v['second_check_rows_read']:,} rows read; goal ≤ 1 s:
{common.verdict(v['second_check_s'] <= 1.0)}).

### Stage one end to end, 1 and 2 local workers
{args.instances} person crops × 2 demo teachers in one pass (`cache_teachers`, default threads):

{common.table(["workers", "crops", "crops/s (store-writing loop)", "crops/s incl. start-up"],
              s1_rows)}

- 2 workers ÷ 1 = **{s1_ratio:.2f}** on this machine's cores (section 1 gives the per-worker
  scaling with one onnxruntime thread each and the ratio to a bare onnxruntime loop).

{data.replace("## Datasets at scale", "### Datasets at scale")}

{train}

{client}

### Bytes on the wire against bytes stored
`cache_teachers` on a cluster started from the command line (`dask scheduler`, two one-thread
`dask worker`s; bench/wire_bytes.py), {wire['persons']:,} persons, one 17×64×48 teacher; bytes
counted at the client's and the scheduler's sockets, per person:

{common.table(["stored", "into the client", "through the scheduler"],
              [[f"{wire['stored']:,.0f}", f"{wire['to_client']:,.0f}",
                f"{wire['through_scheduler']:,.0f}"]])}

- **Bytes on the wire ÷ bytes stored: {wire['to_client_ratio']:.2f}** (goal ≤ 1.1:
  {common.verdict(wire['to_client_ratio'] <= 1.1)}); through the scheduler
  {wire['scheduler_ratio']:.3f}× what is stored (its task messages only).
"""


def _client(args: argparse.Namespace) -> str:
    """Stage one's client: peak RSS of `uni cache-teachers --workers 1` at each size."""
    figs = {n: stage_one_memory.client_peak_rss(n, args.work) for n in args.scale_sizes}
    lo, hi = min(figs), max(figs)
    grow = figs[hi]["peak_rss_mb"] - figs[lo]["peak_rss_mb"]
    rows = [[f"{n:,}", f"{f['peak_rss_mb']:.0f}", f"{f['seconds']:.0f}"]
            for n, f in sorted(figs.items())]
    return f"""### Stage one's client at scale
`uni cache-teachers --workers 1` in a fresh process, dataset cache warm, a small random teacher
(bench/stage_one_memory.py); peak RSS is the kernel's (VmHWM):

{common.table(["persons", "peak RSS MB", "s"], rows)}

- {lo:,} → {hi:,}: **{grow:+.0f} MB** ({grow * 2**20 / (hi - lo) / 1000:.2f} kB per person;
  goal ≤ +50 MB: {common.verdict(grow <= 50)})
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
