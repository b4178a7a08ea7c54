"""The skeleton table against docs/conventions.md, checked by keypoint name."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from uniskel.core.errors import UniError
from uniskel.core.skeletons import (
    NUM_UNIFIED,
    SKELETONS,
    UNIFIED_NAMES,
    UNIFIED_SIGMAS,
    get_skeleton,
    native_to_unified,
    unified_to_native,
)

# docs/conventions.md "Unified skeleton", written out again here.
DOC_UNIFIED = ("nose left_eye right_eye left_ear right_ear left_shoulder right_shoulder "
                "left_elbow right_elbow left_wrist right_wrist left_hip right_hip left_knee "
                "right_knee left_ankle right_ankle pelvis thorax upper_neck head_top").split()

# docs/conventions.md "Dataset mappings", written as native name → unified name.
DOC_MAPPINGS = {
    "coco17": {n: n for n in DOC_UNIFIED[:17]},
    "mpii16": {
        "r_ankle": "right_ankle", "r_knee": "right_knee", "r_hip": "right_hip",
        "l_hip": "left_hip", "l_knee": "left_knee", "l_ankle": "left_ankle",
        "pelvis": "pelvis", "thorax": "thorax", "upper_neck": "upper_neck",
        "head_top": "head_top", "r_wrist": "right_wrist", "r_elbow": "right_elbow",
        "r_shoulder": "right_shoulder", "l_shoulder": "left_shoulder", "l_elbow": "left_elbow",
        "l_wrist": "left_wrist",
    },
    "halpe26": {**{n: n for n in DOC_UNIFIED[:17]}, "head": "head_top", "neck": "upper_neck",
                "hip": "pelvis", "left_big_toe": None, "right_big_toe": None,
                "left_small_toe": None, "right_small_toe": None, "left_heel": None,
                "right_heel": None},
}
# docs/conventions.md "Dataset mappings": native index order (MPII list).
DOC_ORDER = {
    "mpii16": ["r_ankle", "r_knee", "r_hip", "l_hip", "l_knee", "l_ankle", "pelvis", "thorax",
               "upper_neck", "head_top", "r_wrist", "r_elbow", "r_shoulder", "l_shoulder",
               "l_elbow", "l_wrist"],
}
# docs/conventions.md "Dataset mappings": MPII source index → unified index.
DOC_MPII_INDEX = {13: 5, 12: 6, 14: 7, 11: 8, 15: 9, 10: 10, 3: 11, 2: 12, 4: 13, 1: 14, 5: 15,
                   0: 16, 6: 17, 7: 18, 8: 19, 9: 20}
# docs/conventions.md "Metrics": OKS sigmas.
DOC_SIGMAS = {"nose": .026, "eye": .025, "ear": .035, "shoulder": .079, "elbow": .072,
               "wrist": .062, "hip": .107, "knee": .087, "ankle": .089, "pelvis": .08,
               "thorax": .08, "upper_neck": .08, "head_top": .08}


def test_unified_names_and_count():
    assert list(UNIFIED_NAMES) == DOC_UNIFIED
    assert NUM_UNIFIED == 21


@pytest.mark.parametrize("name", sorted(DOC_MAPPINGS))
def test_mapping_by_name(name):
    sk = SKELETONS[name]
    assert dict(zip(sk.keypoints, (None if u is None else UNIFIED_NAMES[u]
                                   for u in sk.to_unified), strict=True)) == DOC_MAPPINGS[name]
    if name in DOC_ORDER:
        assert list(sk.keypoints) == DOC_ORDER[name]


def test_mpii_index_pairs_from_spec():
    sk = SKELETONS["mpii16"]
    assert {i: u for i, u in enumerate(sk.to_unified)} == DOC_MPII_INDEX


def test_unlabeled_unified_keypoints():
    def missing(name):
        return [UNIFIED_NAMES[i] for i in np.flatnonzero(~SKELETONS[name].unified_mask)]

    assert missing("coco17") == ["pelvis", "thorax", "upper_neck", "head_top"]
    assert missing("mpii16") == ["nose", "left_eye", "right_eye", "left_ear", "right_ear"]
    assert missing("halpe26") == ["thorax"]
    assert missing("unified21") == []


def test_sigmas():
    for name, sigma in zip(UNIFIED_NAMES, UNIFIED_SIGMAS, strict=True):
        kind = name.split("_", 1)[1] if name.startswith(("left_", "right_")) else name
        assert sigma == pytest.approx(DOC_SIGMAS[kind]), name


def test_flip_pairs_unified_match_spec():
    spec = {(1, 2), (3, 4), (5, 6), (7, 8), (9, 10), (11, 12), (13, 14), (15, 16)}
    assert set(SKELETONS["unified21"].flip_pairs) == spec
    flip = SKELETONS["unified21"].flip_index
    assert (flip[17:] == np.arange(17, 21)).all()  # midline


def _side(name: str) -> tuple[str, str]:
    """(side, joint): left_eye_inner → (left, eye_inner), mouth_left → (left, mouth)."""
    for prefix, side in (("left_", "left"), ("right_", "right"), ("l_", "left"), ("r_", "right")):
        if name.startswith(prefix):
            return side, name[len(prefix):]
    for suffix, side in (("_left", "left"), ("_right", "right")):
        if name.endswith(suffix):
            return side, name[:-len(suffix)]
    return "mid", name


@pytest.mark.parametrize("name", sorted(SKELETONS))
def test_flip_pairs_are_left_right_of_one_joint(name):
    sk = SKELETONS[name]
    for a, b in sk.flip_pairs:
        (sa, ja), (sb, jb) = _side(sk.keypoints[a]), _side(sk.keypoints[b])
        assert (sa, sb, ja) == ("left", "right", jb)
    flip = sk.flip_index
    assert (flip[flip] == np.arange(sk.num_keypoints)).all()
    # Flipping commutes with the mapping: a native flip pair maps onto a unified flip pair.
    unified_pairs = set(SKELETONS["unified21"].flip_pairs)
    for a, b in sk.flip_pairs:
        ua, ub = sk.to_unified[a], sk.to_unified[b]
        if ua is not None:
            assert (min(ua, ub), max(ua, ub)) in unified_pairs
    sides = [n for n in sk.keypoints if _side(n)[0] != "mid"]
    assert len(sk.flip_pairs) * 2 == len(sides)


def test_get_skeleton_unknown():
    with pytest.raises(UniError, match="unknown skeleton"):
        get_skeleton("coco18")


@settings(max_examples=50, deadline=None)
@given(st.sampled_from(sorted(SKELETONS)), st.integers(0, 2**32 - 1))
def test_native_unified_round_trip(name, seed):
    sk = SKELETONS[name]
    rng = np.random.default_rng(seed)
    kp = rng.uniform(1, 100, (2, sk.num_keypoints, 3))  # batch dims are kept
    uni = native_to_unified(kp, sk)
    assert uni.shape == (2, 21, 3)
    back = unified_to_native(uni, sk)
    known = np.array([u is not None for u in sk.to_unified])
    np.testing.assert_array_equal(back[:, known], kp[:, known])
    assert (back[:, ~known] == 0).all()
    assert (uni[:, ~sk.unified_mask] == 0).all()  # unmapped → v = 0 (and x = y = 0)
    for src, dst in enumerate(sk.to_unified):
        if dst is not None:
            np.testing.assert_array_equal(uni[:, dst], kp[:, src])


def test_mpii_head_top_lands_on_unified_head_top():
    sk = SKELETONS["mpii16"]
    kp = np.zeros((16, 3))
    kp[sk.keypoints.index("head_top")] = (10, 20, 2)
    uni = native_to_unified(kp, sk)
    assert tuple(uni[UNIFIED_NAMES.index("head_top")]) == (10, 20, 2)
    assert (uni[:, 2] > 0).sum() == 1


# samples/models/README.md: the BlazePose-33 order and its COCO-17 / unified 0–16 indices.
README_BLAZEPOSE = ("nose left_eye_inner left_eye left_eye_outer right_eye_inner right_eye "
                    "right_eye_outer left_ear right_ear mouth_left mouth_right left_shoulder "
                    "right_shoulder left_elbow right_elbow left_wrist right_wrist left_pinky "
                    "right_pinky left_index right_index left_thumb right_thumb left_hip right_hip "
                    "left_knee right_knee left_ankle right_ankle left_heel right_heel "
                    "left_foot_index right_foot_index").split()
README_BLAZEPOSE_TO_COCO = [0, 2, 5, 7, 8, 11, 12, 13, 14, 15, 16, 23, 24, 25, 26, 27, 28]


def test_blazepose33_order_and_mapping():
    sk = SKELETONS["blazepose33"]
    assert list(sk.keypoints) == README_BLAZEPOSE
    expected = [None] * 33
    for unified, native in enumerate(README_BLAZEPOSE_TO_COCO):
        expected[native] = unified
    assert list(sk.to_unified) == expected
    assert (sk.unified_mask == SKELETONS["coco17"].unified_mask).all()


def test_blazepose33_flip_pairs_by_name():
    sk = SKELETONS["blazepose33"]
    pairs = {(sk.keypoints[a], sk.keypoints[b]) for a, b in sk.flip_pairs}
    joints = ["eye_inner", "eye", "eye_outer", "ear", "shoulder", "elbow", "wrist", "pinky",
              "index", "thumb", "hip", "knee", "ankle", "heel", "foot_index"]
    assert pairs == {(f"left_{j}", f"right_{j}") for j in joints} | {("mouth_left", "mouth_right")}
    assert len(sk.flip_pairs) == 16
    assert sk.flip_index[0] == 0  # the nose stays


# samples/README.md: flip pairs and sigmas of the new samples, in their native order.
README_FLIP = {
    "aic14": {(0, 3), (1, 4), (2, 5), (6, 9), (7, 10), (8, 11)},
    "crowdpose14": {(0, 1), (2, 3), (4, 5), (6, 7), (8, 9), (10, 11)},
    "jhmdb15": {(3, 4), (5, 6), (7, 8), (9, 10), (11, 12), (13, 14)},
    "posetrack17": {(3, 4), (5, 6), (7, 8), (9, 10), (11, 12), (13, 14), (15, 16)},
}
README_SIGMAS = {
    "crowdpose14": [.079, .079, .072, .072, .062, .062, .107, .107, .087, .087, .089, .089, .079,
                    .079],
    "jhmdb15": [.025, .107, .025, .079, .079, .107, .107, .072, .072, .087, .087, .062, .062, .089,
                .089],
    "posetrack17": [.026, .025, .025, .035, .035, .079, .079, .072, .072, .062, .062, .107, .107,
                    .087, .087, .089, .089],
}


@pytest.mark.parametrize("name", sorted(README_FLIP))
def test_new_skeletons_against_samples_readme(name):
    sk = SKELETONS[name]
    assert {tuple(sorted(p)) for p in sk.flip_pairs} == README_FLIP[name]
    if name in README_SIGMAS:
        assert sk.sigmas == pytest.approx(README_SIGMAS[name])
    assert sk.sigmas is not None and len(sk.sigmas) == sk.num_keypoints


def test_unified27_and_union():
    from uniskel.core.skeletons import UNIFIED, known_unified, unified_skeleton

    u27 = unified_skeleton("unified27")
    assert u27.keypoints[:21] == UNIFIED.keypoints and u27.num_keypoints == 27
    assert unified_skeleton("unified21") is UNIFIED and known_unified()["unified27"] is u27
    halpe, wb = get_skeleton("halpe26"), get_skeleton("coco_wholebody23")
    assert unified_skeleton("union", [get_skeleton("coco17"), halpe]) is u27
    assert halpe.mask(u27).sum() == 26 and wb.mask(u27).sum() == 23
    assert halpe.mask(u27)[18] == 0  # thorax: no Halpe counterpart
    # COCO-WholeBody's feet in its own order land on the same unified27 slots as Halpe's.
    kp = np.arange(23 * 3, dtype=float).reshape(23, 3)
    u = native_to_unified(kp, wb, u27)
    for name in ("left_big_toe", "right_heel"):
        assert (u[u27.keypoints.index(name)] == kp[wb.keypoints.index(name)]).all()
    np.testing.assert_array_equal(unified_to_native(u, wb, u27), kp)
    # A union in first-seen order; sigmas from the first skeleton defining one, else .08.
    union = unified_skeleton("union", [wb, get_skeleton("blazepose33"), halpe])
    assert union.keypoints[21:24] == ("left_big_toe", "left_small_toe", "left_heel")
    assert union.sigmas[21] == pytest.approx(0.068)  # COCO-WholeBody's left_big_toe
    assert union.sigmas[union.keypoints.index("mouth_left")] == pytest.approx(0.08)
    assert "belly" not in unified_skeleton("union", [get_skeleton("jhmdb15")]).keypoints
    with pytest.raises(UniError, match="unknown unified skeleton 'u99'.*unified27.*union"):
        unified_skeleton("u99")


@pytest.mark.parametrize("name", sorted(SKELETONS))
def test_definition_json_round_trip(name):
    from uniskel.core.skeletons import Skeleton

    sk = SKELETONS[name]
    back = Skeleton.from_json(json.loads(json.dumps(sk.to_json())), "x")
    assert back == sk and hash(back) == hash(sk)
    bad = {**sk.to_json(), "canonical": [None] * (sk.num_keypoints - 1)}
    with pytest.raises(UniError, match="x field 'canonical'"):
        Skeleton.from_json(bad, "x")


def test_store_records_the_skeleton_definition(tmp_path, skeleton_registry):
    """A store of a user's skeleton reads without the user's file; a definition that does not
    fit the store's skeleton is refused."""
    from uniskel.stores.create import create_store
    from uniskel.stores.reader import open_store
    from uniskel.stores.schema import StoreMeta

    f = tmp_path / "s.toml"
    f.write_text('[skeletons.two]\nkeypoints = ["l_tip", "r_tip", "neck"]\n'
                 'canonical = { l_tip = "left_wrist", r_tip = "right_wrist" }\n')
    skeleton_registry.load_skeleton_file(f)
    two = get_skeleton("two")

    def meta(name, sk, k):
        return StoreMeta("t", "a" * 64, {}, name, "d" * 64, "x:y", (8, 8), 1.25, True, (k, 2, 2),
                         skeleton_def=sk)

    create_store(tmp_path / "two.h5", meta("two", two, 3), [1, 2])
    del skeleton_registry.SKELETONS["two"]
    r = open_store(tmp_path / "two.h5")
    assert r.meta.skeleton_def == two and r.meta.skeleton_def.to_unified == (9, 10, None)
    r.close()
    with pytest.raises(UniError, match="does not match"):
        create_store(tmp_path / "bad.h5", meta("coco17", two, 17), [1])


def test_teacher_carries_a_user_skeleton(tmp_path, skeleton_registry, heatmap_teacher):
    """describe-teacher --skeleton accepts a user's skeleton and stamps its definition, so the
    teacher reads (and caches) without the file."""
    from click.testing import CliRunner

    from uniskel.cli import uni
    from uniskel.pipeline.teachers import read_info

    f = tmp_path / "s.toml"
    names = [f"p{i}" for i in range(17)]
    f.write_text(f'[skeletons.plain17]\nkeypoints = {json.dumps(names)}\n'
                 'canonical = { p0 = "nose" }\n')
    model = heatmap_teacher  # described as coco17: described again, into a copy
    r = CliRunner().invoke(uni, ["describe-teacher", str(model), "--skeleton", "plain17",
                                 "--head", "heatmap", "--out", str(tmp_path / "d.onnx")])
    assert r.exit_code == 2 and "unknown 'plain17'" in r.stderr
    r = CliRunner().invoke(uni, ["--skeletons", str(f), "describe-teacher", str(model),
                                 "--skeleton", "plain17", "--head", "heatmap", "--out",
                                 str(tmp_path / "d.onnx")])
    assert r.exit_code == 0, r.output
    del skeleton_registry.SKELETONS["plain17"]
    info = read_info(tmp_path / "d.onnx")
    assert info.skeleton_def.keypoints == tuple(names) and info.skeleton_def.to_unified[0] == 0
    assert info.num_keypoints == 17


_names = st.sampled_from(["nose", "neck", "left_eye", "right_eye", "l_hip", "r_hip", "head_top",
                          "upper_neck", "belly", "left_x", "", "mouth_left", "mouth_right"])
_values = st.none() | st.booleans() | st.integers(-2, 3) | st.floats(allow_nan=True) | _names
_skeleton_tables = st.fixed_dictionaries({}, optional={
    "keypoints": st.lists(_names, unique=True, max_size=6) | st.lists(_names, max_size=3),
    "canonical": st.dictionaries(_names, _names | _values, max_size=3) | _values,
    "unmapped": st.lists(_names, max_size=2) | _values,
    "sigmas": st.lists(st.floats(0.01, 0.2), max_size=6) | _values})
_kind_tables = st.fixed_dictionaries({}, optional={
    "reader": st.sampled_from(["coco", "mpii", "x"]) | _values,
    "skeleton": st.sampled_from(["coco17", "mpii16", "a", "u"]) | _values,
    "metric": st.sampled_from(["coco_ap", "pckh", "pck_bbox"]) | _values,
    "fields": st.dictionaries(_names, st.integers(-1, 20) | _values, max_size=2) | _values,
    "file_keypoints": st.lists(st.integers(0, 140), max_size=2) | _values,
    "image_root": _names | _values})
_files = st.fixed_dictionaries({}, optional={
    "skeletons": st.dictionaries(st.sampled_from(["a", "b", "Bad-name"]), _skeleton_tables,
                                 max_size=2),
    "unified": st.dictionaries(st.sampled_from(["u", "a"]), _skeleton_tables, max_size=1),
    "kinds": st.dictionaries(st.sampled_from(["k", "coco"]), _kind_tables, max_size=2)})


@settings(max_examples=300, deadline=None)
@given(_files)
def test_fuzz_definitions_load_or_raise_one_line(data):
    """Any TOML-shaped data either gives checked definitions or one line of UniError."""
    from uniskel.core.skeleton_defs import parse_definitions

    try:
        defs = parse_definitions(data, "f.toml", dict(SKELETONS))
    except UniError as e:
        assert "\n" not in str(e) and str(e).startswith("f.toml")
        return
    for sk in [*defs.skeletons.values(), *defs.unified.values()]:
        flip = sk.flip_index
        assert (flip[flip] == np.arange(sk.num_keypoints)).all()
        named = [c for c in sk.canonical if c is not None]
        assert len(set(named)) == len(named) and len(sk.canonical) == sk.num_keypoints
        assert sk.sigmas is None or len(sk.sigmas) == sk.num_keypoints
        assert type(sk).from_json(json.loads(json.dumps(sk.to_json())), "x") == sk
