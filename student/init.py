"""Starting weights for a student (`--init`): an MMPose checkpoint, an ImageNet/pose-pretrained
CSPNeXt backbone, a uni run, or a plain state dict, loaded in place with keypoint rows mapped by
name onto the run's unified skeleton.

Files load with ``torch.load(weights_only=True)``; the only globals allowed besides torch's are
numpy's array reconstruction (MMPose checkpoints keep numpy arrays in ``meta``). Everything is
checked before anything is copied, so a misfit leaves the model as it was.
"""

from __future__ import annotations

import contextlib
import pickle
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from uniskel.core.errors import UniError, io_reason
from uniskel.core.skeletons import SKELETONS, Skeleton, get_skeleton
from uniskel.student.checkpoint import find_checkpoint, model_weights
from uniskel.student.models import MODELS
from uniskel.student.rtmpose import PER_KEYPOINT_KEYS, RTMPose, arch_from_state_dict

try:
    from numpy._core import multiarray as _np_multiarray
except ImportError:  # numpy < 2
    from numpy.core import multiarray as _np_multiarray

# numpy's array reconstruction, under both module names (files written under numpy 1 name
# numpy.core.multiarray, under numpy 2 numpy._core.multiarray); nothing else is allowed.
_NUMPY_GLOBALS: list = [
    *[(f, f"numpy.{m}.multiarray.{f.__name__}") for f in (_np_multiarray._reconstruct,
                                                          _np_multiarray.scalar)
      for m in ("core", "_core")],
    np.ndarray, np.dtype,
    *[t for t in vars(getattr(np, "dtypes", np)).values()
      if isinstance(t, type) and issubclass(t, np.dtype) and t is not np.dtype],
]
_HEATMAP_ROWS = ("head.weight", "head.bias")  # the heatmap students' per-keypoint rows
# By keypoint count, several built-in skeletons can fit (17: coco17, posetrack17); MMPose's
# 17-keypoint body models are COCO-ordered, so that count means coco17.
_PREFERRED_BY_COUNT = ("coco17",)


@dataclass
class Weights:
    """A weights file read: its state dict (prefixes stripped), the skeleton its metadata
    names (None: none recorded), what it is, and the keys set aside (teacher.*, …)."""

    state: dict[str, Tensor]
    skeleton: Skeleton | None
    kind: str
    ignored: list[str]


def safe_load(path: Path) -> object:
    """torch.load(weights_only=True), numpy arrays allowed; one UniError line otherwise."""
    allow = getattr(torch.serialization, "safe_globals", None)  # torch >= 2.5
    try:
        with allow(_NUMPY_GLOBALS) if allow else contextlib.nullcontext():
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        m = re.search(r"GLOBAL ([\w.]+)", str(e))
        if m:
            raise UniError(f"{path}: holds pickled objects ({m.group(1)}); uni loads weights "
                           "only and will not run code from a checkpoint") from None
        # torch opens with advice to retry with weights_only=False; its reason comes last.
        why = re.search(r"WeightsUnpickler error:\s*(\S[^\n]*)", str(e))
        raise UniError(f"{path}: not a readable checkpoint "
                       f"({why.group(1) if why else io_reason(e, 120)})") from None
    except Exception as e:  # torch raises several types for a file that is no checkpoint
        raise UniError(f"{path}: not a readable checkpoint ({io_reason(e, 120)})") from None


def _meta_skeleton(meta: object, where: str) -> Skeleton | None:
    """The skeleton an MMPose checkpoint's meta.dataset_meta names by its keypoints, if any."""
    dm = meta.get("dataset_meta") if isinstance(meta, dict) else None
    if not isinstance(dm, dict):
        return None
    names = None
    if isinstance(dm.get("keypoint_id2name"), dict):
        id2name = dm["keypoint_id2name"]
        names = [id2name[i] for i in sorted(id2name, key=int)]
    elif isinstance(dm.get("keypoint_name2id"), dict):
        names = sorted(dm["keypoint_name2id"], key=lambda n: int(dm["keypoint_name2id"][n]))
    if not names or not all(isinstance(n, str) for n in names):
        return None
    for sk in SKELETONS.values():
        if list(sk.keypoints) == names:
            return sk
    # Unknown order: keypoints map by their own names.
    return Skeleton.build("checkpoint", names, None, None, f"{where}: meta.dataset_meta")


def read_weights(path: Path) -> Weights:
    """A weights file (or a uni run directory) → Weights; UniError naming the file otherwise."""
    path = Path(path)
    if not path.exists():
        raise UniError(f"{path}: checkpoint not found")
    if path.is_dir():
        path = find_checkpoint(path)
    obj = safe_load(path)
    skeleton, ignored = None, []
    if isinstance(obj, dict) and "model" in obj and "config" in obj:  # a uni run
        state = model_weights(obj)  # the moving average when the run kept one
        cfg = obj["config"]
        kind = f"uni run, model {cfg.get('model') if isinstance(cfg, dict) else '?'}"
        if obj.get("unified") is not None:
            skeleton = Skeleton.from_json(obj["unified"], f"{path}: unified")
    elif isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):  # MMPose / MMEngine
        state, kind = obj["state_dict"], "MMPose checkpoint"
        skeleton = _meta_skeleton(obj.get("meta"), str(path))
    elif isinstance(obj, dict) and obj and all(isinstance(v, Tensor) for v in obj.values()):
        state, kind = obj, "state dict"
    else:
        raise UniError(f"{path}: not a weights checkpoint (expected a uni run, an MMPose "
                       "checkpoint with 'state_dict', or a state dict of tensors)")
    if not isinstance(state, dict):
        raise UniError(f"{path}: its weights are no state dict")
    bad = next((k for k, v in state.items() if not isinstance(k, str)
                or not isinstance(v, Tensor)), None)
    if bad is not None:
        raise UniError(f"{path}: state dict entry {bad!r} is not a tensor")
    if any(k.startswith("module.") for k in state):  # saved from a DDP wrapper
        state = {k.removeprefix("module."): v for k, v in state.items()}
    if any(k.startswith("student.") for k in state):  # a distillation run: keep the student
        ignored = [k for k in state if not k.startswith("student.")]
        state = {k[len("student."):]: v for k, v in state.items() if k.startswith("student.")}
        kind += " (student. of a distillation checkpoint)"
    return Weights(state, skeleton, kind, ignored)


def source_skeleton_for(k: int, chosen: str | None, recorded: Skeleton | None,
                        where: str, option: str = "--init-skeleton") -> Skeleton:
    """The skeleton of a checkpoint's K keypoint rows: `chosen`, else the recorded one, else
    the one built-in skeleton with K keypoints; UniError asking for `option` otherwise."""
    if chosen is not None:
        sk = get_skeleton(chosen)
        how = f"{option} {chosen}"
    elif recorded is not None:
        sk, how = recorded, "its metadata"
    else:
        fits = [s for s in SKELETONS.values() if s.num_keypoints == k]
        preferred = [s for s in fits if s.name in _PREFERRED_BY_COUNT]
        if len(fits) == 1 or preferred:
            return (preferred or fits)[0]
        named = f" ({', '.join(s.name for s in fits)} have {k})" if fits else ""
        raise UniError(f"{where}: {k} keypoints and no skeleton recorded; name it with "
                       f"{option} NAME{named}")
    if sk.num_keypoints != k:
        raise UniError(f"{where}: has {k} keypoint rows but {how} says {sk.name} "
                       f"({sk.num_keypoints} keypoints)")
    return sk


def _found(state: dict[str, Tensor]) -> str:
    """What architecture a state dict holds, in words, for error lines."""
    try:
        arch, k, (w, h) = arch_from_state_dict(state)
        return f"{arch} ({k} keypoints, input {h}x{w} HxW)"
    except UniError:
        pass
    stem = state.get("stem.0.0.weight")
    if stem is not None:
        names = [n for n, m in MODELS.items() if m[0] == stem.shape[0]]
        return f"a uni {names[0]!r} heatmap net" if names else "a uni heatmap net of unknown width"
    if any(k.startswith("backbone.") for k in state):
        return "a backbone of another width or design"
    return "no known architecture"


def _shape_error(where: str, key: str, got: Tensor, want: Tensor, found: str) -> UniError:
    return UniError(f"{where}: {key} is {tuple(got.shape)} in the checkpoint, "
                    f"{tuple(want.shape)} in the model; the checkpoint holds {found}")


def init_weights(path: Path, model: nn.Module, model_name: str, unified: Skeleton,
                 source_skeleton: str | None = None) -> str:
    """Load starting weights from `path` into `model` (a uni student for `unified`) in place.

    Keypoint rows map by name (Skeleton.to) from the checkpoint's skeleton; unified keypoints
    it lacks stay fresh (RTMPose: zero rows, so the mapped keypoints predict exactly what the
    checkpoint's model predicts — the GAU's zero tokens carry v = 0). Returns one line.
    """
    w = read_weights(path)
    where = str(path)
    target = model.state_dict()
    is_rtm = isinstance(model, RTMPose)
    rows_keys = PER_KEYPOINT_KEYS if is_rtm else _HEATMAP_ROWS
    state, ignored = dict(w.state), list(w.ignored)
    kind = w.kind
    if is_rtm:
        rtm_head = any(k.startswith(("head.cls_x", "head.gau")) for k in state)
        if rtm_head:  # a whole RTMPose: same arch and input size, every key
            try:
                arch, _, (cw, ch) = arch_from_state_dict(state)
            except UniError:
                raise UniError(f"{where}: not an RTMPose checkpoint for {model_name}; it holds "
                               f"{_found(state)}") from None
            if arch != model.arch:
                raise UniError(f"{where}: holds {_found(state)}, not {model_name}")
            if (cw, ch) != model.input_wh:
                mw, mh = model.input_wh
                key = "head.cls_x.weight" if cw != mw else "head.cls_y.weight"
                raise UniError(f"{where}: {key} {tuple(state[key].shape)}: the checkpoint's "
                               f"input size is {ch}x{cw} (HxW), the model's {mh}x{mw}")
        elif any(k.startswith("backbone.") for k in state):  # backbone only; head stays fresh
            ignored += [k for k in state if not k.startswith("backbone.")]
            state = {k: v for k, v in state.items() if k.startswith("backbone.")}
            target = {k: v for k, v in target.items() if k.startswith("backbone.")}
            kind += ", backbone only"
        else:
            raise UniError(f"{where}: holds {_found(state)}, not an RTMPose or CSPNeXt "
                           f"checkpoint for {model_name}")
        ignored += [k for k in state if not k.startswith(("backbone.", "head."))]
        state = {k: v for k, v in state.items() if k.startswith(("backbone.", "head."))}
    found = _found(state)
    for key, want in target.items():  # shapes first: a width mismatch shows at the stem
        got = state.get(key)
        if got is None:
            continue
        same = got.shape[1:] == want.shape[1:] if key in rows_keys else got.shape == want.shape
        if not same or got.ndim != want.ndim:
            raise _shape_error(where, key, got, want, found)
    missing = [k for k in target if k not in state]
    extra = [k for k in state if k not in target]
    if missing or extra:
        what = f"lacks {missing[0]}" if missing else f"has {extra[0]}, which {model_name} has not"
        raise UniError(f"{where}: {what}; the checkpoint holds {found}, the model is "
                       f"{model_name}")
    new: dict[str, Tensor] = {k: state[k] for k in target if k not in rows_keys}
    row_text = "head fresh"
    if rows_keys[0] in target:
        k_src = state[rows_keys[0]].shape[0]
        src_sk = source_skeleton_for(k_src, source_skeleton, w.skeleton, where)
        index = src_sk.to(unified)  # source row → unified row, None where absent
        pairs = [(i, u) for i, u in enumerate(index) if u is not None]
        for key in rows_keys:
            rows = torch.zeros_like(target[key]) if is_rtm else target[key].clone()
            for i, u in pairs:
                rows[u] = state[key][i]
            new[key] = rows
        fresh = unified.num_keypoints - len(pairs)
        dropped = k_src - len(pairs)
        row_text = (f"{len(pairs)} of {unified.num_keypoints} keypoint rows mapped by name from "
                    f"{src_sk.name}, {fresh} fresh{' (zero)' if is_rtm and fresh else ''}"
                    + (f", {dropped} of its keypoints unused" if dropped else ""))
    with torch.no_grad():  # everything checked: now copy
        for key, value in new.items():
            target[key].copy_(value.to(target[key].dtype))
    groups = Counter(".".join(k.split(".")[:2]) + ".*" for k in ignored)
    ign = ", ".join(f"{g} ({n})" for g, n in groups.most_common(4)) or "nothing"
    if len(groups) > 4:
        ign += ", …"
    return (f"loaded {where} ({kind}) into {model_name}: {len(new)} tensors; {row_text}; "
            f"ignored {ign}")
