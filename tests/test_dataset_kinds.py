"""Dataset kinds on their real samples, readers by shape, and skeletons added by a user's TOML
(core/skeletons.toml, core/annotations.py, README "Dataset kinds")."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import one_line_error

from uniskel.core.datasets import load_dataset, parse_spec, summarize
from uniskel.core.errors import UniError
from uniskel.core.skeletons import UNIFIED_NAMES, get_skeleton, known_unified

# docs/conventions.md "Dataset mappings", written out again: a native name (as the file's
# category spells it, lower case, spaces as _) → unified name; not listed = the same name.
RENAMED = {"neck": "upper_neck", "head": "head_top", "head_bottom": "upper_neck", "belly": None}
# samples/README.md: (kind, annotation file, images, persons with a labelled keypoint)
SAMPLES = {
    "coco": ("coco/test_coco.json", 4, 12),
    "aic": ("aic/test_aic.json", 3, 9),
    "crowdpose": ("crowdpose/test_crowdpose.json", 2, 4),
    "jhmdb": ("jhmdb/test_jhmdb_sub1.json", 3, 3),
    "posetrack18": ("posetrack18/test_posetrack18_val.json", 3, 14),
}


def _cli(args: list[str]):
    from click.testing import CliRunner

    from uniskel.cli import uni

    return CliRunner().invoke(uni, args)


def _expected_counts(path: Path) -> dict[str, int]:
    """Labelled (v > 0) persons per unified name, with plain json and the table above."""
    raw = json.loads(path.read_text())
    names = [n.lower().replace(" ", "_") for n in raw["categories"][0]["keypoints"]]
    counts = dict.fromkeys(UNIFIED_NAMES, 0)
    for a in raw["annotations"]:
        v = a["keypoints"][2::3]
        if a.get("iscrowd") or not any(x > 0 for x in v):
            continue
        for name, x in zip(names, v, strict=True):
            unified = RENAMED.get(name, name)
            if x > 0 and unified is not None:
                counts[unified] += 1
    return counts


@pytest.mark.parametrize("kind", sorted(SAMPLES))
def test_each_kind_reads_its_real_sample(kind, data_dir):
    rel, images, persons = SAMPLES[kind]
    path = data_dir / rel
    ds = load_dataset(f"{kind}:{path}")  # default image root (PoseTrack18: its own folder)
    assert ds.kind.name == kind and ds.skeleton.name == ds.kind.skeleton
    raw = json.loads(path.read_text())
    assert list(ds.skeleton.keypoints) == [n.lower().replace(" ", "_")
                                           for n in raw["categories"][0]["keypoints"]]
    s = summarize(ds)
    assert (s["images"], s["instances"]) == (images, persons)
    assert s["keypoints"] == _expected_counts(path)
    assert all(Path(p).is_file() for p in ds.image_paths)  # the kind's default root is right
    assert ds.unified.shape == (persons, 21, 3)


def test_sample_quirks(data_dir):
    pt = load_dataset(f"posetrack18:{data_dir}/posetrack18/test_posetrack18_val.json")
    assert parse_spec(f"posetrack18:{data_dir}/posetrack18/x.json").image_root == \
        data_dir / "posetrack18"
    assert set(np.unique(pt.keypoints[:, :, 2])) == {0.0, 1.0}  # v only 0/1, kept as labelled
    assert pt.instance_ids.max() > 2**31 and pt.image_ids.max() > 2**31
    ears = [pt.skeleton.keypoints.index(n) for n in ("left_ear", "right_ear")]
    assert (pt.keypoints[:, ears, 2] == 0).all()  # never labelled
    assert pt.bboxes[:, 1].min() < 0  # a box starting above the frame is kept as it is
    jh = load_dataset(f"jhmdb:{data_dir}/jhmdb/test_jhmdb_sub1.json")
    assert (jh.keypoints[:, :, 2] == 2).all() and jh.instance_ids.min() > 2**31
    assert (jh.areas == jh.bboxes[:, 2] * jh.bboxes[:, 3]).all()  # no 'area': the box's
    belly = jh.skeleton.keypoints.index("belly")
    assert jh.skeleton.to_unified[belly] is None


def test_num_keypoints_disagreeing_with_v_is_ignored(tmp_path, data_dir):
    """CrowdPose counts 12 of its 14 joints in num_keypoints: a person labelled only on the
    head and neck says 0 and is still a person."""
    raw = json.loads((data_dir / "crowdpose/test_crowdpose.json").read_text())
    a = next(a for a in raw["annotations"] if a["keypoints"][2::3][12] > 0)
    a["keypoints"][2:36:3] = [0] * 12
    a["num_keypoints"] = 0
    path = tmp_path / "cp.json"
    path.write_text(json.dumps(raw))
    ds = load_dataset(f"crowdpose:{path}:{data_dir}/crowdpose/images")
    row = ds.row_of(a["id"])
    assert row is not None and ds.unified[row, :, 2].nonzero()[0].tolist() == [19, 20]


def test_coco_family_kinds_and_wholebody_feet(tmp_path, data_dir):
    coco = load_dataset(f"coco:{data_dir}/coco/test_coco.json")
    for kind in ("ochuman", "humanart"):
        ds = load_dataset(f"{kind}:{data_dir}/coco/test_coco.json")
        assert summarize(ds) == summarize(coco) and ds.kind.metric == "coco_ap"
    raw = json.loads((data_dir / "coco/test_coco.json").read_text())
    kept = [a for a in raw["annotations"] if not a["iscrowd"] and a["num_keypoints"] > 0]
    for j, a in enumerate(kept):  # COCO-WholeBody's separate foot array and its flag
        a["foot_kpts"] = [10.0 + j, 20.0, 2] * 3 + [30.0, 40.0, 1] * 3
        a["foot_valid"] = j % 2 == 0
    path = tmp_path / "wb.json"
    path.write_text(json.dumps(raw))
    ds = load_dataset(f"coco_wholebody:{path}:{data_dir}/coco/images")
    assert ds.keypoints.shape == (12, 23, 3)
    u27 = ds.unified_rows(slice(None), known_unified()["unified27"])  # (12, 27, 3)
    feet = u27[:, 21:, 2] > 0
    valid = np.array([j % 2 == 0 for j in range(len(kept))])[np.argsort([a["id"] for a in kept])]
    assert (feet.all(axis=1) == valid).all() and not feet[~valid].any()
    left_big_toe = 21  # unified27: Halpe's foot order, whatever the file's order
    assert u27[valid, left_big_toe, 1].tolist() == [20.0] * valid.sum()
    assert (ds.unified == coco.unified).all()  # feet are not in unified21
    bad = json.loads(path.read_text())
    bad["annotations"][0]["foot_kpts"] = [1, 2, 2] * 5
    path.write_text(json.dumps(bad))
    with pytest.raises(UniError, match=r"field 'foot_kpts': expected 18 numbers .*got 15"):
        load_dataset(f"coco_wholebody:{path}:{data_dir}/coco/images")


def test_file_and_skeleton_k_mismatch_is_one_line(data_dir):
    cp = data_dir / "crowdpose/test_crowdpose.json"
    one_line_error(_cli(["inspect-data", f"coco:{cp}"]), "test_crowdpose.json",
                   "annotation id", "'keypoints'", "expected 51 numbers", "coco17", "got 42")
    one_line_error(_cli(["inspect-data", f"crowdpose:{data_dir}/coco/test_coco.json"]),
                   "test_coco.json", "annotation id", "expected 42 numbers", "got 51")
    halpe = data_dir / "halpe/test_halpe.json"
    ds = load_dataset(f"halpe:{halpe}:{data_dir}/coco/images")  # 136 in the file, 26 used
    assert ds.keypoints.shape[1] == 26


# ------------------------------------------------------------------ image-level fields


def test_image_level_fields_of_the_samples(data_dir):
    """CrowdPose's crowdIndex, PoseTrack's frame_id, vid_id (a string of digits) and ignore
    polygons, as plain json reads them; absent elsewhere (NaN, -1, no polygon)."""
    cp_raw = json.loads((data_dir / "crowdpose/test_crowdpose.json").read_text())
    cp = load_dataset(f"crowdpose:{data_dir}/crowdpose/test_crowdpose.json")
    assert cp.crowd_index.tolist() == [im["crowdIndex"] for im in cp_raw["images"]] == [0.33, 0.39]
    assert (cp.frame_ids == -1).all() and (cp.vid_ids == -1).all() and not len(cp.ignore_image)
    s = summarize(cp)
    assert s["crowd_index"] == {"easy": 0, "medium": 2, "hard": 0}  # bounds 0.2, 0.8
    assert not {"videos", "frames", "ignore_regions"} & set(s)
    pt_path = data_dir / "posetrack18/test_posetrack18_val.json"
    images = json.loads(pt_path.read_text())["images"]
    pt = load_dataset(f"posetrack18:{pt_path}")
    assert pt.frame_ids.tolist() == [im["frame_id"] for im in images]
    assert pt.vid_ids.tolist() == [int(im["vid_id"]) for im in images] == [12834, 9473, 3418]
    assert np.isnan(pt.crowd_index).all()
    for row, im in enumerate(images):
        want = [np.c_[x, y] for x, y in zip(im["ignore_regions_x"], im["ignore_regions_y"],
                                           strict=True)]
        got = pt.ignore_regions(row)
        assert len(got) == len(want) and all((g == w).all() for g, w in zip(got, want,
                                                                            strict=True))
    s = summarize(pt)
    assert (s["videos"], s["frames"], s["ignore_regions"]) == (3, 3, 4 + 2 + 9)
    assert "crowd_index" not in s
    coco = summarize(load_dataset(f"coco:{data_dir}/coco/test_coco.json"))
    assert set(coco) == {"images", "instances", "keypoints"}


def test_ignore_region_containment_matches_opencv(data_dir):
    """Centres of the 278 sample detections against the frames' polygons: the same answer as
    cv2.pointPolygonTest (strictly inside); most of the sample's boxes are in the crowds."""
    import cv2

    pt = load_dataset(f"posetrack18:{data_dir}/posetrack18/test_posetrack18_val.json")
    dets = json.loads((data_dir / "posetrack18/test_posetrack18_human_detections.json")
                      .read_text())
    inside = 0
    for row, image_id in enumerate(pt.image_ids.tolist()):
        boxes = np.array([d["bbox"] for d in dets if d["image_id"] == image_id])
        centres = boxes[:, :2] + boxes[:, 2:] / 2
        polys = [p.astype(np.float32) for p in pt.ignore_regions(row)]
        want = [any(cv2.pointPolygonTest(p, (float(x), float(y)), False) > 0 for p in polys)
                for x, y in centres]
        got = pt.in_ignore_region(row, centres)
        assert got.tolist() == want
        inside += int(got.sum())
    assert inside == 182  # of 278
    assert not load_dataset(f"coco:{data_dir}/coco/test_coco.json").in_ignore_region(
        0, [[100.0, 100.0]]).any()


def test_image_level_fields_survive_the_cache(tmp_path, monkeypatch, data_dir):
    from uniskel.core import dataset_cache
    from uniskel.core import datasets as datasets_module

    monkeypatch.setenv("UNI_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(dataset_cache, "MIN_INSTANCES", 0)
    spec = f"posetrack18:{data_dir}/posetrack18/test_posetrack18_val.json"
    first = load_dataset(spec)
    monkeypatch.setattr(datasets_module, "coco_columns", lambda *_: 1 / 0)  # must not parse
    again = load_dataset(spec)
    for name in ("crowd_index", "frame_ids", "vid_ids", "ignore_image", "ignore_offsets",
                 "ignore_xy"):
        np.testing.assert_array_equal(getattr(again, name), getattr(first, name))
        assert getattr(again, name).dtype == getattr(first, name).dtype
    assert summarize(again) == summarize(first)


def _pt_changed(tmp_path, data_dir, **image0) -> str:
    raw = json.loads((data_dir / "posetrack18/test_posetrack18_val.json").read_text())
    for key, value in image0.items():
        if value is None:
            del raw["images"][0][key]
        else:
            raw["images"][0][key] = value
    path = tmp_path / "pt.json"
    path.write_text(json.dumps(raw))
    return f"posetrack18:{path}"


BAD_IMAGE_FIELDS = {  # case: (fields of the first image, fragments of the one line)
    "x and y polygon counts": ({"ignore_regions_y": [[1, 2, 3]]},
                               ["'ignore_regions_y'", "1 polygons", "has 4"]),
    "x and y lengths": ({"ignore_regions_x": [[1, 2, 3]], "ignore_regions_y": [[1, 2]]},
                        ["'ignore_regions_y'", "polygon 0 has 2", "has 3"]),
    "not a number": ({"ignore_regions_x": [[1, "a", 3]], "ignore_regions_y": [[1, 2, 3]]},
                     ["'ignore_regions_x' polygon 0", "expected a finite number"]),
    "flat list": ({"ignore_regions_x": [1, 2, 3], "ignore_regions_y": [1, 2, 3]},
                  ["'ignore_regions_x'", "list of polygons"]),
    "one of the two": ({"ignore_regions_y": None}, ["missing field 'ignore_regions_y'"]),
    "video id": ({"vid_id": "01a"}, ["'vid_id'", "non-negative integer"]),
    "frame id": ({"frame_id": -3}, ["'frame_id'", "non-negative integer"]),
    "crowd index": ({"crowdIndex": "high"}, ["'crowdIndex'", "finite number"]),
}


@pytest.mark.parametrize("case", sorted(BAD_IMAGE_FIELDS))
def test_bad_image_fields_are_one_line(case, tmp_path, data_dir):
    fields, fragments = BAD_IMAGE_FIELDS[case]
    spec = _pt_changed(tmp_path, data_dir, **fields)
    one_line_error(_cli(["inspect-data", spec, "--json"]), "pt.json", "image id 10128340000",
                   *fragments)


def test_inspect_data_reports_videos_and_crowd_classes(tmp_path, data_dir):
    pt = data_dir / "posetrack18/test_posetrack18_val.json"
    r = _cli(["inspect-data", f"posetrack18:{pt}", "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert (out["videos"], out["frames"], out["ignore_regions"], out["images"]) == (3, 3, 15, 3)
    # two frames of one video: 2 videos, 3 frames
    spec = _pt_changed(tmp_path, data_dir, vid_id="009473", frame_id=10094730001)
    out = json.loads(_cli(["inspect-data", spec, "--json"]).stdout)
    assert (out["videos"], out["frames"]) == (2, 3)
    table = _cli(["inspect-data", f"posetrack18:{pt}"]).stdout.splitlines()
    assert {"videos     3", "frames     3", "ignore     15 polygons"} <= set(table)
    table = _cli(["inspect-data", f"crowdpose:{data_dir}/crowdpose/test_crowdpose.json"]).stdout
    assert "crowd      easy 0, medium 2, hard 0 images" in table.splitlines()


# ------------------------------------------------------------------ a user's skeleton file

USER = """
[skeletons.cp_renamed]
keypoints = ["left_shoulder", "right_shoulder", "left_elbow", "right_elbow", "left_wrist",
    "right_wrist", "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle",
    "right_ankle", "top_of_head", "neck_base"]
canonical = { top_of_head = "head_top", neck_base = "upper_neck" }
sigmas = [0.079, 0.079, 0.072, 0.072, 0.062, 0.062, 0.107, 0.107, 0.087, 0.087, 0.089, 0.089,
    0.079, 0.079]

[unified.with_neck_base]
keypoints = ["nose", "upper_neck", "head_top"]
sigmas = [0.026, 0.08, 0.08]

[kinds.mykind]
reader = "coco"
skeleton = "cp_renamed"
metric = "coco_ap"
"""


def test_user_toml_adds_a_skeleton_and_kind_end_to_end(tmp_path, data_dir, skeleton_registry):
    f = tmp_path / "mine.toml"
    f.write_text(USER)
    cp = data_dir / "crowdpose/test_crowdpose.json"
    r = _cli(["--skeletons", str(f), "inspect-data", f"mykind:{cp}:{data_dir}/crowdpose/images",
              "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    want = summarize(load_dataset(f"crowdpose:{cp}"))
    assert {k: out[k] for k in want} == want
    r = _cli(["--skeletons", str(f), "skeletons", "--json"])
    listed = json.loads(r.stdout)
    assert listed["kinds"]["mykind"]["skeleton"] == "cp_renamed"
    assert listed["skeletons"]["cp_renamed"]["to_unified21"][12:] == ["head_top", "upper_neck"]
    assert listed["skeletons"]["cp_renamed"]["flip_pairs"][0] == [0, 1]
    sk = get_skeleton("cp_renamed")
    small = known_unified()["with_neck_base"]
    assert sk.to(small) == (None,) * 12 + (2, 1)
    assert sk.mask(small).tolist() == [False, True, True]
    assert "cp_renamed" in _cli(["--skeletons", str(f), "skeletons"]).stdout
    skeleton_registry.load_skeleton_file(f)  # loading the same file again changes nothing


BAD = {  # case: (TOML, fragments of the one line)
    "unknown key": ('[skeletons.a]\nkeypoints = ["nose"]\nkeypointz = []\n',
                    ["skeletons.a", "unknown key 'keypointz'"]),
    "unknown table": ('[skeleton.a]\nkeypoints = ["nose"]\n', ["unknown key 'skeleton'"]),
    "unknown keypoint in mapping": (
        '[skeletons.a]\nkeypoints = ["nose", "neck"]\ncanonical = { nek = "upper_neck" }\n',
        ["skeletons.a", "'canonical'", "unknown keypoint 'nek'"]),
    "two keypoints one slot": (
        '[skeletons.a]\nkeypoints = ["head", "head_top"]\ncanonical = { head = "head_top" }\n',
        ["skeletons.a", "'head' and 'head_top' both map to 'head_top'"]),
    "duplicate names": ('[skeletons.a]\nkeypoints = ["nose", "neck", "nose"]\n',
                        ["skeletons.a", "'keypoints'", "duplicate name 'nose'"]),
    "flip partner missing": ('[skeletons.a]\nkeypoints = ["nose", "left_x"]\n',
                             ["skeletons.a", "'left_x' has no flip partner 'right_x'"]),
    "sigmas of wrong length": ('[skeletons.a]\nkeypoints = ["nose", "neck"]\nsigmas = [0.1]\n',
                               ["skeletons.a", "'sigmas'", "expected 2 numbers", "got 1"]),
    "flip pair mapped apart": (
        '[skeletons.a]\nkeypoints = ["l_a", "r_a"]\ncanonical = { l_a = "left_eye" }\n',
        ["skeletons.a", "flip pair 'l_a', 'r_a'"]),
    "kind of unknown skeleton": (
        '[kinds.k]\nreader = "coco"\nskeleton = "nope"\nmetric = "coco_ap"\n',
        ["kinds.k", "'skeleton'", "unknown skeleton 'nope'"]),
    "kind with a bad metric": (
        '[kinds.k]\nreader = "coco"\nskeleton = "coco17"\nmetric = "pckh"\n',
        ["kinds.k", "'metric'", "pckh"]),
    "redefining a built-in": ('[skeletons.coco17]\nkeypoints = ["nose"]\n',
                              ["skeletons.coco17", "redefines 'coco17'"]),
    "not TOML": ("[skeletons.a\n", ["not valid TOML"]),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_skeleton_file_is_one_line_and_writes_nothing(case, tmp_path, data_dir,
                                                          skeleton_registry):
    text, fragments = BAD[case]
    f = tmp_path / "bad.toml"
    f.write_text(text)
    before = (dict(skeleton_registry.SKELETONS), skeleton_registry.known_kinds())
    out = tmp_path / "drawn"
    r = _cli(["--skeletons", str(f), "inspect-data", f"coco:{data_dir}/coco/test_coco.json",
              "--draw", "1", "--out", str(out)])
    one_line_error(r, "bad.toml", *fragments)
    assert not out.exists()
    assert (skeleton_registry.SKELETONS, skeleton_registry.known_kinds()) == before  # all or none


def test_user_kind_file_k_mismatch_names_record(tmp_path, data_dir, skeleton_registry):
    f = tmp_path / "mine.toml"
    f.write_text(USER)
    # Readers go by shape: AIC's 14 keypoints read as any 14-keypoint kind (wrongly named).
    assert _cli(["--skeletons", str(f), "inspect-data",
                 f"mykind:{data_dir}/aic/test_aic.json:{data_dir}/aic/images"]).exit_code == 0
    one_line_error(_cli(["--skeletons", str(f), "inspect-data",
                         f"mykind:{data_dir}/jhmdb/test_jhmdb_sub1.json"]),
                   "test_jhmdb_sub1.json", "annotation id 1000", "expected 42 numbers",
                   "cp_renamed", "got 45")
    one_line_error(_cli(["--skeletons", str(tmp_path / "none.toml"), "skeletons"]),
                   "none.toml", "not found")
