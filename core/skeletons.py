"""Skeletons as data: native keypoint orders, their names in the unified vocabulary, OKS sigmas,
flip pairs, the unified skeletons, and dataset kinds.

The definitions live in core/skeletons.toml (built in) and in users' TOML files
(`load_skeleton_file`, parsed and checked by core/skeleton_defs.py); this module holds what
is known and maps keypoints between skeletons by name (facts: docs/conventions.md "Unified
skeleton", "Dataset mappings" and "Metrics").
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from importlib.resources import files
from pathlib import Path

import numpy as np

from uniskel.core.errors import UniError
from uniskel.core.skeleton_defs import (
    DEFAULT_UNIFIED,
    DatasetKind,
    Definitions,
    Skeleton,
    parse_definitions,
    read_toml,
)

__all__ = ["DatasetKind", "Skeleton", "UNIFIED", "NUM_UNIFIED", "UNIFIED_NAMES", "UNIFIED_SIGMAS",
           "SKELETONS", "get_skeleton", "known_skeletons", "get_kind", "known_kinds",
           "known_unified", "unified_skeleton", "load_skeleton_file", "native_to_unified",
           "unified_to_native"]

# Live registries: user files add to them (existing code reads SKELETONS directly).
SKELETONS: dict[str, Skeleton] = {}
_UNIFIED_KNOWN: dict[str, Skeleton] = {}
_KINDS: dict[str, DatasetKind] = {}
_ORIGIN: dict[tuple[int, str], str] = {}  # (id of its registry, name) → the file defining it


def _register(defs: Definitions, src: str) -> None:
    """Add a file's definitions, all or none: a name already known must be defined the same."""
    checks = [("unified", n, sk, _UNIFIED_KNOWN) for n, sk in defs.unified.items()]
    checks += [(t, n, sk, SKELETONS) for t, d in (("unified", defs.unified),
                                                  ("skeletons", defs.skeletons))
               for n, sk in d.items()]
    checks += [("kinds", n, kind, _KINDS) for n, kind in defs.kinds.items()]
    for table, name, value, known in checks:
        if name in known and known[name] != value:
            raise UniError(f"{src}: {table}.{name}: redefines {name!r} from "
                           f"{_ORIGIN[id(known), name]} differently; choose another name")
    for _, name, value, known in checks:
        if name not in known:
            known[name] = value
            _ORIGIN[id(known), name] = src


_BUILTIN = files(__package__) / "skeletons.toml"
_register(parse_definitions(read_toml(_BUILTIN, str(_BUILTIN)), str(_BUILTIN), {}),
          "the built-in definitions")

UNIFIED: Skeleton = _UNIFIED_KNOWN["unified21"]
DEFAULT_UNIFIED.append(UNIFIED)
UNIFIED_NAMES: tuple[str, ...] = UNIFIED.keypoints
UNIFIED_SIGMAS: np.ndarray = np.array(UNIFIED.sigmas, dtype=np.float64)  # (21,)
NUM_UNIFIED = UNIFIED.num_keypoints


def load_skeleton_file(path: Path) -> None:
    """Add a user's skeletons, unified skeletons and dataset kinds (TOML, the tables of
    core/skeletons.toml); UniError naming the file and the field, nothing added then."""
    src = str(path)
    defs = parse_definitions(read_toml(Path(path), src), src, SKELETONS)
    _register(defs, src)


def known_skeletons() -> dict[str, Skeleton]:
    return dict(SKELETONS)


def known_unified() -> dict[str, Skeleton]:
    """The named unified skeletons (unified21, unified27, users')."""
    return dict(_UNIFIED_KNOWN)


def known_kinds() -> dict[str, DatasetKind]:
    return dict(_KINDS)


def get_skeleton(name: str) -> Skeleton:
    if name not in SKELETONS:
        raise UniError(f"unknown skeleton {name!r}; known: {', '.join(SKELETONS)}")
    return SKELETONS[name]


def get_kind(name: str) -> DatasetKind:
    if name not in _KINDS:
        raise UniError(f"unknown dataset kind {name!r}; known: {', '.join(_KINDS)}")
    return _KINDS[name]


# Sigma of a union keypoint that no skeleton gives one: .08, the value the unified skeleton
# already uses for points COCO does not define (docs/conventions.md "Metrics").
_DEFAULT_SIGMA = 0.08


def unified_skeleton(choice: str, skeletons: Sequence[Skeleton] = ()) -> Skeleton:
    """The run's unified skeleton: a named one ("unified21", the default; "unified27"; users'),
    or "union": unified21 followed by every canonical name of `skeletons` it lacks, in
    first-seen order, each with the sigma of the first skeleton defining one."""
    if choice in _UNIFIED_KNOWN:
        return _UNIFIED_KNOWN[choice]
    if choice != "union":
        raise UniError(f"unknown unified skeleton {choice!r}; known: "
                       f"{', '.join([*_UNIFIED_KNOWN, 'union'])}")
    names, sigmas = list(UNIFIED.keypoints), list(UNIFIED.sigmas)
    for sk in skeletons:
        for c in sk.canonical:
            if c is not None and c not in names:
                names.append(c)
                sigmas.append(next((s.sigmas[s.canonical.index(c)] for s in skeletons
                                    if s.sigmas is not None and c in s.canonical),
                                   _DEFAULT_SIGMA))
    union = Skeleton.build(f"union{len(names)}", names, None, sigmas, "union")
    for named in _UNIFIED_KNOWN.values():  # the union of coco17 and halpe26 is unified27
        if named.keypoints == union.keypoints and named.sigmas == union.sigmas:
            return named
    return union


@lru_cache(maxsize=512)
def _pairs(native: Skeleton, unified: Skeleton) -> tuple[np.ndarray, np.ndarray]:
    """(src, dst) int arrays: native index src[i] is unified index dst[i]."""
    idx = native.to(unified)
    src = np.array([i for i, u in enumerate(idx) if u is not None], dtype=np.intp)
    return src, np.array([idx[i] for i in src], dtype=np.intp)


def native_to_unified(keypoints: np.ndarray, skeleton: Skeleton,
                      unified: Skeleton = UNIFIED) -> np.ndarray:
    """(..., K, C) native → (..., U, C) unified; unified keypoints it lacks stay 0."""
    src, dst = _pairs(skeleton, unified)
    return _moved(keypoints, src, dst, unified.num_keypoints)


def unified_to_native(keypoints: np.ndarray, skeleton: Skeleton,
                      unified: Skeleton = UNIFIED) -> np.ndarray:
    """(..., U, C) unified → (..., K, C) native; native keypoints unknown to `unified` are 0."""
    src, dst = _pairs(skeleton, unified)
    return _moved(keypoints, dst, src, skeleton.num_keypoints)


def _moved(keypoints: np.ndarray, rows: np.ndarray, to: np.ndarray, k_out: int) -> np.ndarray:
    """(..., K, C) → (..., k_out, C): row rows[i] goes to row to[i], the rest are 0."""
    out = np.zeros(keypoints.shape[:-2] + (k_out, keypoints.shape[-1]), keypoints.dtype)
    out[..., to, :] = keypoints[..., rows, :]
    return out


def summary() -> dict:
    """What `uni skeletons --json` prints: every unified skeleton, skeleton (with each native
    keypoint's unified21 name, or None) and dataset kind."""
    return {
        "unified": {n: sk.to_json() for n, sk in _UNIFIED_KNOWN.items()},
        "skeletons": {n: {**sk.to_json(), "num_keypoints": sk.num_keypoints,
                          "flip_pairs": [list(p) for p in sk.flip_pairs],
                          "to_unified21": [None if u is None else UNIFIED_NAMES[u]
                                           for u in sk.to_unified]}
                      for n, sk in SKELETONS.items() if n not in _UNIFIED_KNOWN},
        "kinds": {n: kind.to_json() for n, kind in _KINDS.items()},
    }


def summary_lines() -> list[str]:
    """`uni skeletons`: one line per unified skeleton, skeleton (its renamed, unmapped and
    extra keypoints) and dataset kind."""
    lines = ["unified skeletons (uni train-student --unified NAME, or union):"]
    lines += [f"  {n:<18}{sk.num_keypoints:>3} keypoints" for n, sk in
              _UNIFIED_KNOWN.items()]
    lines.append("skeletons (native → unified name where they differ; 'none': no counterpart):")
    for n, sk in SKELETONS.items():
        if n in _UNIFIED_KNOWN:
            continue
        to = sk.to_unified
        renamed = [f"{k}→{c or 'none'}" for k, c in zip(sk.keypoints, sk.canonical, strict=True)
                   if k != c]
        extra = [c for c, u in zip(sk.canonical, to, strict=True) if c is not None and u is None]
        text = f"  {n:<18}{sk.num_keypoints:>3} keypoints, {sum(u is not None for u in to)} of " \
               f"unified21"
        text += f": {', '.join(renamed)}" if renamed else ""
        text += f"; not in unified21: {', '.join(extra)}" if extra else ""
        lines.append(text)
    lines.append("dataset kinds (data spec KIND:ANNOTATIONS[:IMAGE_ROOT]):")
    for n, kind in _KINDS.items():
        fields_ = " + ".join(f"{f} ({c})" for f, c in kind.fields)
        more = f", records may carry {', '.join(map(str, kind.file_keypoints))}" \
            if kind.file_keypoints else ""
        lines.append(f"  {n:<18}{kind.reader} reader, skeleton {kind.skeleton}, metric "
                     f"{kind.metric}, images in {kind.image_root}/"
                     + (f", keypoints from {fields_}" if len(kind.fields) > 1 else "") + more)
    return lines
