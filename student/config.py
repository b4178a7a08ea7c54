"""The trainer's configuration: defaults, TOML in and out, validation, per-teacher KD weights.

A config is one plain dict (so a checkpoint can carry it and load safely). Keys, as CLI option
names with _ for -:
  data [specs], val_data [specs], stores [paths], out (run dir), model (tiny|small|base),
  input_wh [w, h] (CLI and TOML: input-size "HxW"), epochs, batch_size (per process), lr,
  weight_decay, warmup_steps, workers (DataLoader processes), gt_weight, kd_weight {teacher: w},
  kd_decay {teacher: none|linear}, kd_loss (kl|mse), kd_beta, seed, amp, strict,
  skip_corrupt (train without the instances whose cached targets fail verification),
  val_fraction (held-out slice of the training instances when val_data is empty; 0 = no val),
  save_every (steps between mid-epoch checkpoints; 0 = none by steps), save_every_s (seconds
  between mid-epoch checkpoints, 600 = a kill loses at most ~10 minutes; 0 = none by time;
  last.pt is also written at every epoch end), log_every (steps), max_steps (stop after this
  many optimiser steps; 0 = no limit), resume (bool),
  unified (the run's unified skeleton: "unified21" (default), "unified27", any unified skeleton
  a skeleton file names, or "union" = unified21 + every keypoint of the run's datasets),
  skeletons [skeleton TOML files: skeletons, dataset kinds, unified skeletons; in a config
  file a path is relative to that file], threads (torch threads per training process on a
  CPU; 0 = the cores left after the DataLoader workers).
Keys without a CLI option (weight_decay, warmup_steps, kd_beta, val_fraction, max_steps,
save_every, save_every_s, log_every, skeletons, threads) are set in the --config TOML; README
"Stage two" lists them.
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Callable
from pathlib import Path

import tomli_w

from uniskel.core.errors import UniError
from uniskel.core.files import write_text
from uniskel.core.geometry import parse_input_size
from uniskel.student.losses import KD_DECAYS, KD_LOSSES
from uniskel.student.models import MODELS

DEFAULTS: dict = {
    "data": [], "val_data": [], "stores": [], "out": "", "model": "tiny", "input_wh": [192, 256],
    "epochs": 10, "batch_size": 32, "lr": 2e-3, "weight_decay": 0.01, "warmup_steps": 100,
    "workers": 2, "gt_weight": 0.3, "kd_weight": {}, "kd_decay": {}, "kd_loss": "kl",
    "kd_beta": 10.0, "seed": 0, "amp": False, "strict": False, "skip_corrupt": False,
    "val_fraction": 0.05,
    "save_every": 0, "save_every_s": 600.0, "log_every": 20, "max_steps": 0, "resume": False,
    "unified": "unified21", "skeletons": [], "threads": 0,
}
# The paper's weights (docs/conventions.md "The method") for the two-teacher COCO + MPII setting.
PAPER_KD = {"coco17": (0.25, "none"), "mpii16": (0.45, "linear")}
KD_TOTAL = 0.7


def input_wh(text: str, where: str = "--input-size") -> list[int]:
    """'256x192' (H×W) → [w, h]; UniError naming `where` (the option or file key)."""
    try:
        return list(parse_input_size(text))
    except ValueError as e:
        raise UniError(f"{where}: {e}") from None


def parse_assignments(items: list | dict, option: str, cast: Callable) -> dict:
    """['NAME=VALUE', …] or {NAME: VALUE} → {NAME: cast(VALUE)}."""
    if isinstance(items, dict):
        pairs = list(items.items())
    else:
        pairs = []
        for item in items:
            name, sep, value = str(item).partition("=")
            if not sep or not name:
                raise UniError(f"{option}: expected TEACHER=VALUE, got {item!r}")
            pairs.append((name, value))
    out = {}
    for name, value in pairs:
        try:
            out[str(name)] = cast(value)
        except ValueError:
            raise UniError(f"{option} {name}: bad value {value!r}") from None
    return out


def read_config_file(path: Path) -> dict:
    """A TOML file of option names (- or _) → config dict; UniError on unknown keys."""
    try:
        with open(path, "rb") as f:
            raw = tomllib.load(f)
    except FileNotFoundError:
        raise UniError(f"{path}: config file not found") from None
    except tomllib.TOMLDecodeError as e:
        raise UniError(f"{path}: not valid TOML ({e})") from None
    out = {}
    for key, value in raw.items():
        k = key.replace("-", "_")
        if k == "input_size":
            k, value = "input_wh", input_wh(value, f"{path}: {key}")
        if k not in DEFAULTS or k in ("resume",):
            raise UniError(f"{path}: unknown key {key!r}")
        if k == "skeletons":  # relative to the config file, wherever the run is started
            value = [str(Path(path).parent / v) for v in _strings(value, f"{path}: {key}")]
        out[k] = value
    return out


def read_run_config(path: Path) -> dict:
    """A run directory's config.toml (write_config's output) → config dict."""
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise UniError(f"{path}: unreadable run config ({e})") from None


def write_config(path: Path, cfg: dict) -> None:
    """The resolved config as TOML (tomllib reads it back to the same dict)."""
    write_text(path, tomli_w.dumps(cfg))


def resolve_config(config: dict) -> dict:
    """Defaults filled in, types checked; kd weights/decays are resolved later per teacher."""
    unknown = sorted(set(config) - set(DEFAULTS))
    if unknown:
        raise UniError(f"config: unknown key {unknown[0]!r}")
    cfg = {**DEFAULTS, **{k: v for k, v in config.items() if v is not None}}
    for key in ("data", "val_data", "stores", "skeletons"):
        cfg[key] = [str(v) for v in _strings(cfg[key], f"config: {key}")]
    if not isinstance(cfg["unified"], str) or not cfg["unified"]:
        raise UniError(f"config: unified must be a skeleton name or 'union', "
                       f"got {cfg['unified']!r}")
    if not cfg["data"]:
        raise UniError("config: 'data' needs at least one KIND:ANNOTATIONS spec")
    if not cfg["out"]:
        raise UniError("config: 'out' (the run directory) is required")
    cfg["out"] = str(cfg["out"])
    if cfg["model"] not in MODELS:
        raise UniError(f"config: unknown model {cfg['model']!r}; known: {', '.join(MODELS)}")
    if cfg["kd_loss"] not in KD_LOSSES:
        raise UniError(f"config: kd_loss must be one of {', '.join(KD_LOSSES)}")
    cfg["kd_weight"] = parse_assignments(cfg["kd_weight"], "--kd-weight", float)
    cfg["kd_decay"] = parse_assignments(cfg["kd_decay"], "--kd-decay", str)
    for name, decay in cfg["kd_decay"].items():
        if decay not in KD_DECAYS:
            raise UniError(f"--kd-decay {name}: {decay!r} is not one of {', '.join(KD_DECAYS)}")
    try:
        cfg["input_wh"] = [int(v) for v in cfg["input_wh"]]
        for key in ("epochs", "batch_size", "workers", "seed", "save_every", "log_every",
                    "max_steps", "warmup_steps", "threads"):
            cfg[key] = int(cfg[key])
        for key in ("lr", "weight_decay", "gt_weight", "kd_beta", "val_fraction",
                    "save_every_s"):
            cfg[key] = float(cfg[key])
    except (TypeError, ValueError) as e:
        raise UniError(f"config: bad value ({e})") from None
    _finite(cfg)
    if len(cfg["input_wh"]) != 2 or min(cfg["input_wh"]) < 4:
        raise UniError(f"config: input_wh must be [w, h], got {cfg['input_wh']}")
    if (cfg["epochs"] < 1 or cfg["batch_size"] < 1 or cfg["workers"] < 0
            or cfg["threads"] < 0):
        raise UniError("config: epochs and batch_size must be ≥ 1, workers and threads ≥ 0")
    if not 0.0 <= cfg["val_fraction"] < 1.0:
        raise UniError(f"config: val_fraction must be in [0, 1), got {cfg['val_fraction']}")
    for key in ("amp", "strict", "skip_corrupt", "resume"):
        cfg[key] = bool(cfg[key])
    return cfg


def _strings(value, where: str) -> list:
    """One path/spec or a list of them → a list (UniError for anything else)."""
    if isinstance(value, str | Path):
        return [value]
    if not isinstance(value, list | tuple) or not all(isinstance(v, str | Path) for v in value):
        raise UniError(f"{where}: expected a string or a list of strings, got {value!r}")
    return list(value)


def _finite(cfg: dict) -> None:
    """A NaN or infinite weight or rate would train on garbage (or stop at the first step):
    refused here, before any data is read."""
    for key in ("lr", "weight_decay", "gt_weight", "kd_beta", "save_every_s"):
        if not math.isfinite(cfg[key]):
            raise UniError(f"config: {key} must be a finite number, got {cfg[key]}")
    for name, w in cfg["kd_weight"].items():
        if not math.isfinite(w):
            raise UniError(f"--kd-weight {name}: must be a finite number, got {w}")
    if cfg["save_every_s"] < 0 or cfg["save_every"] < 0:
        raise UniError("config: save_every and save_every_s must be ≥ 0 (0 = off)")


def teacher_weights(cfg: dict, skeletons: dict[str, str]) -> tuple[dict, dict]:
    """Per-teacher KD weight and decay: explicit ones, else the paper's for COCO + MPII, else
    equal weights summing to 0.7 without decay."""
    teachers = sorted(skeletons)
    for option, given in (("--kd-weight", cfg["kd_weight"]), ("--kd-decay", cfg["kd_decay"])):
        for name in given:
            if name not in skeletons:
                raise UniError(f"{option} {name}: no such teacher in the stores "
                               f"(teachers: {', '.join(teachers) or 'none'})")
    paper = (len(teachers) == 2 and sorted(skeletons.values()) == sorted(PAPER_KD))
    weights, decays = {}, {}
    for name in teachers:
        w, d = PAPER_KD[skeletons[name]] if paper else (KD_TOTAL / len(teachers), "none")
        weights[name] = cfg["kd_weight"].get(name, w)
        decays[name] = cfg["kd_decay"].get(name, d)
    return weights, decays
