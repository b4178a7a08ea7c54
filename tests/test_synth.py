"""Synthetic datasets: real formats, determinism, labels that match the pixels."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
from functools import partial
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner
from conftest import one_line_error
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from uniskel.app.synth import generate
from uniskel.app.synth_domains import DOMAINS, mark_colour
from uniskel.app.synth_draw import dot_colour
from uniskel.cli import uni
from uniskel.core.datasets import load_dataset, summarize
from uniskel.core.errors import UniError
from uniskel.core.skeletons import SKELETONS, UNIFIED_NAMES

FILES = ["coco/train.json", "coco/val.json", "mpii/train.json", "mpii/val.json", "halpe/val.json"]
# sha256 over (relative path, bytes) of every file `generate(persons=12, seed=3)` wrote before
# the datasets had their own domains (commit 574753a): `same_domain=True` must still write them.
SHARED_STYLE_FILES = "3a25ed5369b97072cab9c3298c62d373c192285f4e643359b5d850e2ec0a0765"
BOTH = ["synth_dir", "own_dir"]  # the shared style, each dataset's own domain


@pytest.fixture(scope="module")
def own_dir(tmp_path_factory) -> Path:
    """60 persons per dataset, seed 0, each dataset in its own domain (the default)."""
    out = tmp_path_factory.mktemp("own")
    generate(out, persons=60, seed=0, progress=False)
    return out


def _all_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


def _digest(root: Path) -> str:
    h = hashlib.sha256()
    for name, data in _all_files(root).items():
        h.update(name.encode())
        h.update(data)
    return h.hexdigest()


def test_same_domain_writes_the_files_of_before_domains_and_own_domains_differ(tmp_path):
    generate(tmp_path / "shared", persons=12, seed=3, progress=False, same_domain=True)
    assert _digest(tmp_path / "shared") == SHARED_STYLE_FILES
    generate(tmp_path / "own", persons=12, seed=3, progress=False)
    generate(tmp_path / "again", persons=12, seed=3, progress=False)
    assert _all_files(tmp_path / "own") == _all_files(tmp_path / "again")
    assert _digest(tmp_path / "own") != SHARED_STYLE_FILES
    sizes = {kind: {cv2.imread(str(p)).shape[:2] for p in (tmp_path / "own" / kind).rglob("*.jpg")}
             for kind in ("coco", "mpii")}
    assert sizes["mpii"] == {(180, 320)}  # 16:9 video frames
    assert all(w == 320 and 190 <= h <= 222 for h, w in sizes["coco"])


def test_marks_none_domain_shared(tmp_path):
    """Own domains draw no keypoint marks by default; --marks domain gives each dataset its own
    dot palette, --marks shared the shared style's dots."""
    def error(root: Path, kind: str, colour) -> float:
        ds = load_dataset(f"{kind}:{root}/{kind}/train.json")
        errs = []
        for inst in ds.instances:
            img = cv2.imread(str(inst.image_path))[..., ::-1].astype(int)
            for k, name in enumerate(UNIFIED_NAMES):
                x, y, v = inst.unified[k]
                if v == 2 and name not in ("left_eye", "right_eye", "nose"):
                    errs.append(np.abs(img[int(round(y)), int(round(x))] - colour(name)).max())
        return float(np.median(errs))

    for marks in ("none", "domain", "shared"):
        generate(tmp_path / marks, persons=16, seed=1, progress=False, marks=marks)
    mpii_palette = partial(mark_colour, d=DOMAINS["mpii"])
    # MPII's frames are blurred and compressed (and COCO's labels moved by annotator noise):
    # its marks are compared, not thresholded.
    assert error(tmp_path / "shared", "mpii", dot_colour) + 30 < error(
        tmp_path / "none", "mpii", dot_colour)
    own = error(tmp_path / "domain", "mpii", mpii_palette)
    assert own + 30 < error(tmp_path / "domain", "mpii", dot_colour)
    assert own + 30 < error(tmp_path / "none", "mpii", mpii_palette)
    with pytest.raises(UniError, match="--marks"):
        generate(tmp_path / "x", persons=4, progress=False, marks="dots")


def test_layout(synth_dir):
    for f in FILES:
        assert (synth_dir / f).is_file(), f
    for kind in ("coco", "mpii", "halpe"):
        assert any((synth_dir / kind / "images").glob("*.jpg"))
    assert not list(synth_dir.glob(".synth-*"))  # the temporary build folder is gone


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    a = generate(tmp_path / "a", persons=12, seed=3, progress=False)
    generate(tmp_path / "b", persons=12, seed=3, progress=False)
    generate(tmp_path / "c", persons=12, seed=4, progress=False)
    fa, fb, fc = (_all_files(tmp_path / x) for x in "abc")
    assert fa == fb and len(fa) > 10
    assert fa["coco/val.json"] != fc["coco/val.json"]
    assert set(a) == {f[: -len(".json")] for f in FILES}


def test_refuses_to_overwrite_unless_asked(tmp_path):
    generate(tmp_path, persons=4, seed=0, progress=False)
    before = (tmp_path / "coco" / "train.json").read_bytes()
    with pytest.raises(UniError, match="already exists"):
        generate(tmp_path, persons=4, seed=1, progress=False)
    assert (tmp_path / "coco" / "train.json").read_bytes() == before
    generate(tmp_path, persons=4, seed=1, overwrite=True, progress=False)
    assert (tmp_path / "coco" / "train.json").read_bytes() != before


@pytest.mark.parametrize("root", BOTH)
def test_counts_and_split(root, request):
    synth_dir = request.getfixturevalue(root)
    persons = {"train": 51, "val": 9}  # 60 persons, 15 % val
    for kind in ("coco", "mpii"):
        for split, n in persons.items():
            ds = load_dataset(f"{kind}:{synth_dir}/{kind}/{split}.json")
            # Every figure keeps its pelvis in the image, so (almost) all get annotated.
            assert n - 2 <= len(ds.instances) <= n
            assert 1 <= ds.num_images <= n
    halpe = load_dataset(f"halpe:{synth_dir}/halpe/val.json")
    assert 7 <= len(halpe.instances) <= 9
    # Like real COCO: occluded points are labeled v=1, points outside the image v=0.
    coco = load_dataset(f"coco:{synth_dir}/coco/train.json")
    v = np.concatenate([i.keypoints[:, 2] for i in coco.instances])
    assert (v == 1).any() and (v == 0).any() and (v == 2).mean() > 0.5


@pytest.mark.parametrize("root", BOTH)
def test_coco_files_are_valid_coco(root, request):
    synth_dir = request.getfixturevalue(root)
    unlabelled = 0
    for split in ("train", "val"):
        raw = json.loads((synth_dir / "coco" / f"{split}.json").read_text())
        cat = raw["categories"][0]
        assert cat["keypoints"] == list(UNIFIED_NAMES[:17]) and len(cat["skeleton"]) == 19
        sizes = {}
        for im in raw["images"]:
            h, w = cv2.imread(str(synth_dir / "coco" / "images" / im["file_name"])).shape[:2]
            assert (im["width"], im["height"]) == (w, h)
            sizes[im["id"]] = (w, h)
        for a in raw["annotations"]:
            kp = np.array(a["keypoints"], float).reshape(17, 3)
            assert a["num_keypoints"] == (kp[:, 2] > 0).sum()
            unlabelled += a["num_keypoints"] == 0  # COCO's persons too small to label
            assert a["iscrowd"] == 0 and a["area"] > 0 and a["category_id"] == 1
            w, h = sizes[a["image_id"]]
            x, y, bw, bh = a["bbox"]
            assert 0 <= x and 0 <= y and bw > 0 and bh > 0 and x + bw <= w and y + bh <= h
            lab = kp[kp[:, 2] > 0]
            assert ((lab[:, 0] >= 0) & (lab[:, 0] <= w - 1) & (lab[:, 1] >= 0)
                    & (lab[:, 1] <= h - 1)).all()
            assert (kp[kp[:, 2] == 0, :2] == 0).all()
            assert set(kp[:, 2]) <= {0, 1, 2}
        with contextlib.redirect_stdout(io.StringIO()):
            coco = COCO(str(synth_dir / "coco" / f"{split}.json"))
        assert len(coco.getAnnIds()) == len(raw["annotations"])
    assert (unlabelled > 0) == (root == "own_dir")


@pytest.mark.parametrize("root", BOTH)
def test_coco_val_scores_ap_1_with_gt_as_predictions(root, request):
    synth_dir = request.getfixturevalue(root)
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(synth_dir / "coco" / "val.json"))
        dets = [{"image_id": a["image_id"], "category_id": 1, "keypoints": a["keypoints"],
                 "score": 1.0} for a in gt.dataset["annotations"]]
        ev = COCOeval(gt, gt.loadRes(dets), "keypoints")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    assert ev.stats[0] == pytest.approx(1.0)
    # And a prediction moved by 30 px scores lower: the metric can fail.
    with contextlib.redirect_stdout(io.StringIO()):
        moved = [dict(d, keypoints=[v + 30 if i % 3 != 2 else v
                                    for i, v in enumerate(d["keypoints"])]) for d in dets]
        ev = COCOeval(gt, gt.loadRes(moved), "keypoints")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    assert ev.stats[0] < 0.5


@pytest.mark.parametrize("root", BOTH)
def test_mpii_format_is_one_based_and_labels_only_mpii(root, request):
    synth_dir = request.getfixturevalue(root)
    raw = json.loads((synth_dir / "mpii" / "val.json").read_text())
    ds = load_dataset(f"mpii:{synth_dir}/mpii/val.json")
    assert len(raw) == len(ds.instances)
    for rec, inst in zip(raw, ds.instances, strict=True):
        assert set(rec) == {"image", "center", "scale", "joints", "joints_vis", "head_box"}
        assert len(rec["joints"]) == 16 and len(rec["joints_vis"]) == 16
        vis = np.array(rec["joints_vis"]) > 0
        np.testing.assert_allclose(inst.keypoints[vis, :2], np.array(rec["joints"])[vis] - 1)
        np.testing.assert_allclose(inst.head_box, np.array(rec["head_box"]) - 1)
        hb = inst.head_box
        assert hb[2] > hb[0] and hb[3] > hb[1]
        # The head box holds the head top.
        top = inst.unified[UNIFIED_NAMES.index("head_top")]
        if top[2] > 0:
            assert hb[0] <= top[0] <= hb[2] and hb[1] - 1 <= top[1] <= hb[3]
        if root == "own_dir":  # MPII's own framing: checked in test_synth_stats.py
            continue
        # The crop box made from (center, scale) holds every labeled joint.
        x, y, w, h = inst.bbox
        lab = inst.keypoints[vis]
        assert ((lab[:, 0] >= x) & (lab[:, 0] <= x + w) & (lab[:, 1] >= y)
                & (lab[:, 1] <= y + h)).all()
    s = summarize(ds)["keypoints"]
    assert all(s[n] == 0 for n in UNIFIED_NAMES[:5])  # MPII never labels the face
    assert all(s[n] > 0 for n in UNIFIED_NAMES[5:])


@pytest.mark.parametrize("root", BOTH)
def test_halpe_labels_head_neck_hip_not_feet(root, request):
    synth_dir = request.getfixturevalue(root)
    raw = json.loads((synth_dir / "halpe" / "val.json").read_text())
    assert raw["categories"][0]["keypoints"] == list(SKELETONS["halpe26"].keypoints)
    for a in raw["annotations"]:
        kp = np.array(a["keypoints"], float).reshape(26, 3)
        assert (kp[20:] == 0).all()
    s = summarize(load_dataset(f"halpe:{synth_dir}/halpe/val.json"))["keypoints"]
    assert s["thorax"] == 0 and min(s[n] for n in ("head_top", "upper_neck", "pelvis")) > 0
    coco = summarize(load_dataset(f"coco:{synth_dir}/coco/train.json"))["keypoints"]
    assert all(coco[n] == 0 for n in UNIFIED_NAMES[17:])
    assert all(coco[n] > 0 for n in UNIFIED_NAMES[:17])


def test_visible_keypoints_sit_on_their_coloured_dots(synth_dir):
    """Every unified keypoint is findable from pixels: a v=2 point shows its own dot colour."""
    for kind, split in (("coco", "train"), ("mpii", "train"), ("halpe", "val")):
        ds = load_dataset(f"{kind}:{synth_dir}/{kind}/{split}.json")
        errors: dict[str, list[float]] = {}
        images: dict[Path, np.ndarray] = {}
        for inst in ds.instances:
            if inst.image_path not in images:
                images[inst.image_path] = cv2.imread(str(inst.image_path))[..., ::-1]
            img = images[inst.image_path].astype(int)
            for k, name in enumerate(UNIFIED_NAMES):
                x, y, v = inst.unified[k]
                if v == 2:
                    px = img[int(round(y)), int(round(x))]
                    errors.setdefault(name, []).append(np.abs(px - dot_colour(name)).max())
        for name, errs in errors.items():
            assert np.median(errs) < 70, (kind, name, np.median(errs))


def test_cli_synth(tmp_path):
    r = CliRunner().invoke(uni, ["synth", "--out", str(tmp_path), "--persons", "6",
                                 "--seed", "1"])
    assert r.exit_code == 0, r.output
    specs = [line.split(": ", 1)[1] for line in r.stdout.splitlines() if ": " in line]
    assert len(specs) == 5
    for spec in specs:
        assert load_dataset(spec).instances
    r = CliRunner().invoke(uni, ["synth", "--out", str(tmp_path), "--persons", "6"])
    one_line_error(r, "already exists")


def test_output_paths_that_cannot_be_made_are_one_line(tmp_path, data_dir):
    """Issue 16: `uni synth --out /etc/passwd/x` printed a traceback. Every command's output
    path under a file is one line, exit 2, before any work; so is an image folder that is a
    file (`inspect-data coco:ANN:/etc/passwd` said nothing)."""
    a_file = tmp_path / "a_file"
    a_file.write_text("not a folder")
    under = str(a_file / "x")
    spec = f"coco:{data_dir / 'coco/test_coco.json'}"
    config = tmp_path / "exp.toml"
    config.write_text(f'out = "{under}"\ndata = ["{spec}"]\n')
    commands = [
        ["synth", "--out", under],
        ["cache-teachers", "--data", spec, "--teacher", "t.onnx", "--out", under],
        ["train-student", "--data", spec, "--out", under],
        ["train-student", "--config", str(config)],
        ["inspect-data", spec, "--draw", "1", "--out", under],
        ["inspect-store", "s.h5", "--draw", "1", "--out", under],
        ["describe-teacher", "m.onnx", "--skeleton", "coco17", "--head", "heatmap",
         "--out", under],
        ["evaluate", "m.onnx", "--data", spec, "--save-predictions", under],
        ["report", "run", "--data", spec, "--out", under],
        ["export", "run", "--out", under],
        ["predict", "m.onnx", "i.jpg", "--out", under],
        ["demo", "--out", under],
    ]
    for args in commands:
        r = CliRunner().invoke(uni, args)
        one_line_error(r, f"{a_file} is a file, not a folder")
        assert r.stdout == "", args
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file", "exp.toml"]
    r = CliRunner().invoke(uni, ["synth", "--out", str(a_file)])  # the folder itself a file
    one_line_error(r, str(a_file))
    r = CliRunner().invoke(uni, ["inspect-data", f"{spec}:{a_file}"])
    one_line_error(r, f"{a_file}: the IMAGE_ROOT", "not a folder")
