"""The trainer's configuration, TrainConfig: its fields and defaults, TOML in and out, checks,
and the per-teacher KD weights.

Each field is a key of a --config TOML file (- or _ alike) and, where its metadata says so, a
`uni train-student` option of the same name (cli.TrainCommand makes them from the fields;
input_wh is --input-size "HxW" there and input-size in a file); its `help` says what it means.
TrainConfig converts and checks its values when it is made (__post_init__: the one place), so a
config that exists is a valid one. A checkpoint carries it as to_dict()'s plain dict, which
loads with weights_only=True.

Read back: a run writes its resolved config to RUN/config.toml (to_toml), which is itself a
--config file, so `uni train-student --config RUN/config.toml --out NEW` trains the same run
again in NEW. `out` in a file is a default like any other key: the command line's --out wins.
`resume` is the one field no file holds (to_toml leaves it out, a file naming it is refused):
whether to continue OUT is this invocation's choice (--resume), never the configuration's.
"""

from __future__ import annotations

import math
import os
import tomllib
from collections.abc import Callable
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path, PurePath
from typing import get_type_hints

import tomli_w

from uniskel.core.errors import UniError
from uniskel.core.files import check_output_path, write_text
from uniskel.core.sizes import parse_input_size

# student/models.py's heatmap nets (MODELS), then student/rtmpose.py's RTMPOSE_ARCHS, in order.
MODEL_SIZES = ("tiny", "small", "base", "rtmpose-t", "rtmpose-s", "rtmpose-m")
SCHEDULES = ("cosine", "rtmpose")
AUGMENTS = ("mmpose", "rtmpose")
# Training recipes: the defaults of the fields a config leaves unset (None). "uni" is the heatmap
# nets' own; "rtmpose" is MMPose's RTMPose recipe (configs/body_2d_keypoint/rtmpose/coco/
# rtmpose-t_8xb256-420e_coco-256x192.py; docs/conventions.md "RTMPose students").
RECIPES: dict[str, dict] = {
    "uni": dict(lr=2e-3, weight_decay=0.01, warmup_steps=100, schedule="cosine",
                augment="mmpose", ema=False, clip_grad=0.0, decay_norm_bias=True, sync_bn=False),
    "rtmpose": dict(lr=4e-3, weight_decay=0.05, warmup_steps=1000, schedule="rtmpose",
                    augment="rtmpose", ema=True, clip_grad=0.0, decay_norm_bias=False,
                    sync_bn=True),
}
# Where MMPose's per-size configs differ from rtmpose-m's (the recipe above): rtmpose-t's has
# weight decay 0 and its EMAHook commented out, rtmpose-s's weight decay 0.
RTMPOSE_SIZES: dict[str, dict] = {"rtmpose-t": dict(weight_decay=0.0, ema=False),
                                  "rtmpose-s": dict(weight_decay=0.0)}
KD_LOSSES = ("kl", "mse")
KD_DECAYS = ("none", "linear")
RUN_STATE = ("resume",)  # fields that are the invocation's, not the configuration's
# The paper's weights (docs/conventions.md "The method") for the two-teacher COCO + MPII setting.
PAPER_KD = {"coco17": (0.25, "none"), "mpii16": (0.45, "linear")}
KD_TOTAL = 0.7
VAL_FRACTION = 0.05


def _key(default, help: str = "", option: bool | str = True, shown: str | None = None,
         choices: tuple[str, ...] | None = None):
    """A TrainConfig field: its default, what it means, and its train-student option (True: the
    field's name; a string: that option name; False: set in a --config file only). `shown`:
    --help's default where the value alone would not say it."""
    meta = {"help": help, "option": option, "shown": shown, "choices": choices}
    if isinstance(default, dict):
        return field(default_factory=dict, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class TrainConfig:
    """One training run's configuration (see the module docstring for files and options)."""

    data: tuple[str, ...] = _key((), "KIND:ANN[:IMAGES] training data; repeat.")
    val_data: tuple[str, ...] = _key((), "Validation data (GT loss picks best.pt).",
                                     shown=f"{100 * VAL_FRACTION:g} % of --data held out")
    stores: tuple[str, ...] = _key(
        (), "Teacher stores (folders of *.h5 or files); none = ground truth only.")
    out: str = _key("", "Run directory (required).", shown=False)
    model: str = _key("tiny", "Student: heatmap nets tiny ≈1M, small ≈5M, base ≈16M parameters; "
                      "RTMPose (CSPNeXt + SimCC head, MMPose's) rtmpose-t 3.3M, -s 5.5M, "
                      "-m 13.6M.", choices=MODEL_SIZES)
    init: str = _key("", "Start from these weights: an MMPose RTMPose checkpoint (.pth), a "
                     "CSPNeXt backbone, a uni run or a state dict; keypoint rows map by name.",
                     shown="fresh weights")
    init_skeleton: str = _key("", "The --init checkpoint's skeleton, where it records none and "
                              "its keypoint count is ambiguous.", shown="from the checkpoint")
    input_wh: tuple[int, int] = _key(
        (192, 256), "Crop size HxW, as papers write it (256x192: 256 high).",
        option="--input-size")
    epochs: int = _key(10)
    batch_size: int = _key(32, "Per process.")
    recipe: str = _key("", "Defaults for lr, weight_decay, warmup_steps, schedule, augment, ema, "
                       "clip_grad, decay_norm_bias: uni or rtmpose (MMPose's RTMPose recipe).",
                       shown="rtmpose for rtmpose-*, else uni", choices=tuple(RECIPES))
    lr: float | None = _key(None, "AdamW peak learning rate.",
                            shown=f"{RECIPES['uni']['lr']:g} (uni), "
                            f"{RECIPES['rtmpose']['lr']:g} (rtmpose)")
    weight_decay: float | None = _key(None, "AdamW weight decay.", option=False)
    warmup_steps: int | None = _key(None, "Linear warm-up steps (at most a tenth of the run's).",
                                    option=False)
    schedule: str | None = _key(None, "cosine: warm-up, cosine to 1 %; rtmpose: warm-up, flat "
                                "to half the epochs, cosine to 5 % (by step).", option=False,
                                choices=SCHEDULES)
    augment: str | None = _key(None, "mmpose: flip, shift, scale, rotate (HRNet ranges); "
                               "rtmpose: + half-body, truncated normals, HSV, blur, dropout.",
                               shown="mmpose (uni), rtmpose (rtmpose)", choices=AUGMENTS)
    ema: bool | None = _key(None, "Keep an exponential moving average of the weights (MMPose's "
                            "ExpMomentumEMA); checkpoints' evaluated weights are the average.",
                            option=False)
    clip_grad: float | None = _key(None, "Clip the gradients' global norm; 0 = no clipping.",
                                   option=False)
    decay_norm_bias: bool | None = _key(None, "Weight decay on norm layers and biases too "
                                        "(RTMPose: no).", option=False)
    sync_bn: bool | None = _key(None, "BatchNorm statistics over all GPUs of a DDP run "
                                "(SyncBatchNorm, as RTMPose's configs); CPU runs keep "
                                "per-process BatchNorm (gloo has no SyncBatchNorm).", option=False)
    sample_ratio: dict[str, float] = _key(
        {}, "KIND=F; repeat: each dataset of that kind gives round(len × F) persons per epoch "
        "(MMPose's sample_ratio_factor).", shown="every person once")
    workers: int = _key(2, "DataLoader worker processes.")
    gt_weight: float = _key(0.3, "Ground-truth loss weight.")
    kd_weight: dict[str, float] = _key(
        {}, "TEACHER=W; repeat.", shown="0.25 COCO / 0.45 MPII teacher, else 0.7 shared equally")
    kd_decay: dict[str, str] = _key({}, "TEACHER=none|linear; repeat.",
                                    shown="linear for the MPII teacher, else none")
    kd_loss: str = _key("kl", "kl: spatial-softmax KL at temperature 1/kd-beta.",
                        choices=KD_LOSSES)
    kd_beta: float = _key(10.0, "KL sharpening: softmax(β · heatmap).", option=False)
    seed: int = _key(0)
    amp: bool = _key(False, "bf16 autocast on CPU, fp16 on CUDA.")
    strict: bool = _key(False, "An unreadable image is fatal.")
    skip_corrupt: bool = _key(
        False, "Train without the instances whose cached targets fail verification.",
        shown="refuse such a store")
    val_fraction: float = _key(VAL_FRACTION, "Held-out slice of the training instances when "
                               "there is no val_data; 0 = no validation.", option=False)
    save_every: int = _key(0, "Steps between mid-epoch checkpoints; 0 = none by steps.",
                           option=False)
    save_every_s: float = _key(600.0, "Seconds between mid-epoch checkpoints (a kill loses at "
                               "most that much work); 0 = none by time. last.pt is also "
                               "written at every epoch end.", option=False)
    log_every: int = _key(20, "Steps between metrics rows.", option=False)
    max_steps: int = _key(0, "Stop after this many optimiser steps; 0 = no limit.", option=False)
    resume: bool = _key(False, "Continue OUT/last.pt exactly, as configured; no checkpoint yet: "
                        "start OUT.")
    unified: str = _key("unified21", "The student's unified skeleton: unified21, unified27, one "
                        "a skeleton file defines, or union (unified21 + every keypoint of the "
                        "--data datasets).")
    skeletons: tuple[str, ...] = _key((), "Skeleton TOML files (skeletons, dataset kinds, "
                                      "unified skeletons); in a file, relative to it.",
                                      option=False)
    threads: int = _key(0, "Torch threads per training process on a CPU; 0 = the cores left "
                        "after the DataLoader workers.", option=False)

    def __post_init__(self) -> None:
        for f in fields(self):
            object.__setattr__(self, f.name, _convert(f.name, getattr(self, f.name)))
        # The recipe fills what the config leaves unset, so a resolved config (config.toml, a
        # checkpoint's) holds every value and reads back the same whatever the defaults become.
        if not self.recipe:
            object.__setattr__(self, "recipe", "rtmpose" if self.model.startswith("rtmpose")
                               else "uni")
        if self.recipe not in RECIPES:
            raise UniError(f"config: recipe must be one of {', '.join(RECIPES)}, got "
                           f"{self.recipe!r}")
        recipe = RECIPES[self.recipe]
        if self.recipe == "rtmpose":
            recipe = {**recipe, **RTMPOSE_SIZES.get(self.model, {})}
        for name, value in recipe.items():
            if getattr(self, name) is None:
                object.__setattr__(self, name, _convert(name, value))
        _check(self)

    @classmethod
    def from_dict(cls, raw: dict, where: str = "config") -> TrainConfig:
        """Field name → value (None = the default); UniError naming `where` on unknown keys."""
        for key in raw:
            if key not in DEFAULTS:
                raise UniError(f"{where}: unknown key {key!r}")
        return cls(**{k: v for k, v in raw.items() if v is not None})

    def to_dict(self) -> dict:
        """Plain values (lists, dicts), every field: what a checkpoint holds."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    def to_toml(self) -> str:
        """The config as a --config file (tomllib reads it back to to_dict() but run state)."""
        return tomli_w.dumps({k: v for k, v in self.to_dict().items() if k not in RUN_STATE})


HINTS = get_type_hints(TrainConfig)
DEFAULTS: dict = {  # field → default, as plain values (lists), like to_dict's
    f.name: list(f.default) if isinstance(f.default, tuple)
    else f.default_factory() if f.default is MISSING else f.default
    for f in fields(TrainConfig)}


def field_type(name: str) -> type:
    """A field's declared type, without the None of a recipe-filled field (float | None → float)."""
    hint = HINTS[name]
    args = [a for a in getattr(hint, "__args__", ()) if a is not type(None)]
    return args[0] if type(None) in getattr(hint, "__args__", ()) else hint


def _convert(name: str, value):
    """A field's value as its declared type: sequences → tuples, numbers cast, TEACHER=VALUE
    items parsed, skeleton files made absolute (a config.toml is read back from anywhere);
    other strings are checked (_check), not converted, but a path becomes its str. None stays
    None (a recipe-filled field not set)."""
    if value is None:
        return None
    hint = field_type(name)
    try:
        if hint is bool:
            return bool(value)
        if hint in (int, float):
            return hint(value)
        if hint == tuple[int, int]:
            return tuple(int(v) for v in value)
    except (TypeError, ValueError) as e:
        raise UniError(f"config: bad value ({e})") from None
    if hint == tuple[str, ...]:
        values = [str(v) for v in _strings(value, f"config: {name}")]
        return tuple(os.path.abspath(v) for v in values) if name == "skeletons" else tuple(values)
    if hint in (dict[str, float], dict[str, str]):
        return parse_assignments(value, "--" + name.replace("_", "-"), hint.__args__[1])
    return str(value) if isinstance(value, PurePath) else value


def _check(c: TrainConfig) -> None:
    """The rules every config keeps (kd weights and decays per teacher: teacher_weights)."""
    if not isinstance(c.unified, str) or not c.unified:
        raise UniError(f"config: unified must be a skeleton name or 'union', got {c.unified!r}")
    if not c.data and not c.resume:
        raise UniError("config: 'data' needs at least one KIND:ANNOTATIONS spec")
    if not c.out:
        raise UniError("config: 'out' (the run directory) is required")
    if c.model not in MODEL_SIZES:
        raise UniError(f"config: unknown model {c.model!r}; known: {', '.join(MODEL_SIZES)}")
    for key, known in (("schedule", SCHEDULES), ("augment", AUGMENTS)):
        if getattr(c, key) not in known:
            raise UniError(f"config: {key} must be one of {', '.join(known)}, got "
                           f"{getattr(c, key)!r}")
    if c.clip_grad < 0 or c.warmup_steps < 0:
        raise UniError("config: clip_grad and warmup_steps must be ≥ 0")
    for kind, f in c.sample_ratio.items():
        if not (math.isfinite(f) and f > 0):
            raise UniError(f"--sample-ratio {kind}: must be a positive number, got {f}")
    if c.kd_loss not in KD_LOSSES:
        raise UniError(f"config: kd_loss must be one of {', '.join(KD_LOSSES)}")
    if c.model.startswith("rtmpose") and c.kd_loss != "kl":
        raise UniError(f"config: kd_loss {c.kd_loss!r} is for heatmap students; RTMPose "
                       "students distil with the paper's SimCC KL (kd_loss kl)")
    for name, decay in c.kd_decay.items():
        if decay not in KD_DECAYS:
            raise UniError(f"--kd-decay {name}: {decay!r} is not one of {', '.join(KD_DECAYS)}")
    _finite(c)
    if len(c.input_wh) != 2 or min(c.input_wh) < 4:
        raise UniError(f"config: input_wh must be [w, h], got {list(c.input_wh)}")
    if c.epochs < 1 or c.batch_size < 1 or c.workers < 0 or c.threads < 0:
        raise UniError("config: epochs and batch_size must be ≥ 1, workers and threads ≥ 0")
    if not 0.0 <= c.val_fraction < 1.0:
        raise UniError(f"config: val_fraction must be in [0, 1), got {c.val_fraction}")


def _finite(c: TrainConfig) -> None:
    """A NaN or infinite weight or rate would train on garbage (or stop at the first step):
    refused here, before any data is read."""
    for key in ("lr", "weight_decay", "gt_weight", "kd_beta", "save_every_s", "clip_grad"):
        if not math.isfinite(getattr(c, key)):
            raise UniError(f"config: {key} must be a finite number, got {getattr(c, key)}")
    for name, w in c.kd_weight.items():
        if not math.isfinite(w):
            raise UniError(f"--kd-weight {name}: must be a finite number, got {w}")
    if c.save_every_s < 0 or c.save_every < 0:
        raise UniError("config: save_every and save_every_s must be ≥ 0 (0 = off)")


def _strings(value, where: str) -> list:
    """One path/spec or a list of them → a list (UniError for anything else)."""
    if isinstance(value, str | PurePath):
        return [value]
    if not isinstance(value, list | tuple) or not all(isinstance(v, str | PurePath)
                                                      for v in value):
        raise UniError(f"{where}: expected a string or a list of strings, got {value!r}")
    return list(value)


def input_wh(text: str, where: str = "--input-size") -> tuple[int, int]:
    """'256x192' (H×W) → (w, h); UniError naming `where` (the option or file key)."""
    try:
        return parse_input_size(text)
    except ValueError as e:
        raise UniError(f"{where}: {e}") from None


def parse_assignments(items: list | tuple | dict, option: str, cast: Callable) -> dict:
    """['NAME=VALUE', …] or {NAME: VALUE} → {NAME: cast(VALUE)}."""
    if isinstance(items, dict):
        pairs = list(items.items())
    else:
        pairs = []
        for item in items:
            name, sep, value = str(item).partition("=")
            if not sep or not name:
                raise UniError(f"{option}: expected NAME=VALUE, got {item!r}")
            pairs.append((name, value))
    out = {}
    for name, value in pairs:
        try:
            out[str(name)] = cast(value)
        except ValueError:
            raise UniError(f"{option} {name}: bad value {value!r}") from None
    return out


def read_config_file(path: Path) -> dict:
    """A --config TOML file → {field: value} (input-size "HxW" → input_wh; skeleton files
    relative to the file); UniError naming the file and key for a key that is no field's."""
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
        if k not in DEFAULTS or k in RUN_STATE:
            raise UniError(f"{path}: unknown key {key!r}")
        if k == "skeletons":  # relative to the config file, wherever the run is started
            value = [str(Path(path).parent / v) for v in _strings(value, f"{path}: {key}")]
        out[k] = value
    return out


def write_config(path: Path, cfg: TrainConfig) -> None:
    """RUN/config.toml: the resolved config, a --config file for the same run."""
    write_text(path, cfg.to_toml())


def command_config(file: Path | None, given: dict) -> TrainConfig:
    """`uni train-student`'s config: the fields' defaults < the --config FILE < `given` (the
    options given on the command line, by field name). Resuming, OUT/config.toml comes first,
    so what neither gives (workers, threads) stays as the run was configured."""
    raw = {**(read_config_file(file) if file else {}), **given}
    if "out" not in raw:
        raise UniError("--out RUN_DIR is required")
    out = Path(str(raw["out"]))
    check_output_path(out, "out")  # also when it came from --config
    if given.get("resume"):
        if (out / "config.toml").is_file():
            raw = {**read_config_file(out / "config.toml"), **raw}
    elif not raw.get("data"):
        raise UniError("--data is required (KIND:ANNOTATIONS[:IMAGES]; repeat for more)")
    return TrainConfig.from_dict(raw)


def teacher_weights(skeletons: dict[str, str], kd_weight: dict | None = None,
                    kd_decay: dict | None = None) -> tuple[dict, dict]:
    """Per-teacher KD weight and decay ({teacher: skeleton} → two {teacher: value}): the given
    ones, else the paper's for COCO + MPII, else equal weights summing to 0.7 without decay."""
    kd_weight, kd_decay = kd_weight or {}, kd_decay or {}
    teachers = sorted(skeletons)
    for option, given in (("--kd-weight", kd_weight), ("--kd-decay", kd_decay)):
        for name in given:
            if name not in skeletons:
                raise UniError(f"{option} {name}: no such teacher in the stores "
                               f"(teachers: {', '.join(teachers) or 'none'})")
    paper = (len(teachers) == 2 and sorted(skeletons.values()) == sorted(PAPER_KD))
    weights, decays = {}, {}
    for name in teachers:
        w, d = PAPER_KD[skeletons[name]] if paper else (KD_TOTAL / len(teachers), "none")
        weights[name] = kd_weight.get(name, w)
        decays[name] = kd_decay.get(name, d)
    return weights, decays
