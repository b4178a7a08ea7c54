"""Every skeleton uni knows, and how each maps onto the 21-keypoint unified skeleton.

This is the only place keypoint names, orders, flip pairs, OKS sigmas and dataset → unified
mappings are written down in code (facts: docs/conventions.md "Unified skeleton",
"Dataset mappings" and "Metrics").
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from uniskel.pipeline.errors import UniError

# (name, OKS sigma). Index = unified index.
_UNIFIED = [
    ("nose", 0.026), ("left_eye", 0.025), ("right_eye", 0.025), ("left_ear", 0.035),
    ("right_ear", 0.035), ("left_shoulder", 0.079), ("right_shoulder", 0.079),
    ("left_elbow", 0.072), ("right_elbow", 0.072), ("left_wrist", 0.062), ("right_wrist", 0.062),
    ("left_hip", 0.107), ("right_hip", 0.107), ("left_knee", 0.087), ("right_knee", 0.087),
    ("left_ankle", 0.089), ("right_ankle", 0.089),
    # Not in COCO: .08, Halpe's head/neck/hip value, the same for thorax
    # (docs/conventions.md "Metrics").
    ("pelvis", 0.08), ("thorax", 0.08), ("upper_neck", 0.08), ("head_top", 0.08),
]
UNIFIED_NAMES: tuple[str, ...] = tuple(n for n, _ in _UNIFIED)
UNIFIED_SIGMAS: np.ndarray = np.array([s for _, s in _UNIFIED], dtype=np.float64)  # (21,)
NUM_UNIFIED = len(UNIFIED_NAMES)

_COCO17 = list(UNIFIED_NAMES[:17])

# (native name, unified name or None)
_MPII16 = [
    ("r_ankle", "right_ankle"), ("r_knee", "right_knee"), ("r_hip", "right_hip"),
    ("l_hip", "left_hip"), ("l_knee", "left_knee"), ("l_ankle", "left_ankle"),
    ("pelvis", "pelvis"), ("thorax", "thorax"), ("upper_neck", "upper_neck"),
    ("head_top", "head_top"), ("r_wrist", "right_wrist"), ("r_elbow", "right_elbow"),
    ("r_shoulder", "right_shoulder"), ("l_shoulder", "left_shoulder"), ("l_elbow", "left_elbow"),
    ("l_wrist", "left_wrist"),
]
_HALPE26 = [(n, n) for n in _COCO17] + [
    ("head", "head_top"), ("neck", "upper_neck"), ("hip", "pelvis"),
    ("left_big_toe", None), ("right_big_toe", None), ("left_small_toe", None),
    ("right_small_toe", None), ("left_heel", None), ("right_heel", None),
]


# BlazePose-33 (MediaPipe pose landmarks; docs/conventions.md "Dataset mappings"): the 17 COCO
# points share the unified names, the rest have no unified counterpart.
_BLAZEPOSE33 = [
    "nose", "left_eye_inner", "left_eye", "left_eye_outer", "right_eye_inner", "right_eye",
    "right_eye_outer", "left_ear", "right_ear", "mouth_left", "mouth_right", "left_shoulder",
    "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_pinky",
    "right_pinky", "left_index", "right_index", "left_thumb", "right_thumb", "left_hip",
    "right_hip", "left_knee", "right_knee", "left_ankle", "right_ankle", "left_heel",
    "right_heel", "left_foot_index", "right_foot_index",
]
_SIDES = {"left": "right", "l": "r"}  # a name's "_"-separated word that marks its left side


def _flip_pairs(names: list[str]) -> tuple[tuple[int, int], ...]:
    """(left, right) index pairs found from the names: a left/l word anywhere in the name
    (left_eye, l_ankle, mouth_left) swapped for right/r gives its mirror keypoint."""
    pairs = []
    for i, n in enumerate(names):
        words = n.split("_")
        for j, word in enumerate(words):
            if word not in _SIDES:
                continue
            mirror = "_".join(words[:j] + [_SIDES[word]] + words[j + 1:])
            if mirror in names:
                pairs.append((i, names.index(mirror)))
                break
    return tuple(pairs)


@dataclass(frozen=True)
class Skeleton:
    """A native keypoint order and its map to unified indices (None = no unified counterpart)."""

    name: str
    keypoints: tuple[str, ...]
    to_unified: tuple[int | None, ...]
    flip_pairs: tuple[tuple[int, int], ...]

    @property
    def num_keypoints(self) -> int:
        return len(self.keypoints)

    @property
    def flip_index(self) -> np.ndarray:
        """(K,) int: channel i of a flipped output holds keypoint flip_index[i]."""
        idx = np.arange(self.num_keypoints)
        for a, b in self.flip_pairs:
            idx[a], idx[b] = b, a
        return idx

    @property
    def unified_mask(self) -> np.ndarray:
        """(21,) bool: unified keypoints this skeleton knows."""
        mask = np.zeros(NUM_UNIFIED, dtype=bool)
        mask[[u for u in self.to_unified if u is not None]] = True
        return mask


def _make(name: str, table: list[tuple[str, str | None]]) -> Skeleton:
    names = [n for n, _ in table]
    to_u = tuple(None if u is None else UNIFIED_NAMES.index(u) for _, u in table)
    return Skeleton(name, tuple(names), to_u, _flip_pairs(names))


SKELETONS: dict[str, Skeleton] = {
    s.name: s
    for s in (
        _make("unified21", [(n, n) for n in UNIFIED_NAMES]),
        _make("coco17", [(n, n) for n in _COCO17]),
        _make("mpii16", _MPII16),
        _make("halpe26", _HALPE26),
        _make("blazepose33", [(n, n if n in UNIFIED_NAMES else None) for n in _BLAZEPOSE33]),
    )
}
UNIFIED = SKELETONS["unified21"]


def get_skeleton(name: str) -> Skeleton:
    if name not in SKELETONS:
        raise UniError(f"unknown skeleton {name!r}; known: {', '.join(SKELETONS)}")
    return SKELETONS[name]


def native_to_unified(keypoints: np.ndarray, skeleton: Skeleton) -> np.ndarray:
    """(..., K, C) native → (..., 21, C) unified; keypoints without a counterpart stay 0."""
    out = np.zeros(keypoints.shape[:-2] + (NUM_UNIFIED, keypoints.shape[-1]), keypoints.dtype)
    for src, dst in enumerate(skeleton.to_unified):
        if dst is not None:
            out[..., dst, :] = keypoints[..., src, :]
    return out


def unified_to_native(keypoints: np.ndarray, skeleton: Skeleton) -> np.ndarray:
    """(..., 21, C) unified → (..., K, C) native; native keypoints unknown to unified are 0."""
    out = np.zeros(keypoints.shape[:-2] + (skeleton.num_keypoints, keypoints.shape[-1]),
                   keypoints.dtype)
    for src, dst in enumerate(skeleton.to_unified):
        if dst is not None:
            out[..., src, :] = keypoints[..., dst, :]
    return out
