"""Skeleton and dataset-kind definitions: the two dataclasses, and the checks that turn a
definitions file (TOML, the tables of core/skeletons.toml) or a definition carried as JSON
by a store or a model into them. core/skeletons.py holds what is known."""

from __future__ import annotations

import math
import re
import tomllib
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

from uniskel.core.errors import UniError, io_reason

_SIDES = {"left": "right", "l": "r", "right": "left", "r": "l"}  # a name's side word, swapped
_NAME = re.compile(r"[a-z][a-z0-9_]*")  # skeleton and kind names: in data specs and file names
READERS = ("coco", "mpii")
METRICS = ("coco_ap", "pckh", "pck_bbox")
# The skeleton `Skeleton.to_unified` maps to (unified21), set by core/skeletons.py once
# the built-in definitions are read.
DEFAULT_UNIFIED: list[Skeleton] = []


def _mirror(name: str) -> str | None:
    """left_eye → right_eye, l_ankle → r_ankle, mouth_left → mouth_right; None on the midline."""
    words = name.split("_")
    for j, word in enumerate(words):
        if word in _SIDES:
            return "_".join(words[:j] + [_SIDES[word]] + words[j + 1:])
    return None


def _is_left(name: str) -> bool:
    return any(w in ("left", "l") for w in name.split("_"))


@dataclass(frozen=True)
class Skeleton:
    """A native keypoint order, each keypoint's name in the unified vocabulary (None: no
    counterpart), OKS sigmas where the dataset defines them, and (left, right) flip pairs."""

    name: str
    keypoints: tuple[str, ...]
    canonical: tuple[str | None, ...]
    sigmas: tuple[float, ...] | None
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

    def to(self, unified: Skeleton) -> tuple[int | None, ...]:
        """Native index → index in `unified` (matched by canonical name), None where absent."""
        return _index_map(self, unified)

    def mask(self, unified: Skeleton) -> np.ndarray:
        """(U,) bool: the keypoints of `unified` this skeleton labels."""
        out = np.zeros(unified.num_keypoints, dtype=bool)
        out[[u for u in self.to(unified) if u is not None]] = True
        return out

    @property
    def to_unified(self) -> tuple[int | None, ...]:
        """`to` the default unified skeleton (unified21)."""
        return self.to(DEFAULT_UNIFIED[0])

    @property
    def unified_mask(self) -> np.ndarray:
        """(21,) bool: `mask` of the default unified skeleton."""
        return self.mask(DEFAULT_UNIFIED[0])

    def to_json(self) -> dict:
        """The whole definition (flip pairs follow from names), as stores and models carry it."""
        return {"name": self.name, "keypoints": list(self.keypoints),
                "canonical": list(self.canonical),
                "sigmas": None if self.sigmas is None else list(self.sigmas)}

    @staticmethod
    def from_json(d: object, where: str) -> Skeleton:
        """`to_json`'s dict back, checked like a definitions file; UniError naming `where`."""
        keys = ("name", "keypoints", "canonical", "sigmas")
        if not isinstance(d, dict) or set(d) != set(keys):
            raise UniError(f"{where}: a skeleton definition is an object with exactly the "
                           f"fields {', '.join(keys)}")
        if not isinstance(d["name"], str):
            raise UniError(f"{where} field 'name': expected a string")
        return Skeleton.build(d["name"], d["keypoints"], d["canonical"], d["sigmas"], where)

    @staticmethod
    def build(name: str, keypoints: object, canonical: object, sigmas: object,
              where: str) -> Skeleton:
        """A checked skeleton; canonical None = every keypoint keeps its own name."""
        if not _NAME.fullmatch(name):
            raise UniError(f"{where}: name {name!r} must be lowercase letters, digits and _ "
                           "(starting with a letter)")
        names = _strings(keypoints, f"{where} field 'keypoints'")
        if not names:
            raise UniError(f"{where} field 'keypoints': no keypoints")
        for i, n in enumerate(names):
            if n in names[:i]:
                raise UniError(f"{where} field 'keypoints': duplicate name {n!r}")
        if canonical is None:
            canonical = list(names)
        if not isinstance(canonical, list) or len(canonical) != len(names) or not all(
                c is None or isinstance(c, str) and c for c in canonical):
            raise UniError(f"{where} field 'canonical': expected {len(names)} names or nulls")
        seen: dict[str, str] = {}
        for n, c in zip(names, canonical, strict=True):
            if c is not None and c in seen:
                raise UniError(f"{where} field 'canonical': keypoints {seen[c]!r} and {n!r} "
                               f"both map to {c!r}")
            if c is not None:
                seen[c] = n
        pairs = []
        for i, n in enumerate(names):
            partner = _mirror(n)
            if partner is None:
                if canonical[i] is not None and _mirror(canonical[i]) is not None:
                    raise UniError(f"{where} field 'canonical': midline keypoint {n!r} maps to "
                                   f"the one-sided {canonical[i]!r}")
                continue
            if partner not in names:
                raise UniError(f"{where} field 'keypoints': {n!r} has no flip partner "
                               f"{partner!r}")
            j = names.index(partner)
            ci, cj = canonical[i], canonical[j]
            if (ci is None) != (cj is None) or ci is not None and _mirror(ci) != cj:
                raise UniError(f"{where} field 'canonical': flip pair {n!r}, {partner!r} maps "
                               f"to {ci!r}, {cj!r}, not a left/right pair")
            if _is_left(n):
                pairs.append((i, j))
        if sigmas is not None:
            sigmas = tuple(_sigmas(sigmas, len(names), f"{where} field 'sigmas'"))
        return Skeleton(name, tuple(names), tuple(canonical), sigmas, tuple(pairs))


@lru_cache(maxsize=512)
def _index_map(native: Skeleton, unified: Skeleton) -> tuple[int | None, ...]:
    index = {c: i for i, c in enumerate(unified.canonical) if c is not None}
    return tuple(None if c is None else index.get(c) for c in native.canonical)


def _strings(value: object, where: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise UniError(f"{where}: expected a list of non-empty strings")
    return list(value)


def _sigmas(value: object, k: int, where: str) -> list[float]:
    if not isinstance(value, list) or not all(
            isinstance(v, int | float) and not isinstance(v, bool) for v in value):
        raise UniError(f"{where}: expected a list of numbers")
    if len(value) != k:
        raise UniError(f"{where}: expected {k} numbers (one per keypoint), got {len(value)}")
    if not all(math.isfinite(v) and v > 0 for v in value):
        raise UniError(f"{where}: sigmas must be positive and finite")
    return [float(v) for v in value]


@dataclass(frozen=True)
class DatasetKind:
    """How to read one family of annotation files: which reader, which native skeleton, which
    metric scores it, and what the reader needs (README "Dataset kinds")."""

    name: str
    reader: str  # "coco" | "mpii"
    skeleton: str  # a known skeleton's name
    metric: str  # "coco_ap" | "pckh" | "pck_bbox"
    # coco reader: annotation fields concatenated into the K keypoints, with their counts; a
    # field "X_kpts" whose record has "X_valid": false counts as unlabelled (COCO-WholeBody).
    fields: tuple[tuple[str, int], ...] = ()
    # Other keypoint counts the (single) field may carry; the first K are the skeleton's.
    file_keypoints: tuple[int, ...] = ()
    image_root: str = "images"  # default, relative to the annotation file's folder
    # OKS scale (and area ranges) of a coco_ap kind: 0 = each person's annotated area (COCO);
    # F > 0 = F × box width × height, xtcocotools' use_area=False (docs/conventions.md "Metrics").
    area_from_box: float = 0.0

    def to_json(self) -> dict:
        return {"name": self.name, "reader": self.reader, "skeleton": self.skeleton,
                "metric": self.metric, "fields": dict(self.fields),
                "file_keypoints": list(self.file_keypoints), "image_root": self.image_root,
                "area_from_box": self.area_from_box}


@dataclass
class Definitions:
    """One definitions file's tables, checked."""

    unified: dict[str, Skeleton] = field(default_factory=dict)
    skeletons: dict[str, Skeleton] = field(default_factory=dict)
    kinds: dict[str, DatasetKind] = field(default_factory=dict)


def read_toml(path, src: str) -> dict:
    """A TOML file's tables; UniError (one line) when it is missing or not TOML."""
    path = Path(path) if isinstance(path, str) else path  # or an importlib.resources file
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise UniError(f"{src}: file not found") from None
    except OSError as e:
        raise UniError(f"{src}: cannot read ({io_reason(e)})") from None
    except tomllib.TOMLDecodeError as e:
        raise UniError(f"{src}: not valid TOML ({e})") from None


def _tables(data: dict, key: str, src: str) -> dict[str, dict]:
    value = data.get(key, {})
    if not isinstance(value, dict) or not all(isinstance(v, dict) for v in value.values()):
        raise UniError(f"{src}: {key}: expected tables [{key}.NAME]")
    return value


def _keys(table: dict, allowed: tuple[str, ...], required: tuple[str, ...], where: str) -> None:
    for key in table:
        if key not in allowed:
            raise UniError(f"{where}: unknown key {key!r}; allowed: {', '.join(allowed)}")
    for key in required:
        if key not in table:
            raise UniError(f"{where}: missing key {key!r}")


def _skeleton(name: str, t: dict, where: str) -> Skeleton:
    _keys(t, ("keypoints", "canonical", "unmapped", "sigmas"), ("keypoints",), where)
    names = _strings(t["keypoints"], f"{where} field 'keypoints'")
    canonical: list[str | None] = list(names)
    overrides = t.get("canonical", {})
    if not isinstance(overrides, dict):
        raise UniError(f"{where} field 'canonical': expected a table {{native = \"unified\"}}")
    for native, c in overrides.items():
        if native not in names:
            raise UniError(f"{where} field 'canonical': names unknown keypoint {native!r}")
        if not isinstance(c, str) or not c:
            raise UniError(f"{where} field 'canonical': {native!r} must map to a name")
        canonical[names.index(native)] = c
    for native in _strings(t.get("unmapped", []), f"{where} field 'unmapped'"):
        if native not in names:
            raise UniError(f"{where} field 'unmapped': names unknown keypoint {native!r}")
        if native in overrides:
            raise UniError(f"{where} field 'unmapped': {native!r} is also in 'canonical'")
        canonical[names.index(native)] = None
    return Skeleton.build(name, names, canonical, t.get("sigmas"), where)


def _kind(name: str, t: dict, where: str, skeletons: dict[str, Skeleton]) -> DatasetKind:
    _keys(t, ("reader", "skeleton", "metric", "fields", "file_keypoints", "image_root",
              "area_from_box"), ("reader", "skeleton", "metric"), where)
    if not _NAME.fullmatch(name):
        raise UniError(f"{where}: name {name!r} must be lowercase letters, digits and _ "
                       "(starting with a letter)")
    for key, allowed in (("reader", READERS), ("metric", METRICS)):
        if t[key] not in allowed:
            raise UniError(f"{where} field {key!r}: {t[key]!r} is not one of "
                           f"{', '.join(allowed)}")
    if t["skeleton"] not in skeletons:
        raise UniError(f"{where} field 'skeleton': unknown skeleton {t['skeleton']!r}; "
                       f"known: {', '.join(skeletons)}")
    k = skeletons[t["skeleton"]].num_keypoints
    fields_ = t.get("fields", {"keypoints": k} if t["reader"] == "coco" else {})
    if not isinstance(fields_, dict) or not all(
            isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in fields_.values()):
        raise UniError(f"{where} field 'fields': expected a table {{field = keypoints}}")
    counts = t.get("file_keypoints", [])
    if not isinstance(counts, list) or not all(
            isinstance(n, int) and not isinstance(n, bool) and n > k for n in counts):
        raise UniError(f"{where} field 'file_keypoints': expected counts larger than {k}")
    if t["reader"] == "mpii":
        if k != 16 or fields_ or counts:
            raise UniError(f"{where}: the mpii reader reads 16 joints and takes no 'fields' "
                           "or 'file_keypoints'")
    elif sum(fields_.values()) != k:
        raise UniError(f"{where} field 'fields': {sum(fields_.values())} keypoints but skeleton "
                       f"{t['skeleton']} has {k}")
    elif counts and len(fields_) != 1:
        raise UniError(f"{where} field 'file_keypoints': only for a kind with one field")
    if t["metric"] == "pckh" and t["reader"] != "mpii":
        raise UniError(f"{where} field 'metric': pckh needs head boxes, which only the mpii "
                       "reader has")
    root = t.get("image_root", "images")
    if not isinstance(root, str) or not root:
        raise UniError(f"{where} field 'image_root': expected a folder name")
    scale = t.get("area_from_box", 0.0)
    if (not isinstance(scale, int | float) or isinstance(scale, bool) or not 0 <= scale < 1e3
            or scale != scale):
        raise UniError(f"{where} field 'area_from_box': expected 0 (the annotated area) or a "
                       "positive factor of box width × height")
    return DatasetKind(name, t["reader"], t["skeleton"], t["metric"], tuple(fields_.items()),
                       tuple(counts), root, float(scale))


def parse_definitions(data: dict, src: str, known: dict[str, Skeleton]) -> Definitions:
    """A definitions file's tables, checked; kinds may name its own skeletons or `known` ones."""
    for key in data:
        if key not in ("unified", "skeletons", "kinds"):
            raise UniError(f"{src}: unknown key {key!r}; allowed: unified, skeletons, kinds")
    out = Definitions()
    for name, t in _tables(data, "unified", src).items():
        where = f"{src}: unified.{name}"
        _keys(t, ("keypoints", "sigmas"), ("keypoints", "sigmas"), where)
        out.unified[name] = Skeleton.build(name, t["keypoints"], None, t["sigmas"], where)
    for name, t in _tables(data, "skeletons", src).items():
        if name in out.unified:
            raise UniError(f"{src}: skeletons.{name}: also defined as unified.{name}")
        out.skeletons[name] = _skeleton(name, t, f"{src}: skeletons.{name}")
    usable = {**known, **out.unified, **out.skeletons}
    for name, t in _tables(data, "kinds", src).items():
        out.kinds[name] = _kind(name, t, f"{src}: kinds.{name}", usable)
    return out
