"""Optimiser pieces: weight-decay parameter groups, the EMA of the weights, and the learning-rate
schedules (factors of the peak rate, for a LambdaLR stepped once per optimiser step).

Sources: open-mmlab/mmengine mmengine/optim/optimizer/default_constructor.py (add_params),
mmengine/model/averaged_model.py, mmengine/hooks/ema_hook.py,
mmengine/optim/scheduler/param_scheduler.py (LinearParamScheduler, CosineAnnealingParamScheduler);
open-mmlab/mmpose v1.3.2 mmpose/engine/hooks/ema_hook.py (ExpMomentumEMA) and
configs/body_2d_keypoint/rtmpose/coco/rtmpose-m_8xb256-420e_coco-256x192.py: optim_wrapper
(lines 12-16: AdamW, weight_decay 0.05 — 0 in rtmpose-t's — paramwise_cfg), param_scheduler
(19-35), custom_hooks EMAHook (216-221; commented out in rtmpose-t's).
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.instancenorm import _InstanceNorm

from uniskel.core.errors import UniError

# mmengine's DefaultOptimWrapperConstructor counts these (and their subclasses, SyncBatchNorm
# included) as norm layers; a module merely named "...Norm" (RTMPose's ScaleNorm) is not one.
_NORMS = (_BatchNorm, _InstanceNorm, nn.GroupNorm, nn.LayerNorm)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Optimiser groups: norm layers' parameters and every `bias` at weight decay 0, the rest
    at `weight_decay` — RTMPose's paramwise_cfg(norm_decay_mult=0, bias_decay_mult=0,
    bypass_duplicate=True): a shared parameter counts once; frozen ones are left out."""
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    seen: set[int] = set()
    for module in model.modules():
        is_norm = isinstance(module, _NORMS)
        for name, param in module.named_parameters(recurse=False):
            if id(param) in seen or not param.requires_grad:
                continue
            seen.add(id(param))
            (no_decay if is_norm or name == "bias" else decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


class EMA:
    """ExpMomentumEMA of a model's weights, as RTMPose's configs use it (EMAHook,
    momentum 0.0002, gamma 2000, update_buffers=True, updated after every optimiser step).

    Update k (k = 0, 1, …): k = 0 copies the model; otherwise, for every floating-point entry
    of the state dict (BatchNorm statistics included),
    avg = (1 - m) · avg + m · x with m = (1 - momentum) · exp(-(1 + k) / gamma) + momentum.
    Integer buffers keep their first copy (mmengine does the same).
    `module` is the averaged model (for evaluation and export); `copy_to` loads it into another.
    """

    def __init__(self, model: nn.Module, momentum: float = 0.0002, gamma: float = 2000.0):
        if not 0.0 < momentum < 1.0 or gamma <= 0:
            raise UniError(f"EMA: momentum must be in (0, 1) and gamma > 0, got {momentum}, "
                           f"{gamma}")
        self.module = copy.deepcopy(model).requires_grad_(False)
        self.momentum = momentum
        self.gamma = gamma
        self.steps = 0  # updates done so far

    def momentum_at(self, step: int) -> float:
        """The weight of the model's values in update `step` (1 at step 0: a copy)."""
        if step == 0:
            return 1.0
        return (1 - self.momentum) * math.exp(-float(1 + step) / self.gamma) + self.momentum

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        """Fold in the model after optimiser step `step` (0-based: the count of earlier
        updates, so a resumed run continues the same sequence)."""
        src = model.state_dict()
        avg = self.module.state_dict()
        if step == 0:
            for k, p in avg.items():
                p.copy_(src[k])
        else:
            m = self.momentum_at(step)
            for k, p in avg.items():
                if p.dtype.is_floating_point:
                    p.mul_(1 - m).add_(src[k].to(p.device), alpha=m)
        self.steps = step + 1

    def copy_to(self, model: nn.Module) -> None:
        """Load the averaged weights into `model` (same architecture)."""
        model.load_state_dict(self.module.state_dict())

    def state_dict(self) -> dict:
        return {"steps": self.steps, "momentum": self.momentum, "gamma": self.gamma,
                "module": self.module.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        """Restore what state_dict returned; UniError when it is no EMA state of this model."""
        if not isinstance(state, dict) or not {"steps", "module"} <= state.keys():
            raise UniError("checkpoint: its EMA state lacks 'steps' or 'module'")
        try:
            self.module.load_state_dict(state["module"])
        except RuntimeError as e:
            first = str(e).strip().splitlines()[0]
            raise UniError(f"checkpoint: its EMA weights do not fit the model ({first})") from None
        self.steps = int(state["steps"])
        self.momentum = float(state.get("momentum", self.momentum))
        self.gamma = float(state.get("gamma", self.gamma))


# ------------------------------------------------------------------ learning-rate schedules


def lr_factor(step: int, warmup: int, total: int) -> float:
    """The learning rate at `step` as a fraction of the peak: linear warm-up over `warmup`
    steps, then cosine down to 1 % at `total`."""
    if step < warmup:
        return (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return 0.01 + 0.99 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, t)))


RTMPOSE_START_FACTOR = 1.0e-5  # LinearLR start_factor
RTMPOSE_ETA_MIN = 0.05  # CosineAnnealingLR eta_min = base_lr * 0.05


def rtmpose_lr_factor(step: int, warmup: int, total: int, steps_per_epoch: int,
                      epochs: int) -> float:
    """RTMPose's schedule at optimiser step `step` (0-based), as a fraction of the base rate.

    rtmpose-*_coco-256x192.py param_scheduler (lines 19-35):
    LinearLR(start_factor=1.0e-5, by_epoch=False, begin=0, end=1000): mmengine's
    total_iters = end - begin - 1, so the factor runs 1e-5 → 1 over steps 0 … warmup-1;
    CosineAnnealingLR(eta_min=base_lr*0.05, begin=max_epochs//2, end=max_epochs,
    T_max=max_epochs//2, by_epoch=True, convert_to_iter_based=True): constant until step
    begin = (epochs // 2) · steps_per_epoch, then cosine by step down to 0.05 at `total`.
    T = total - begin, which is MMPose's T_max for an even epoch count run to the end (all its
    configs); the two parts multiply where they overlap (a run shorter than twice its warm-up).
    """
    factor = 1.0
    if step < warmup:
        factor = RTMPOSE_START_FACTOR + (1 - RTMPOSE_START_FACTOR) * step / max(1, warmup - 1)
    begin = (epochs // 2) * steps_per_epoch
    if step >= begin:
        t = min(step - begin, max(1, total - begin))
        factor *= RTMPOSE_ETA_MIN + (1 - RTMPOSE_ETA_MIN) * 0.5 * (
            1 + math.cos(math.pi * t / max(1, total - begin)))
    return factor
