"""One writer per store, --overwrite included (issue 24): a second `uni cache-teachers` on a
store another one is writing is refused in one line that says to wait for it or stop it, and
the first completes a store that verifies, and starts trusted: its first check reads no row
(stores/verify.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from conftest import one_line_error
from reliability import ENV, assert_same_store, cache_cmd, names, run

from uniskel.stores.reader import open_store

# The uni command with kill_point("cache-batch") held after the first batch: it says so by
# creating argv[2], then waits for argv[1] to exist. A real writer, stopped mid-store.
_HELD = """
import os, sys, time
import uniskel.pipeline.cache as cache
gate, reached = sys.argv[1], sys.argv[2]

def hold(point):
    if point == "cache-batch" and not os.path.exists(reached):
        open(reached, "w").close()
        while not os.path.exists(gate):
            time.sleep(0.02)

cache.kill_point = hold
sys.argv = ["uni", *sys.argv[3:]]
from uniskel.cli import main
main()
"""


def test_second_writer_refused_with_and_without_overwrite(stage_one, tmp_path):
    spec, teacher, ref, _ = stage_one
    out, gate, reached = tmp_path / "out", tmp_path / "gate", tmp_path / "reached"
    cmd = cache_cmd(spec, teacher, out)
    first = subprocess.Popen([sys.executable, "-c", _HELD, str(gate), str(reached), *cmd[3:]],
                             cwd=tmp_path, env=ENV, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not reached.exists():  # the first has written a batch and holds the store
            assert first.poll() is None, first.communicate()[1][-2000:]
            assert time.monotonic() < deadline
            time.sleep(0.05)
        store = out / ref.name
        for extra in ((), ("--overwrite",)):
            second = run(cache_cmd(spec, teacher, out, *extra), tmp_path)
            line = one_line_error(second, str(store), f"is being written by pid {first.pid}",
                                  "wait for it to finish or stop it")
            assert "--overwrite" not in line
        assert names(out) == [ref.name, ref.name + ".lock"]  # no rebuild was begun
    finally:
        gate.touch()
        _, err = first.communicate(timeout=120)
    assert first.returncode == 0, err[-2000:]
    assert names(out) == [ref.name] and not os.path.exists(str(store) + ".tmp")
    assert open_store(store).check().rows_read == 0  # trusted from the start
    assert_same_store(store, ref)  # equal to an uninterrupted run's, and `--verify` clean
