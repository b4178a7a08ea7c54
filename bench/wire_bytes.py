"""Stage one's bytes on the wire against bytes stored, on a cluster started from the command
line (`dask scheduler` and `dask worker`s on localhost, the engine a user starts).

    .venv/bin/python bench/wire_bytes.py [--persons 1200] [--work DIR] [--teacher MODEL.onnx]

Bytes are counted at the sockets: every tornado IOStream read and write of the scheduler process
(installed in it with `run_on_scheduler`) and of the client, which runs `cache_teachers` in this
process, against the stores' size on disk. Results that go straight from the workers to the
client leave the scheduler with only its task messages; results relayed by the scheduler cross
it twice (in from a worker, out to the client). tests/test_cluster.py asserts on the same counts.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import cloudpickle

DASK = Path(sys.executable).with_name("dask")  # the venv's own: it finds uniskel installed
SAMPLE = Path(__file__).resolve().parents[1] / "samples" / "coco"  # real COCO people
DEFAULT_WORK = Path(os.environ.get("TMPDIR", "/tmp")) / "uni-bench"


# --------------------------------------------------------------------------- byte counters


def install_byte_counter() -> None:
    """Count every byte this process's tornado streams (dask's TCP comms) read from and write
    to their sockets, from now on: `byte_counts()`. Runs in the scheduler too (by value)."""
    from tornado.iostream import IOStream

    if hasattr(IOStream, "uni_wire"):
        return
    counts = {"read": 0, "written": 0}
    read, write = IOStream.read_from_fd, IOStream.write_to_fd

    def read_from_fd(self, buf):
        n = read(self, buf)
        counts["read"] += n or 0
        return n

    def write_to_fd(self, data):
        n = write(self, data)
        counts["written"] += n or 0
        return n

    IOStream.uni_wire = (counts, read, write)
    IOStream.read_from_fd, IOStream.write_to_fd = read_from_fd, write_to_fd


def byte_counts() -> dict[str, int]:
    """{"read", "written"}: bytes since install_byte_counter() in this process."""
    from tornado.iostream import IOStream

    return dict(IOStream.uni_wire[0])


def remove_byte_counter() -> None:
    from tornado.iostream import IOStream

    if hasattr(IOStream, "uni_wire"):
        _, IOStream.read_from_fd, IOStream.write_to_fd = IOStream.uni_wire
        del IOStream.uni_wire


def on_scheduler(client, fn):
    """fn run in the scheduler process; this module's functions travel by value (the
    scheduler cannot import bench/)."""
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    try:
        return client.run_on_scheduler(fn)
    finally:
        cloudpickle.unregister_pickle_by_value(sys.modules[__name__])


# --------------------------------------------------------------------------- the cluster


@dataclass
class Cluster:
    scheduler_file: Path
    scheduler: subprocess.Popen
    workers: list[subprocess.Popen]


@contextmanager
def command_line_cluster(work: Path, worker_envs: list[dict[str, str]]) -> Iterator[Cluster]:
    """`dask scheduler` and one one-thread `dask worker` (no nanny: a killed worker stays dead)
    per entry of worker_envs (its extra environment), on localhost, all connected; every
    process is killed on the way out, whatever happened. Logs: work/dask*.log."""
    from distributed import Client

    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("UNI_KILL_AT", None)
    sched_file = work / "scheduler.json"
    sched_file.unlink(missing_ok=True)
    procs: list[subprocess.Popen] = []

    def start(*args: str, **extra: str) -> subprocess.Popen:
        log = open(work / f"dask{len(procs)}.log", "w")  # noqa: SIM115 (closed by the OS)
        p = subprocess.Popen([str(DASK), *args], cwd=work, env={**env, **extra}, stdout=log,
                             stderr=subprocess.STDOUT, start_new_session=True)
        procs.append(p)
        return p

    try:
        scheduler = start("scheduler", "--scheduler-file", str(sched_file), "--host",
                          "127.0.0.1", "--port", "0", "--no-dashboard")
        deadline = time.time() + 20
        while not sched_file.is_file() and time.time() < deadline:
            time.sleep(0.1)
        if not sched_file.is_file():
            raise RuntimeError((work / "dask0.log").read_text())
        workers = [start("worker", "--scheduler-file", str(sched_file), "--nworkers", "1",
                         "--nthreads", "1", "--no-nanny", "--no-dashboard", "--host",
                         "127.0.0.1", **extra) for extra in worker_envs]
        with Client(scheduler_file=str(sched_file), timeout="20s") as client:
            client.wait_for_workers(len(workers), timeout=30)
        yield Cluster(sched_file, scheduler, workers)
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
            p.wait()


# --------------------------------------------------------------------------- data and teacher


def make_teacher(path: Path, input_wh: tuple[int, int] = (48, 64), stride: int = 1) -> Path:
    """A described coco17 heatmap teacher of random convs (sigmoid): grid = input / stride. The
    default is the grid of the issue's measurement, input and grid H×W 64×48: 17×64×48 maps."""
    import torch
    from torch import nn

    from uniskel.pipeline.teachers import TeacherInfo, describe_model

    described = path.with_name(path.stem + ".described.onnx")
    if described.is_file():
        return described
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, stride, 1), nn.ReLU(),
                          nn.Conv2d(8, 17, 3, 1, 1)).eval()
    w, h = input_wh
    with torch.no_grad():
        torch.onnx.export(model, torch.zeros(1, 3, h, w), str(path), dynamo=False,
                          input_names=["image"], output_names=["heatmaps"],
                          dynamic_axes={"image": {0: "n"}, "heatmaps": {0: "n"}})
    info = TeacherInfo(name=path.stem, skeleton="coco17", head="heatmap", input_wh=input_wh,
                       activation="sigmoid")
    return describe_model(path, info, described)


def sample_spec(work: Path, persons: int) -> str:
    """The real COCO sample's people cycled to `persons` (fresh annotation ids, its images)."""
    ann = work / f"coco_sample_{persons}.json"
    if not ann.is_file():
        data = json.loads((SAMPLE / "test_coco.json").read_text())
        base = data["annotations"]
        data["annotations"] = [dict(base[j % len(base)], id=(j // len(base)) * 1_000_000
                                    + base[j % len(base)]["id"]) for j in range(persons)]
        work.mkdir(parents=True, exist_ok=True)
        ann.write_text(json.dumps(data))
    return f"coco:{ann}:{SAMPLE / 'images'}"


# --------------------------------------------------------------------------- the measurement


def measure(scheduler_file: Path, spec: str, teacher: Path, out: Path, batch: int = 32
            ) -> dict:
    """cache_teachers in this process on the cluster of scheduler_file, counting bytes at the
    scheduler's and this process's sockets: {"persons", "stored", "client_read",
    "scheduler_read", "scheduler_written"} (bytes)."""
    from distributed import Client

    from uniskel.pipeline.cache import cache_teachers

    with Client(scheduler_file=str(scheduler_file), timeout="20s") as c:
        on_scheduler(c, install_byte_counter)
        before = on_scheduler(c, byte_counts)
    install_byte_counter()
    try:
        mine = byte_counts()
        shutil.rmtree(out, ignore_errors=True)
        (s,) = cache_teachers([spec], [teacher], out, batch_size=batch, progress=False,
                              scheduler_file=scheduler_file)
        client = {k: v - mine[k] for k, v in byte_counts().items()}
    finally:
        remove_byte_counter()
    with Client(scheduler_file=str(scheduler_file), timeout="20s") as c:
        after = on_scheduler(c, byte_counts)
    return {"persons": s.written, "stored": s.bytes_on_disk, "client_read": client["read"],
            "scheduler_read": after["read"] - before["read"],
            "scheduler_written": after["written"] - before["written"]}


def wire_bytes(work: Path, persons: int, teacher: Path | None = None, workers: int = 2) -> dict:
    """Bytes per person on a command-line cluster (scheduler and `workers` one-thread workers):
    {"persons", "stored", "to_client", "through_scheduler"} per person, and the ratios
    "to_client_ratio", "scheduler_ratio" (÷ stored). teacher: default make_teacher's."""
    work = Path(work) / "wire_bytes"
    teacher = teacher or make_teacher(work / "wire.onnx")
    spec = sample_spec(work, persons)
    with command_line_cluster(work / "cluster", [{}] * workers) as cluster:
        m = measure(cluster.scheduler_file, spec, teacher, work / "stores")
    n = m["persons"]
    through = max(m["scheduler_read"], m["scheduler_written"])
    return {"persons": n, "stored": m["stored"] / n, "to_client": m["client_read"] / n,
            "through_scheduler": through / n, "to_client_ratio": m["client_read"] / m["stored"],
            "scheduler_ratio": through / m["stored"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--persons", type=int, default=1200)
    ap.add_argument("--work", type=Path, default=DEFAULT_WORK)
    ap.add_argument("--teacher", type=Path, default=None,
                    help="a described heatmap teacher [a random 17×64×48 one]")
    args = ap.parse_args()
    r = wire_bytes(args.work, args.persons, args.teacher)
    print(f"{r['persons']:,} persons: stored {r['stored']:,.0f} B/person, to the client "
          f"{r['to_client']:,.0f} ({r['to_client_ratio']:.2f}×), through the scheduler "
          f"{r['through_scheduler']:,.0f} ({r['scheduler_ratio']:.3f}×)")


if __name__ == "__main__":
    main()
