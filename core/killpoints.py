"""Test hook: ``UNI_KILL_AT=POINT[:N]`` SIGKILLs this process the N-th time (default: first) it
reaches ``kill_point(POINT)``, so tests can kill a job at a named moment. Unset, it does nothing.

Points: cache-start (store created and locked, nothing written), cache-batch (after a batch is
written), cache-task (a worker starting a task: kills that worker), store-chunk (after a
batch's first heatmap chunk is written: mid-batch), store-reserve (before a store reserves room
for a batch), store-finalize (inside StoreWriter.finalize), checkpoint (a checkpoint written
to its temp file, not yet renamed), train-step (a training step taken, not yet checkpointed).
"""

from __future__ import annotations

import os
import signal

_hits: dict[str, int] = {}


def kill_point(point: str) -> None:
    spec = os.environ.get("UNI_KILL_AT")
    if not spec:
        return
    name, _, n = spec.partition(":")
    if name != point:
        return
    _hits[point] = _hits.get(point, 0) + 1
    if _hits[point] >= int(n or 1):
        os.kill(os.getpid(), signal.SIGKILL)
