"""Stage two killed (kill -9) mid-epoch, before its first checkpoint, or while writing one
(issue 8): --resume ends bit for bit where a run that never stopped ends."""

from __future__ import annotations

import csv
import signal
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from conftest import one_line_error
from reliability import UNI, run, toml, train_args

from uniskel.cli import uni

# 3 epochs of 3 steps (9 of the 10 people train, 1 validates), a metrics row at every step.
EXACT = "val-fraction = 0.1\nlog-every = 1\n"


@pytest.fixture(scope="module")
def straight_run(stage_two, tmp_path_factory) -> Path:
    """An uninterrupted 3-epoch run that never checkpoints mid-epoch."""
    spec, _, stores = stage_two
    tmp = tmp_path_factory.mktemp("straight")
    cfg = toml(tmp / "c.toml", EXACT + "save-every-s = 0\n")
    res = CliRunner().invoke(uni, train_args(spec, stores, tmp / "run", cfg, epochs=3))
    assert res.exit_code == 0, res.output
    return tmp / "run"


def _metrics(run_dir: Path) -> list[dict]:
    with open(run_dir / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    return [{k: v for k, v in r.items() if k != "samples_per_s"} for r in rows]


def _assert_same_run(run_dir: Path, ref: Path) -> None:
    """Bit for bit the same end: weights, optimiser, grad scaler, position, RNG states,
    best.pt, and metrics.csv (but the samples/s, which measure the clock)."""
    for name in ("last.pt", "best.pt"):
        a, b = (torch.load(r / name, weights_only=True) for r in (run_dir, ref))
        for key in ("epoch", "step", "step_in_epoch", "best", "val_loss", "sums", "seen",
                    "skipped", "scaler"):
            assert a[key] == b[key], (name, key, a[key], b[key])
        for k, v in b["model"].items():
            assert torch.equal(a["model"][k], v), (name, k)
        for i, state in b["optimizer"]["state"].items():
            for k, v in state.items():
                assert torch.equal(a["optimizer"]["state"][i][k], v), (name, i, k)
        assert torch.equal(a["rng"]["torch"], b["rng"]["torch"])
        assert a["rng"]["numpy"] == b["rng"]["numpy"] and a["rng"]["python"] == b["rng"]["python"]
    assert _metrics(run_dir) == _metrics(ref)


def test_train_killed_mid_epoch_resumes_to_the_same_bits(stage_two, straight_run, tmp_path):
    """Checkpoints by time (here: after every step) land mid-epoch; killed in the middle of the
    second epoch, one step past its last checkpoint, --resume ends bit for bit where a run that
    never stopped (and never saved mid-epoch) ends, metrics.csv included."""
    spec, _, stores = stage_two
    run_dir = tmp_path / "run"
    cfg = toml(tmp_path / "c.toml", EXACT + "save-every-s = 1e-9\n")
    killed = run([*UNI, *train_args(spec, stores, run_dir, cfg, epochs=3)], tmp_path,
                 "train-step:5")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    at_kill = torch.load(run_dir / "last.pt", weights_only=True)
    assert (at_kill["epoch"], at_kill["step"], at_kill["step_in_epoch"]) == (1, 4, 1)
    assert at_kill["seen"] == 4 and at_kill["sums"]["total"] > 0  # the epoch's running sums
    assert max(int(r["step"]) for r in _metrics(run_dir)) == 5  # step 5 logged, then lost
    done = CliRunner().invoke(uni, ["train-student", "--out", str(run_dir), "--resume"])
    assert done.exit_code == 0, done.output
    _assert_same_run(run_dir, straight_run)


def test_train_resume_before_any_checkpoint_starts_the_run(stage_two, straight_run, tmp_path):
    """Killed before its first checkpoint, --resume starts the run from its config.toml
    (saying so in one line) and ends as the uninterrupted run; a run dir with nothing in it
    starts with --data, and without it is one line."""
    spec, _, stores = stage_two
    run_dir = tmp_path / "run"
    cfg = toml(tmp_path / "c.toml", EXACT)  # the default: a checkpoint every 600 s
    killed = run([*UNI, *train_args(spec, stores, run_dir, cfg, epochs=3)], tmp_path,
                 "train-step:2")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert not (run_dir / "last.pt").exists() and (run_dir / "config.toml").is_file()
    done = CliRunner().invoke(uni, ["train-student", "--out", str(run_dir), "--resume"])
    assert done.exit_code == 0, done.output
    said = [ln for ln in done.stderr.splitlines() if "no checkpoint yet" in ln]
    assert said == [f"uni: {run_dir}: no checkpoint yet; starting the run as its config.toml says"]
    _assert_same_run(run_dir, straight_run)

    fresh = tmp_path / "fresh"
    res = CliRunner().invoke(uni, train_args(spec, stores, fresh, cfg) + ["--resume"])
    assert res.exit_code == 0, res.output
    assert f"uni: {fresh}: no checkpoint yet; starting the run\n" in res.stderr
    assert torch.load(fresh / "last.pt", weights_only=True)["step"] == 3
    one_line_error(CliRunner().invoke(uni, ["train-student", "--out", str(tmp_path / "none"),
                                            "--resume"]),
                   "none: nothing to resume (no last.pt or config.toml) and no --data")


def test_train_killed_while_writing_a_checkpoint_keeps_the_previous(stage_two, tmp_path):
    spec, _, stores = stage_two
    cfg = toml(tmp_path / "c.toml", "val-fraction = 0.0\nsave-every = 1\n")
    run_dir = tmp_path / "run"
    killed = run([*UNI, *train_args(spec, stores, run_dir, cfg)], tmp_path, "checkpoint:2")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert (run_dir / "last.pt.tmp").is_file()  # the second checkpoint, never renamed
    assert torch.load(run_dir / "last.pt", weights_only=False)["step"] == 1
    done = CliRunner().invoke(uni, ["train-student", "--out", str(run_dir), "--resume"])
    assert done.exit_code == 0, done.output
    final = torch.load(run_dir / "last.pt", weights_only=False)
    assert final["epoch"] == 1 and final["step"] == 3
    assert not (run_dir / "last.pt.tmp").exists()
