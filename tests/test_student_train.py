"""`uni train-student`: learning, exact resume after SIGKILL, two-process DDP, bad input."""

from __future__ import annotations

import csv
import os
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest
import torch
from analytic_teacher import write_analytic_store
from click.testing import CliRunner
from conftest import one_line_error

from uniskel.cli import uni
from uniskel.core.datasets import load_dataset
from uniskel.core.errors import UniError
from uniskel.student.checkpoint import load_checkpoint, load_student
from uniskel.student.config import TrainConfig, read_config_file, teacher_weights
from uniskel.student.data import PoseSamples, collate
from uniskel.student.losses import total_loss
from uniskel.student.models import build_model
from uniskel.student.sources import match_stores
from uniskel.student.train import train

REPO = Path(__file__).resolve().parents[1]
BIN = REPO / ".venv" / "bin"


@pytest.fixture(scope="module")
def synth(synth_dir, tmp_path_factory):
    """(data specs, store dir): both synthetic train sets, two analytic teachers over both."""
    out = tmp_path_factory.mktemp("train_stores")
    specs = [f"coco:{synth_dir / 'coco/train.json'}", f"mpii:{synth_dir / 'mpii/train.json'}"]
    sets = [load_dataset(s) for s in specs]
    for name, skel in (("coco_t", "coco17"), ("mpii_t", "mpii16")):
        for ds in sets:
            write_analytic_store(out / f"{name}__{ds.kind.name}.h5", ds, skel, name)
    return specs, out


def _config(specs, stores, out, **kw) -> TrainConfig:
    cfg = dict(data=specs, stores=[str(stores)] if stores else [], out=str(out), model="tiny",
               input_wh=[48, 64], epochs=1, batch_size=8, workers=0, val_fraction=0.0,
               lr=3e-3, warmup_steps=5, threads=1)  # one thread: fast on a busy machine too
    return TrainConfig(**{**cfg, **kw})


def _fixed_batch_loss(model, specs, stores) -> float:
    sets = [load_dataset(s) for s in specs]
    teachers, skeletons, sources = match_stores([stores], sets)
    weights, decays = teacher_weights(skeletons)
    samples = PoseSamples(sets, (48, 64), teachers, sources, augment=None)
    batch = collate([samples[i] for i in range(0, len(samples), 4)])
    with torch.no_grad():
        loss, _ = total_loss(model.eval()(batch["image"]), batch, teachers, 0.3, weights, decays)
    return float(loss)


def test_training_reduces_the_loss_on_a_fixed_batch(synth, tmp_path):
    specs, stores = synth
    torch.manual_seed(0)
    before = _fixed_batch_loss(build_model("tiny"), specs, stores)
    run = train(_config(specs, stores, tmp_path / "run", epochs=4), progress=False)
    model, saved = load_student(run)
    after = _fixed_batch_loss(model, specs, stores)
    assert after < 0.7 * before, (before, after)
    cfg = TrainConfig.from_dict(saved)
    assert cfg.model == "tiny" and cfg.input_wh == (48, 64)
    assert cfg.kd_weight == {"coco_t": 0.25, "mpii_t": 0.45}
    assert cfg.kd_decay == {"coco_t": "none", "mpii_t": "linear"}
    for name in ("config.toml", "metrics.csv", "loss_curves.png", "last.pt"):
        assert (run / name).is_file(), name
    assert any((run / "tb").iterdir())
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    assert {"gt", "kd/coco_t", "kd/mpii_t", "lr", "samples_per_s"} <= set(rows[0])
    assert [r["epoch"] for r in rows if r["val_loss"] == ""][-1] == "3"


def _state(path: Path) -> dict:
    return load_checkpoint(path)  # weights_only: what a resume gets is plain data


def test_resume_after_sigkill_finishes_exactly(synth, tmp_path):
    specs, stores = synth
    cfg_file = tmp_path / "run.toml"
    lines = [f"data = {specs!r}".replace("'", '"'), f'stores = ["{stores}"]', 'model = "tiny"',
             'input-size = "64x48"', "epochs = 3", "batch-size = 8", "workers = 0",
             "val-fraction = 0.1", "save-every = 1", "lr = 0.003", "warmup-steps = 5",
             "threads = 1"]
    cfg_file.write_text("\n".join(lines) + "\n")
    run = tmp_path / "killed"
    cmd = [str(BIN / "uni"), "train-student", "--config", str(cfg_file), "--out", str(run)]
    # Killed by the test hook after its 7th step (core/killpoints.py): checkpoints exist, epoch 1
    # is not over.
    killed = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "UNI_KILL_AT": "train-step:7"}, timeout=300)
    assert killed.returncode == -signal.SIGKILL
    killed_at = _state(run / "last.pt")
    assert killed_at["epoch"] < 3
    done = subprocess.run(cmd + ["--resume"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    final = _state(run / "last.pt")
    assert final["epoch"] == 3 and final["step"] > killed_at["step"]
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    assert [int(r["epoch"]) for r in rows if r["val_loss"]] == [0, 1, 2]
    steps = [int(r["step"]) for r in rows]
    assert steps == sorted(steps) and len(set(steps)) == len(steps)
    # The same run without the kill ends with the same weights.
    cfg = TrainConfig(data=specs, stores=[str(stores)], out=str(tmp_path / "straight"),
                      model="tiny", input_wh=[48, 64], epochs=3, batch_size=8, workers=0,
                      val_fraction=0.1, lr=0.003, warmup_steps=5, threads=1)
    straight = _state(train(cfg, progress=False) / "last.pt")
    assert straight["step"] == final["step"]
    for k, v in straight["model"].items():
        assert torch.equal(final["model"][k], v), k  # bit for bit


def test_two_process_ddp(synth, tmp_path):
    specs, stores = synth
    run = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cfg = tmp_path / "c.toml"
    cfg.write_text("save-every-s = 1e-9\n")  # rank 0's clock: a checkpoint after every step
    cmd = [str(BIN / "torchrun"), "--nproc-per-node", "2", "--master-port", "29731",
           str(BIN / "uni"), "train-student", "--out", str(run), "--stores", str(stores),
           "--input-size", "64x48", "--epochs", "1", "--batch-size", "8", "--workers", "0",
           "--config", str(cfg)]
    for s in specs:
        cmd += ["--data", s]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    ckpt = _state(run / "last.pt")
    n_train = len(PoseSamples([load_dataset(s) for s in specs], (48, 64))) * 0.95
    per_rank = -(-round(n_train) // 2)
    assert ckpt["epoch"] == 1 and ckpt["step"] == -(-per_rank // 8)
    assert not list(run.glob("*.tmp"))
    assert sum(1 for _ in open(run / "metrics.csv")) >= 2


# --------------------------------------------------------------------------- bad input


def _cli(args: list[str]):
    return CliRunner().invoke(uni, ["train-student", *args])


def test_unknown_config_key(tmp_path, synth):
    cfg = tmp_path / "c.toml"
    cfg.write_text('model = "tiny"\nlearning_rate = 0.1\n')
    one_line_error(_cli(["--config", str(cfg), "--data", synth[0][0], "--out",
                          str(tmp_path / "r")]), f"{cfg}: unknown key 'learning_rate'")
    cfg.write_text("resume = true\n")  # run state: the command line's alone (--resume)
    one_line_error(_cli(["--config", str(cfg), "--data", synth[0][0], "--out",
                          str(tmp_path / "r")]), f"{cfg}: unknown key 'resume'")


def test_a_run_is_rerun_from_its_own_config_toml(synth, tmp_path):
    """RUN/config.toml is a --config file: the same run again in NEW (the new --out wins)
    writes the same config.toml but `out`, and trains to the same weights."""
    specs, stores = synth
    first = train(_config(specs, stores, tmp_path / "first", max_steps=2, kd_beta=8.0,
                          kd_weight={"coco_t": 0.2}, save_every_s=0), progress=False)
    second = tmp_path / "second"
    done = _cli(["--config", str(first / "config.toml"), "--out", str(second)])
    assert done.exit_code == 0, done.output
    a, b = (tomllib.loads((run / "config.toml").read_text()) for run in (first, second))
    assert (a.pop("out"), b.pop("out")) == (str(first), str(second))
    assert a == b and a["kd_beta"] == 8.0 and a["kd_weight"] == {"coco_t": 0.2, "mpii_t": 0.45}
    assert "resume" not in a
    ends = [load_checkpoint(run / "last.pt") for run in (first, second)]
    assert ends[0]["step"] == ends[1]["step"] == 2
    for k, v in ends[0]["model"].items():
        assert torch.equal(ends[1]["model"][k], v), k


def test_store_of_another_dataset_and_store_missing_instances(tmp_path, synth):
    specs, _ = synth
    coco, mpii = (load_dataset(s) for s in specs)
    (tmp_path / "a").mkdir()
    write_analytic_store(tmp_path / "a" / "t__mpii.h5", mpii, "mpii16", "t")
    one_line_error(_cli(["--data", specs[0], "--stores", str(tmp_path / "a"), "--out",
                          str(tmp_path / "r")]), "t__mpii.h5: its dataset")
    ids = [i.instance_id for i in coco.instances][3:]
    write_analytic_store(tmp_path / "b.h5", coco, "coco17", "t", ids=ids)
    one_line_error(_cli(["--data", specs[0], "--stores", str(tmp_path / "b.h5"), "--out",
                          str(tmp_path / "r")]), f"b.h5: missing 3 of {len(coco.instances)}")
    one_line_error(_cli(["--data", specs[0], "--out", str(tmp_path / "r"), "--kd-weight",
                          "nobody=0.3"]), "--kd-weight nobody: no such teacher")


def test_corrupt_image_is_skipped_or_fatal_with_strict(synth_dir, tmp_path):
    shutil.copytree(synth_dir / "coco", tmp_path / "coco")
    spec = f"coco:{tmp_path / 'coco/train.json'}"
    first = load_dataset(spec).instances[0].image_path
    first.write_bytes(b"not a jpeg")
    users = sum(i.image_path == first for i in load_dataset(spec).instances)
    cfg = tmp_path / "c.toml"
    cfg.write_text("max-steps = 200\nval-fraction = 0.0\nthreads = 1\n")
    base = ["--config", str(cfg), "--data", spec, "--input-size", "64x48", "--epochs", "1",
            "--batch-size", "8", "--workers", "0"]
    ok = _cli(base + ["--out", str(tmp_path / "ok")])
    assert ok.exit_code == 0, ok.output
    assert f"skipped {users} unreadable samples; first: {first}" in ok.stderr
    one_line_error(_cli(base + ["--out", str(tmp_path / "strict"), "--strict"]),
                    f"{first}: not a readable image")


def test_help_is_quick():
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", "import uniskel.cli"], capture_output=True,
                         cwd=REPO)
    assert out.returncode == 0
    assert time.perf_counter() - t0 < 5


@pytest.mark.parametrize("args,fragment", [
    (["--gt-weight", "nan"], "config: gt_weight must be a finite number, got nan"),
    (["--kd-weight", "coco_t=inf"], "--kd-weight coco_t: must be a finite number, got inf"),
    (["--lr", "-inf"], "config: lr must be a finite number, got -inf"),
])
def test_non_finite_weights_and_rates_are_refused_before_anything_runs(synth_dir, tmp_path,
                                                                       args, fragment):
    run = tmp_path / "r"
    one_line_error(_cli(["--data", f"coco:{synth_dir / 'coco/train.json'}", "--out", str(run),
                          *args]), fragment)
    assert not run.exists()


def test_a_non_finite_loss_stops_the_run_naming_the_step(synth_dir, tmp_path, monkeypatch):
    """Stopped before the update, in one line; last.pt stays the last good step's."""
    import uniskel.student.train as st

    real, calls = st.total_loss, []

    def poisoned(*args, **kw):  # the third step's loss turns NaN, as a diverging run's would
        loss, terms = real(*args, **kw)
        calls.append(1)
        if len(calls) == 3:
            return loss * float("nan"), {**terms, "total": float("nan")}
        return loss, terms

    cfg = tmp_path / "c.toml"
    cfg.write_text("val-fraction = 0.0\nsave-every = 1\nthreads = 1\n")
    base = ["--config", str(cfg), "--data", f"coco:{synth_dir / 'coco/train.json'}",
            "--input-size", "64x48", "--batch-size", "8", "--workers", "0"]
    run = tmp_path / "nan"
    monkeypatch.setattr(st, "total_loss", poisoned)
    one_line_error(_cli(base + ["--out", str(run)]),
                    f"step 3: the training loss is not finite (total nan); stopped, "
                    f"{run / 'last.pt'} (step 2) is the last good checkpoint")
    monkeypatch.undo()
    kept = load_checkpoint(run / "last.pt")
    assert kept["step"] == 2 and all(v.isfinite().all() for v in kept["model"].values())
    # A real overflow: a finite weight too large for float32 makes the first loss infinite.
    one_line_error(_cli(base + ["--out", str(tmp_path / "inf"), "--gt-weight", "1e39"]),
                    "step 1: the training loss is not finite (total inf); stopped, no "
                    "checkpoint was written")


def test_unified_and_skeleton_file_keys(tmp_path, synth_dir):
    """`skeletons` paths are relative to the config file; a bad `unified` is one line before
    anything is written; `--unified` picks the head."""
    (tmp_path / "cfg").mkdir()
    cfg_file = tmp_path / "cfg" / "run.toml"
    cfg_file.write_text('skeletons = "defs/mine.toml"\nunified = "unified27"\nthreads = 1\n')
    raw = read_config_file(cfg_file)
    assert raw["skeletons"] == [str(tmp_path / "cfg" / "defs" / "mine.toml")]
    cfg = TrainConfig.from_dict({**raw, "data": ["coco:x.json"], "out": "r"})
    assert cfg.unified == "unified27" and cfg.threads == 1
    with pytest.raises(UniError, match="config: unified must be a skeleton name"):
        TrainConfig(data=["coco:x.json"], out="r", unified=27)
    run = tmp_path / "r"
    spec = f"coco:{synth_dir / 'coco/train.json'}"
    one_line_error(_cli(["--data", spec, "--out", str(run), "--unified", "feet99"]),
                    "unknown unified skeleton 'feet99'; known: unified21, unified27")
    assert not run.exists()
    missing = tmp_path / "cfg" / "gone.toml"
    missing.write_text('skeletons = "nowhere.toml"\n')
    one_line_error(_cli(["--config", str(missing), "--data", spec, "--out", str(run)]),
                    "nowhere.toml")
    assert not run.exists()
