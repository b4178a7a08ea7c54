"""Student checkpoints: safe loading refuses pickled code, RNG states survive a round trip."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from uniskel.cli import uni
from uniskel.core.errors import UniError
from uniskel.core.skeletons import UNIFIED, Skeleton, unified_skeleton
from uniskel.student.checkpoint import (
    Position,
    TrainState,
    load_checkpoint,
    load_student,
    restore,
    run_name,
    save_checkpoint,
    student_unified,
)
from uniskel.student.config import TrainConfig
from uniskel.student.models import build_model

CFG = TrainConfig(data=["coco:x.json"], out="r", model="tiny", input_wh=[48, 64])


def _mark(path: str) -> None:
    """What a malicious checkpoint would run: here it only leaves a file behind."""
    Path(path).write_text("ran")


class _Payload:
    """Unpickling this calls _mark(marker): any code could stand there."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return _mark, (self.marker,)


def _state(model: torch.nn.Module, scaler: torch.amp.GradScaler | None = None) -> TrainState:
    """A model's training state: AdamW under a LambdaLR, a grad scaler (disabled by default)."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0 / (step + 1))
    return TrainState(model, opt, sched, scaler or torch.amp.GradScaler("cpu", enabled=False))


def _student_state() -> dict:
    return {"model": build_model("tiny").state_dict(),
            "config": {"model": "tiny", "input_wh": [48, 64]}, "unified": UNIFIED.to_json()}


@pytest.mark.parametrize("kind", ["object", "function"])
def test_a_checkpoint_holding_pickled_code_is_refused_in_one_line(tmp_path, data_dir, kind):
    marker = tmp_path / "marker"
    state = _student_state()
    state["extra"] = _Payload(marker) if kind == "object" else _mark
    run = tmp_path / "shared_run"
    run.mkdir()
    torch.save(state, run / "best.pt")

    with pytest.raises(UniError, match="refused") as e:
        load_checkpoint(run / "best.pt")
    assert "\n" not in str(e.value) and str(run / "best.pt") in str(e.value)
    with pytest.raises(UniError, match="refused"):
        load_student(run)
    r = CliRunner().invoke(uni, ["evaluate", str(run), "--data",
                                 f"coco:{data_dir / 'coco/test_coco.json'}"])
    assert r.exit_code == 2, r.output
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("uni: error:") and "refused" in lines[0]
    assert not marker.exists()  # nothing in the pickle ran
    if kind == "object":  # the payload is real: an unsafe load would have run it
        torch.load(run / "best.pt", weights_only=False)
        assert marker.read_text() == "ran"


def test_a_checkpoint_round_trip_restores_model_optimiser_position_and_rng(tmp_path):
    torch.manual_seed(0)
    scaler = torch.amp.GradScaler("cpu", init_scale=512.0, growth_interval=3)
    state = _state(build_model("tiny"), scaler)
    state.model(torch.randn(2, 3, 64, 48)).sum().backward()
    state.opt.step()
    for _ in range(3):
        state.sched.step()
    random.seed(1)
    np.random.seed(2)
    pos = Position(epoch=1, step=7, step_in_epoch=3, best=0.5, sums={"total": 1.5, "gt": 0.5},
                   seen=24, skipped=["a.jpg: not a readable image (coco instance 3)"])
    scaler.scale(torch.ones(1))
    scaler.update(256.0)  # as after a step that overflowed
    save_checkpoint(tmp_path / "last.pt", state, pos, CFG, ["t"], UNIFIED, 0.25)
    ahead = (random.random(), np.random.rand(3), torch.rand(3))

    random.seed(9)
    np.random.seed(9)
    torch.manual_seed(9)
    ckpt = load_checkpoint(tmp_path / "last.pt")
    state2 = _state(build_model("tiny"), torch.amp.GradScaler("cpu"))
    assert restore(ckpt, state2) == pos
    assert state2.scaler.state_dict() == scaler.state_dict() and state2.scaler.get_scale() == 256.0
    assert state2.sched.last_epoch == 3 and state2.sched.get_last_lr() == [1e-3 / 4]
    assert state2.opt.param_groups[0]["lr"] == 1e-3 / 4
    assert (random.random(), *np.random.rand(3), *torch.rand(3).tolist()) == (
        ahead[0], *ahead[1], *ahead[2].tolist())
    for k, v in state.model.state_dict().items():
        assert torch.equal(state2.model.state_dict()[k], v), k
    assert ckpt["val_loss"] == 0.25 and ckpt["teachers"] == ["t"]
    assert TrainConfig.from_dict(ckpt["config"]) == CFG
    assert torch.equal(state2.opt.state_dict()["state"][0]["exp_avg"],
                       state.opt.state_dict()["state"][0]["exp_avg"])
    assert not (tmp_path / "last.pt.tmp").exists()


def test_run_name(tmp_path):
    (tmp_path / "my_run").mkdir()
    assert run_name(tmp_path / "my_run") == "my_run"
    assert run_name(tmp_path / "my_run" / "best.pt") == "my_run"
    assert run_name(Path("best.pt")) == "best"


def test_the_unified_skeleton_travels_with_the_checkpoint(tmp_path):
    """A student of a skeleton no file defines any more (a union) is rebuilt from its
    checkpoint alone, with its U channels; a checkpoint that records none is refused;
    weights that do not fit the recorded skeleton are one line."""
    u23 = unified_skeleton("union", [Skeleton.build("mini3", ["nose", "navel", "chin"], None,
                                                   None, "test")])
    assert u23.num_keypoints == 23 and u23.keypoints[-2:] == ("navel", "chin")
    run = tmp_path / "run"
    run.mkdir()
    save_checkpoint(run / "last.pt", _state(build_model("tiny", u23.num_keypoints)), Position(),
                    CFG, [], u23)
    assert student_unified(run) == u23 == student_unified(load_checkpoint(run / "last.pt"))
    rebuilt, _ = load_student(run)
    assert rebuilt(torch.zeros(1, 3, 64, 48)).shape == (1, 23, 16, 12)
    bare = tmp_path / "bare.pt"
    torch.save({k: v for k, v in _student_state().items() if k != "unified"}, bare)
    with pytest.raises(UniError, match=r"bare\.pt: no 'unified' skeleton recorded"):
        load_student(bare)
    wrong = {**load_checkpoint(run / "last.pt"), "unified": UNIFIED.to_json()}
    torch.save(wrong, tmp_path / "wrong.pt")
    with pytest.raises(UniError, match=r"wrong\.pt: the weights do not fit a tiny student with "
                                       r"21 keypoints \(unified21\)") as e:
        load_student(tmp_path / "wrong.pt")
    assert "\n" not in str(e.value)
