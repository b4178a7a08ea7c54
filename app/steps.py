"""Steps as child processes, a few at a time, each once the steps it needs are done (`uni demo`).

Not dask: its local scheduler orders ready tasks itself (dask.order), so "longest step first"
cannot be asked for, and distributed's workers are daemonic, so no step could start DataLoaders.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass


@dataclass
class Step:
    name: str
    needs: tuple[str, ...]  # the steps whose results call reads
    call: Callable[[dict], tuple]  # finished results → (function, *arguments) to run


def cpu_seconds() -> float:
    """This process's CPU time and that of its finished children (DataLoader workers)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def run_steps(steps: list[Step], jobs: int, seconds: dict[str, dict] | None = None,
              say: Callable[[str], None] = lambda _: None) -> dict[str, object]:
    """Run steps in list order, `jobs` processes at a time, each once the steps it needs are
    done; → {name: result}. A failing step stops the rest (its error is raised here).
    seconds, when given, gets {name: {"wall": s, "cpu": s}} for each step; say hears each end."""
    done: dict[str, object] = {}
    pending = list(steps)
    running: dict[Future, tuple[Step, float]] = {}
    # Spawned, not forked: this process has torch's and OpenCV's threads running.
    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"),
                             initializer=_worker_init,
                             initargs=(multiprocessing.get_start_method(),)) as pool:
        while pending or running:
            for step in [t for t in pending if all(n in done for n in t.needs)]:
                if len(running) == jobs:
                    break
                pending.remove(step)
                fn, *args = step.call(done)
                running[pool.submit(_timed, fn, *args)] = (step, time.perf_counter())
            if not running:  # a programming error, not a user's: say which step is stuck
                raise RuntimeError(f"{pending[0].name} needs {pending[0].needs}: not all steps")
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                step, t0 = running.pop(future)
                if future.exception() is not None:
                    for other in running:
                        other.cancel()
                    pool.shutdown(wait=True, cancel_futures=True)
                    raise future.exception()
                done[step.name], cpu = future.result()
                wall = time.perf_counter() - t0
                if seconds is not None:
                    seconds[step.name] = {"wall": round(wall, 1), "cpu": round(cpu, 1)}
                say(f"{step.name} done ({wall:.0f} s, CPU {cpu:.0f} s)")
    return done


def _worker_init(start_method: str) -> None:
    """A spawned worker would spawn its DataLoader workers too, each re-importing torch at every
    epoch: give it the start method `uni train-student` has here (the platform's: fork on Linux)."""
    multiprocessing.set_start_method(start_method, force=True)


def _timed(fn: Callable, *args: object) -> tuple[object, float]:
    """fn(*args) in a worker process → (its result, the CPU seconds it took there)."""
    cpu = cpu_seconds()
    result = fn(*args)
    return result, cpu_seconds() - cpu
