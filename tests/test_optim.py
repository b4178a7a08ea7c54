"""Weight-decay groups, the EMA of the weights (formula, state round trip, copy), and the
learning-rate schedules at key steps (RTMPose's against mmengine's chained form)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from uniskel.core.errors import UniError
from uniskel.student.optim import EMA, lr_factor, param_groups, rtmpose_lr_factor


class ScaleNorm(nn.Module):
    """RTMPose's ScaleNorm: one parameter `g`; mmengine does not count it as a norm layer."""

    def __init__(self):
        super().__init__()
        self.g = nn.Parameter(torch.ones(1))

    def forward(self, x):
        return x * self.g


def test_param_groups():
    shared = nn.Linear(4, 4)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4), nn.Conv2d(4, 4, 1),
                          nn.LayerNorm(4), nn.GroupNorm(2, 4), shared, shared, ScaleNorm(),
                          nn.SyncBatchNorm(4))
    frozen = nn.Linear(2, 2).requires_grad_(False)
    model.append(frozen)
    groups = param_groups(model, 0.05)
    wd = {id(p): g["weight_decay"] for g in groups for p in g["params"]}
    assert sum(len(g["params"]) for g in groups) == len(wd)  # each parameter once
    assert wd[id(model[0].weight)] == 0.05 and wd[id(model[2].weight)] == 0.05
    assert wd[id(shared.weight)] == 0.05 and wd[id(model[7].g)] == 0.05
    for p in (model[2].bias, shared.bias, *model[1].parameters(), *model[3].parameters(),
              *model[4].parameters(), *model[8].parameters()):
        assert wd[id(p)] == 0.0
    assert id(frozen.weight) not in wd
    assert len(wd) == 14
    assert all(set(g) == {"params", "weight_decay"} for g in groups)


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))


def test_ema_formula_three_steps():
    model = _net()
    ema = EMA(model, momentum=0.0002, gamma=2000)
    expected = None
    for step in range(3):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.5 * (step + 1))
            model[1].running_mean.add_(1.0)
            model[1].num_batches_tracked.add_(1)
        ema.update(model, step)
        src = {k: v.clone() for k, v in model.state_dict().items()}
        if step == 0:
            expected = src
        else:
            m = (1 - 0.0002) * math.exp(-(1 + step) / 2000) + 0.0002
            expected = {k: (1 - m) * expected[k] + m * src[k]
                        if v.dtype.is_floating_point else expected[k] for k, v in src.items()}
    got = ema.module.state_dict()
    for k, v in expected.items():
        torch.testing.assert_close(got[k], v, rtol=0, atol=1e-6)
    assert got["1.num_batches_tracked"].item() == 1  # integer buffers keep their first copy
    assert ema.steps == 3
    assert ema.momentum_at(1) == pytest.approx(0.9998 * math.exp(-2 / 2000) + 0.0002)
    assert ema.momentum_at(0) == 1.0 and ema.momentum_at(10**6) == pytest.approx(0.0002)


def test_ema_state_round_trip_and_copy():
    model = _net()
    ema = EMA(model)
    for step in range(3):
        with torch.no_grad():
            model[0].weight.mul_(1.5)
        ema.update(model, step)
    other = EMA(_net())
    other.load_state_dict(ema.state_dict())
    assert other.steps == 3
    for k, v in ema.module.state_dict().items():
        torch.testing.assert_close(other.module.state_dict()[k], v, rtol=0, atol=0)
    target = _net()
    ema.copy_to(target)
    torch.testing.assert_close(target[0].weight, ema.module[0].weight)
    assert not any(p.requires_grad for p in ema.module.parameters())
    with pytest.raises(UniError, match="EMA"):
        other.load_state_dict({"steps": 1, "module": nn.Linear(5, 5).state_dict()})
    with pytest.raises(UniError, match="lacks"):
        other.load_state_dict({"module": {}})


def test_lr_factor_key_steps():
    assert lr_factor(0, 10, 100) == pytest.approx(0.1)
    assert lr_factor(9, 10, 100) == pytest.approx(1.0)
    assert lr_factor(10, 10, 100) == pytest.approx(1.0)
    assert lr_factor(55, 10, 100) == pytest.approx(0.505)
    assert lr_factor(100, 10, 100) == pytest.approx(0.01)


def _mmengine_chain(total: int, warmup: int, spe: int, epochs: int) -> list[float]:
    """mmengine's chained LinearLR + CosineAnnealingLR (convert_to_iter_based), base lr 1."""
    start, eta = 1e-5, 0.05
    lin_iters = warmup - 1  # LinearParamScheduler: total_iters = end - begin - 1
    begin, end, t_max = (epochs // 2) * spe, epochs * spe, (epochs // 2) * spe
    lr, out, lin_last, cos_last = 1.0, [], -1, -1
    for g in range(total):
        if g < warmup:
            lin_last += 1
            lr = lr * start if lin_last == 0 else lr * (1 + (1 - start) / (
                lin_iters * start + (lin_last - 1) * (1 - start)))
        if begin <= g < end:
            cos_last += 1
            if cos_last > 0:
                lr = (1 + math.cos(math.pi * cos_last / t_max)) / (
                    1 + math.cos(math.pi * (cos_last - 1) / t_max)) * (lr - eta) + eta
        out.append(lr)
    return out


def test_rtmpose_schedule_matches_mmengine_chain():
    warmup, spe, epochs = 10, 5, 8
    total = spe * epochs
    ref = _mmengine_chain(total, warmup, spe, epochs)
    got = [rtmpose_lr_factor(s, warmup, total, spe, epochs) for s in range(total)]
    for s, (a, b) in enumerate(zip(got, ref, strict=True)):
        assert a == pytest.approx(b, rel=1e-9, abs=1e-12), s


def test_rtmpose_schedule_key_steps():
    spe, epochs = 100, 420
    total = spe * epochs
    f = lambda s: rtmpose_lr_factor(s, 1000, total, spe, epochs)  # noqa: E731
    assert f(0) == pytest.approx(1e-5)
    assert f(999) == pytest.approx(1.0)
    assert f(1000) == f(20999) == 1.0
    assert f(21000) == pytest.approx(1.0)  # the cosine starts at epoch 210
    assert f(21000 + 10500) == pytest.approx(0.05 + 0.95 * 0.5)
    assert f(total) == pytest.approx(0.05)
    assert f(total - 1) == pytest.approx(0.05, abs=1e-6)
