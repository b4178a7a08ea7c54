"""Student checkpoints: find, save atomically, load safely, rebuild the model.

A checkpoint is a dict: model, optimizer, LR scheduler, grad-scaler and EMA (or None) state
dicts, the run's position (epoch, step, step_in_epoch, best validation loss, and mid-epoch the
epoch's running loss sums and the unreadable samples met so far), val_loss, the RNG states, the
resolved config (TrainConfig.to_dict), the teacher names and the run's unified skeleton (its
whole definition, Skeleton.to_json, so a model is rebuilt, evaluated and exported without the
skeleton file it was trained with): everything a resume needs to continue exactly, at an epoch
end or mid-epoch. Everything in it is a tensor or a plain Python value, so it loads with
``torch.load(..., weights_only=True)``: a checkpoint from someone else can be evaluated without
running whatever a pickle might hold; one that holds anything else is refused in one line.
"""

from __future__ import annotations

import math
import pickle
import random
import shutil
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch

from uniskel.core.errors import UniError, io_reason
from uniskel.core.files import atomic_write
from uniskel.core.killpoints import kill_point
from uniskel.core.skeletons import Skeleton
from uniskel.student.config import TrainConfig
from uniskel.student.models import build_model
from uniskel.student.optim import EMA

CHECKPOINT_NAMES = ("best.pt", "last.pt")  # what a run directory offers, in order of preference


@dataclass
class TrainState:
    """What a checkpoint saves and a resume restores besides the position."""

    model: torch.nn.Module
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    ema: EMA | None = None  # the weights' moving average (config ema), None without


@dataclass
class Position:
    """Where a run stands: what a resume needs besides weights, optimiser and RNG states."""

    epoch: int = 0
    step: int = 0  # optimiser steps so far, all epochs
    step_in_epoch: int = 0
    best: float = math.inf  # lowest validation loss so far
    sums: dict[str, float] = field(default_factory=dict)  # loss term → Σ over this epoch's samples
    seen: int = 0  # samples behind `sums` (rank 0's: the ones metrics.csv reports)
    skipped: list[str] = field(default_factory=list)  # unreadable samples, all ranks, in order


def run_name(path: Path) -> str:
    """A model's name from its run directory, or from the folder of a .pt (else its stem)."""
    path = Path(path)
    return path.name if path.is_dir() else path.parent.name or path.stem


def find_checkpoint(path: Path) -> Path:
    """Run directory → its best.pt, else last.pt; a file → itself."""
    path = Path(path)
    if path.is_dir():
        for name in CHECKPOINT_NAMES:
            if (path / name).is_file():
                return path / name
        raise UniError(f"{path}: no best.pt or last.pt in this run directory")
    if not path.is_file():
        raise UniError(f"{path}: checkpoint not found")
    return path


def load_checkpoint(path: Path) -> dict:
    """A checkpoint file → its dict, loaded with weights_only=True (no pickled code runs)."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise UniError(f"{path}: refused: the checkpoint holds objects other than tensors and "
                       "plain values (uni loads checkpoints with weights_only=True)") from None
    except Exception as e:  # torch raises several types for a bad file
        raise UniError(f"{path}: not a readable checkpoint ({io_reason(e, 120)})") from None
    if not isinstance(ckpt, dict) or "model" not in ckpt or "config" not in ckpt:
        raise UniError(f"{path}: not a uni student checkpoint (no 'model' / 'config')")
    return ckpt


def student_unified(ckpt: dict | Path, where: str = "checkpoint") -> Skeleton:
    """The unified skeleton a student was trained with (its output channels, in order), from
    a checkpoint dict (read from `where`) or a run dir / .pt; UniError when it records none."""
    if not isinstance(ckpt, dict):
        path = find_checkpoint(ckpt)
        ckpt = load_checkpoint(path)
        where = str(path)
    if ckpt.get("unified") is None:
        raise UniError(f"{where}: no 'unified' skeleton recorded; not a uni student checkpoint")
    return Skeleton.from_json(ckpt["unified"], f"{where}: unified")


def load_student(path: Path) -> tuple[torch.nn.Module, dict]:
    """Run dir (best.pt, else last.pt) or .pt → (model in eval mode on CPU, config dict).

    config has at least 'model' and 'input_wh' (w, h); heatmaps come out at input / 4, one
    channel per keypoint of the run's unified skeleton (student_unified).
    """
    path = find_checkpoint(path)
    ckpt = load_checkpoint(path)
    cfg = ckpt["config"]
    unified = student_unified(ckpt, str(path))
    model = build_model(cfg["model"], unified.num_keypoints, tuple(cfg["input_wh"]))
    try:
        model.load_state_dict(model_weights(ckpt))
    except RuntimeError as e:  # e.g. a head whose channels disagree with the recorded skeleton
        raise UniError(f"{path}: the weights do not fit a {cfg['model']} student with "
                       f"{unified.num_keypoints} keypoints ({unified.name}): "
                       f"{str(e).splitlines()[0]}") from None
    return model.eval(), cfg


def model_weights(ckpt: dict) -> dict:
    """The weights a checkpoint's model is used with: the moving average when the run kept one
    (as MMPose's EMAHook saves it), else the trained weights."""
    return ckpt["ema"]["module"] if ckpt.get("ema") else ckpt["model"]


def seed_rngs(seed: int) -> None:
    """Python's, numpy's and torch's global RNGs seeded: a run's RNG states are a function of
    its config, whatever the process did before (a resume restores them from its checkpoint)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_states() -> dict:
    """Python's, numpy's and torch's global RNG states, as plain values and a tensor."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {"python": random.getstate(),
            "numpy": (kind, keys.tolist(), pos, has_gauss, gauss),
            "torch": torch.get_rng_state()}


def set_rng_states(states: dict) -> None:
    random.setstate(states["python"])
    kind, keys, pos, has_gauss, gauss = states["numpy"]
    np.random.set_state((kind, np.asarray(keys, np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(states["torch"])


def save_checkpoint(path: Path, state: TrainState, pos: Position, cfg: TrainConfig,
                    teachers: list[str], unified: Skeleton, val_loss: float | None = None) -> None:
    """Write a checkpoint atomically; a full disk is one UniError and the old file is kept.
    `unified`: the skeleton of the model's output channels (recorded whole)."""
    ckpt = {"model": state.model.state_dict(), "optimizer": state.opt.state_dict(),
            "scheduler": state.sched.state_dict(), "scaler": state.scaler.state_dict(),
            "ema": state.ema.state_dict() if state.ema is not None else None,
            **asdict(pos), "val_loss": val_loss, "rng": rng_states(), "config": cfg.to_dict(),
            "teachers": teachers, "unified": unified.to_json()}

    def write(tmp: Path) -> None:
        torch.save(ckpt, tmp)
        kill_point("checkpoint")  # test hook: written, not yet renamed over the old one

    try:
        atomic_write(path, write)
    except (OSError, RuntimeError) as e:  # a full disk (torch says RuntimeError)
        free = shutil.disk_usage(path.parent).free / 1e6
        raise UniError(f"{path}: cannot write the checkpoint ({io_reason(e, 120)}; "
                       f"{free:.0f} MB free); the previous one is kept") from None


def restore(ckpt: dict, state: TrainState) -> Position:
    """Load a checkpoint's model, optimiser, LR scheduler, grad-scaler and RNG states; returns
    its position."""
    state.model.load_state_dict(ckpt["model"])
    state.opt.load_state_dict(ckpt["optimizer"])
    state.sched.load_state_dict(ckpt["scheduler"])
    if ckpt["scaler"]:  # a disabled scaler's state is empty, and loading {} is refused
        state.scaler.load_state_dict(ckpt["scaler"])
    if state.ema is not None:
        state.ema.load_state_dict(ckpt["ema"])
    set_rng_states(ckpt["rng"])
    return Position(**{f.name: ckpt[f.name] for f in fields(Position)})
