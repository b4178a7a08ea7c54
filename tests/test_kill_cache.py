"""Stage one killed (kill -9) at named moments (issue 8): run again, the store equals an
uninterrupted run's; with --overwrite the old store stays whole until the rebuild replaces it."""

from __future__ import annotations

import signal

import pytest
from reliability import BATCH, assert_same_store, cache_cmd, names, old_store, run, sha

from uniskel.stores.reader import open_store

MOMENTS = {"early": "cache-start", "writing": "cache-batch:2", "mid-batch": "store-chunk:3",
           "finalising": "store-finalize"}


@pytest.mark.parametrize("moment", MOMENTS)
def test_cache_killed_then_restarted_equals_uninterrupted(moment, stage_one, tmp_path):
    spec, teacher, ref, _ = stage_one
    out = tmp_path / "out"
    cmd = cache_cmd(spec, teacher, out)
    killed = run(cmd, tmp_path, MOMENTS[moment])
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    store, lock = out / ref.name, out / (ref.name + ".lock")
    assert lock.is_file()  # the dead writer's
    at_kill = open_store(store)
    n_ref = int(open_store(ref).done.sum())
    n_done = int(at_kill.done.sum())
    assert not at_kill.complete
    assert {"early": n_done == 0, "writing": 0 < n_done <= 2 * BATCH,
            "mid-batch": 0 < n_done <= 2 * BATCH, "finalising": n_done == n_ref}[moment], n_done

    again = run(cmd, tmp_path)
    assert again.returncode == 0, again.stderr[-2000:]
    assert again.stderr.count("taking over the lock") == 1
    assert f"{n_ref - n_done} computed" in again.stdout
    assert not lock.exists() and names(out) == [ref.name]
    assert_same_store(store, ref)


def test_cache_overwrite_killed_keeps_old_store_then_finishes(stage_one, tmp_path):
    """--overwrite writes beside the old store: killed while finalising, the old one is whole;
    run again, the rebuild resumes and replaces it."""
    spec, teacher, ref, no_flip = stage_one
    out, store, before = old_store(tmp_path, ref.name, no_flip)
    cmd = cache_cmd(spec, teacher, out, "--overwrite")
    assert run(cmd, tmp_path, "store-finalize").returncode == -signal.SIGKILL
    assert sha(store) == before and open_store(store).verify() == []
    again = run(cmd, tmp_path)
    assert again.returncode == 0, again.stderr[-2000:]
    assert again.stderr.count("taking over the lock") == 1
    assert names(out) == [ref.name]
    assert_same_store(store, ref)
