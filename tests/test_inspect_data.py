"""`uni inspect-data` and the drawing helpers it uses (core/draw.py)."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from click.testing import CliRunner
from conftest import one_line_error

from uniskel.cli import uni
from uniskel.core.datasets import load_dataset, summarize
from uniskel.core.draw import LEFT, LIMBS, MIDLINE, RIGHT, draw_box, draw_skeleton
from uniskel.core.skeletons import SKELETONS, UNIFIED_NAMES, unified_to_native


def _run(*args: str):
    return CliRunner().invoke(uni, list(args))


def test_json_is_one_object_matching_the_files(data_dir):
    spec = f"coco:{data_dir}/coco/test_coco.json"
    r = _run("inspect-data", spec, "--json")
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)  # exactly one JSON document, nothing else on stdout
    assert set(out) == {"images", "instances", "keypoints", "missing_images"}
    assert out["missing_images"] == 0
    assert (out["images"], out["instances"]) == (4, 12)
    assert list(out["keypoints"]) == list(UNIFIED_NAMES)
    raw = json.loads((data_dir / "coco" / "test_coco.json").read_text())
    kept = [a for a in raw["annotations"] if not a["iscrowd"] and a["num_keypoints"] > 0]
    assert out["keypoints"]["left_ear"] == sum(a["keypoints"][3 * 3 + 2] > 0 for a in kept)
    assert out == {**summarize(load_dataset(spec)), "missing_images": 0}


def test_table_lists_every_keypoint(data_dir):
    r = _run("inspect-data", f"halpe:{data_dir}/halpe/test_halpe.json:{data_dir}/coco/images")
    assert r.exit_code == 0, r.output
    rows = {line.split()[0]: line.split()[1] for line in r.stdout.splitlines()[1:]}
    assert rows["images"] == "4" and rows["instances"] == "12"
    assert rows["head_top"] == "12" and rows["thorax"] == "0"
    assert all(n in rows for n in UNIFIED_NAMES)


def test_head_boxes_option(tmp_path, data_dir):
    import scipy.io

    scipy.io.savemat(str(tmp_path / "h.mat"), {"headboxes_src": np.ones((2, 2, 5))})
    r = _run("inspect-data", f"mpii:{data_dir}/mpii/test_mpii.json", "--json",
             "--head-boxes", str(tmp_path / "h.mat"))
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["instances"] == 5
    scipy.io.savemat(str(tmp_path / "h.mat"), {"headboxes_src": np.ones((2, 2, 4))})
    r = _run("inspect-data", f"mpii:{data_dir}/mpii/test_mpii.json", "--head-boxes",
             str(tmp_path / "h.mat"))
    one_line_error(r, "head-box file has 4")


def test_draw_writes_n_pngs(tmp_path, synth_dir):
    spec = f"mpii:{synth_dir}/mpii/val.json"
    r = _run("inspect-data", spec, "--json", "--draw", "2", "--out", str(tmp_path / "d"))
    assert r.exit_code == 0, r.output
    json.loads(r.stdout)  # the PNG list goes to stderr with --json
    pngs = sorted((tmp_path / "d").glob("*.png"))
    assert len(pngs) == 2
    ds = load_dataset(spec)
    first = ds.instances[0]
    drawn = cv2.imread(str(tmp_path / "d" / f"mpii_{first.image_id}.png"))
    plain = cv2.imread(str(first.image_path))
    assert drawn.shape == plain.shape
    assert np.abs(drawn.astype(int) - plain).max() > 100  # something was drawn
    r = _run("inspect-data", spec, "--draw", "2")
    one_line_error(r, "--out")


def _person() -> np.ndarray:
    """(21, 3) a plausible upright unified skeleton in a 200x200 image."""
    pts = {"nose": (100, 40), "left_eye": (105, 35), "right_eye": (95, 35),
           "left_ear": (112, 38), "right_ear": (88, 38), "left_shoulder": (125, 70),
           "right_shoulder": (75, 70), "left_elbow": (140, 100), "right_elbow": (60, 100),
           "left_wrist": (150, 130), "right_wrist": (50, 130), "left_hip": (115, 130),
           "right_hip": (85, 130), "left_knee": (120, 160), "right_knee": (80, 160),
           "left_ankle": (122, 190), "right_ankle": (78, 190), "pelvis": (100, 130),
           "thorax": (100, 70), "upper_neck": (100, 60), "head_top": (100, 20)}
    return np.array([[*pts[n], 1.0] for n in UNIFIED_NAMES])


def test_draw_skeleton_colours_sides_and_skips_low_scores():
    img = np.zeros((200, 200, 3), np.uint8)
    kp = _person()
    out = draw_skeleton(img, kp, radius=3, thickness=2)
    assert img.max() == 0  # copy by default
    # Midpoints of limbs carry their side's colour.
    for a, b, colour in ((7, 9, LEFT), (8, 10, RIGHT), (18, 17, MIDLINE)):
        mx, my = ((kp[a, :2] + kp[b, :2]) / 2).round().astype(int)
        assert tuple(out[my, mx]) == colour
    # A low-score wrist is skipped, and so is its forearm.
    kp2 = kp.copy()
    kp2[9, 2] = 0.2
    out2 = draw_skeleton(img, kp2, threshold=0.3, radius=3, thickness=2)
    x, y = kp[9, :2].astype(int)
    assert out2[y, x].max() == 0 and out[y, x].max() > 0
    mx, my = ((kp[7, :2] + kp[9, :2]) / 2).round().astype(int)
    assert out2[my, mx].max() == 0


def test_draw_skeleton_accepts_native_keypoints():
    img = np.zeros((200, 200, 3), np.uint8)
    kp = _person()
    mpii = unified_to_native(kp, SKELETONS["mpii16"])
    a = draw_skeleton(img, mpii, skeleton=SKELETONS["mpii16"])
    uni_kp = kp.copy()
    uni_kp[:5, 2] = 0  # what MPII cannot know
    np.testing.assert_array_equal(a, draw_skeleton(img, uni_kp))


def test_limbs_connect_known_keypoints():
    names = {(UNIFIED_NAMES[a], UNIFIED_NAMES[b]) for a, b in LIMBS}
    assert ("left_elbow", "left_wrist") in names and ("head_top", "upper_neck") in names
    assert {i for limb in LIMBS for i in limb} == set(range(21))  # every keypoint is used


@pytest.mark.parametrize("label", [None, "7"])
def test_draw_box(label):
    img = np.zeros((100, 100, 3), np.uint8)
    out = draw_box(img, np.array([20.0, 30.0, 40.0, 50.0]), colour=(0, 255, 0), thickness=1,
                   label=label)
    assert tuple(out[30, 40]) == (0, 255, 0) and tuple(out[80, 40]) == (0, 255, 0)
    assert tuple(out[55, 20]) == (0, 255, 0) and tuple(out[55, 60]) == (0, 255, 0)
    assert out[55, 40].max() == 0  # inside stays untouched
