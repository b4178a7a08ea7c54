"""Bad input (issue 8): broken annotations, a missing image, a teacher whose outputs contradict
its description, a store cached with other crop settings, stores of one teacher under two
skeletons, an MPII .mat without head boxes. Each is one line and exit 2, leaving nothing
behind or changed (a missing image's people are skipped unless --strict)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import onnx
import pytest
from analytic_teacher import write_analytic_store
from click.testing import CliRunner
from conftest import DATA, one_line_error
from reliability import names, sha

from uniskel.cli import uni
from uniskel.core.datasets import load_dataset
from uniskel.core.skeletons import get_skeleton
from uniskel.stores.reader import open_store


def _edited(tmp_path: Path, edit) -> str:
    raw = json.loads((DATA / "coco/test_coco.json").read_text())
    edit(raw)
    (tmp_path / "ann.json").write_text(json.dumps(raw))
    return f"coco:{tmp_path / 'ann.json'}:{DATA / 'coco/images'}"


def _kp(value):
    def edit(raw):
        raw["annotations"][0]["keypoints"][4] = value
    return edit


def _bbox(value):
    def edit(raw):
        raw["annotations"][0]["bbox"] = value
    return edit


def _file_name(value):
    def edit(raw):
        raw["images"][0]["file_name"] = value
    return edit


BAD_ANNOTATIONS = {
    "nan keypoint": (_kp(float("nan")), ["'keypoints'", "NaN"]),
    "inf keypoint": (_kp(float("inf")), ["'keypoints'", "NaN or inf"]),
    "inf bbox": (_bbox([1, 2, float("inf"), 5]), ["'bbox'", "NaN or inf"]),
    "negative bbox": (_bbox([10, 20, -5, 30]), ["'bbox'", "must be positive"]),
    "escaping image path": (_file_name("../../secret.jpg"), ["images[0]", "escapes"]),
    "absolute image path": (_file_name("/etc/passwd"), ["images[0]", "escapes"]),
}


@pytest.mark.parametrize("case", sorted(BAD_ANNOTATIONS))
def test_bad_annotations_stop_cache_teachers_leaving_nothing(case, heatmap_teacher, tmp_path):
    edit, fragments = BAD_ANNOTATIONS[case]
    spec = _edited(tmp_path, edit)
    out = tmp_path / "out"
    res = CliRunner().invoke(uni, ["cache-teachers", "--data", spec, "--teacher",
                                   str(heatmap_teacher), "--out", str(out), "--workers", "1"])
    one_line_error(res, "ann.json", *fragments)
    assert not out.exists()


def test_missing_image_skipped_and_listed_or_fatal_with_strict(heatmap_teacher, tmp_path):
    images = tmp_path / "images"
    shutil.copytree(DATA / "coco/images", images)
    gone = sorted(images.iterdir())[0]
    gone.unlink()
    spec = f"coco:{DATA / 'coco/test_coco.json'}:{images}"
    users = [i.instance_id for i in load_dataset(spec).instances if i.image_path == gone]
    out = tmp_path / "out"
    base = ["cache-teachers", "--data", spec, "--teacher", str(heatmap_teacher), "--out",
            str(out), "--workers", "1", "--batch-size", "32"]
    one_line_error(CliRunner().invoke(uni, base + ["--strict"]), str(gone), "instance",
                   "--strict")
    store = next(out.glob("*.h5"))  # resumable, nothing half-written in it
    assert not open_store(store).complete and open_store(store).verify() == []
    assert names(out) == [store.name]
    res = CliRunner().invoke(uni, base)
    assert res.exit_code == 0, res.output
    assert f"{len(users)} skipped" in res.stdout and str(gone) in res.stdout
    r = open_store(store)
    assert not r.complete and sorted(r.skipped) == sorted(users)  # retried by the next run
    assert all(str(gone) in reason for reason in r.skipped.values())


def _stamp(src: Path, dst: Path, **fields) -> Path:
    """A copy of a teacher whose metadata says something else (no checks on the way)."""
    model = onnx.load(str(src))
    for p in model.metadata_props:
        if p.key[len("uni."):] in fields:
            p.value = json.dumps(fields[p.key[len("uni."):]])
    onnx.save(model, str(dst))
    return dst


@pytest.mark.parametrize("fields,fragment", [
    ({"skeleton": "halpe26", "num_keypoints": 26,
      "skeleton_def": get_skeleton("halpe26").to_json()},
     "17 channels, fewer than the 26 keypoints"),
    # A definition that contradicts the skeleton's name is caught before anything runs.
    ({"skeleton": "halpe26", "num_keypoints": 26},
     "field 'skeleton_def': defines 'coco17', not the skeleton 'halpe26'"),
    ({"head": "simcc", "activation": "softmax"}, "has rank 4, expected 3"),
])
def test_teacher_outputs_not_matching_its_description(fields, fragment, heatmap_teacher,
                                                      tmp_path):
    model = _stamp(heatmap_teacher, tmp_path / "liar.onnx", **fields)
    out = tmp_path / "out"
    res = CliRunner().invoke(uni, ["cache-teachers", "--data", f"coco:{DATA}/coco/test_coco.json",
                                   "--teacher", str(model), "--out", str(out)])
    one_line_error(res, "liar.onnx", fragment)
    assert not out.exists()


def test_store_of_another_crop_setting_is_refused_untouched(stage_one, tmp_path):
    spec, teacher, ref, _ = stage_one
    out = tmp_path / "out"
    out.mkdir()
    store = out / ref.name
    shutil.copy(ref, store)
    with h5py.File(store, "r+") as f:
        f.attrs["padding"] = 1.5  # as if cached with another crop padding
    before = sha(store)
    res = CliRunner().invoke(uni, ["cache-teachers", "--data", spec, "--teacher", str(teacher),
                                   "--out", str(out), "--workers", "1"])
    one_line_error(res, ref.name, "built with padding 1.5, now 1.25", "--overwrite")
    assert sha(store) == before


def test_train_teacher_with_two_skeletons_is_one_line(synth_dir, tmp_path):
    specs = [f"coco:{synth_dir / 'coco/train.json'}", f"mpii:{synth_dir / 'mpii/train.json'}"]
    coco, mpii = (load_dataset(s) for s in specs)
    stores = tmp_path / "s"
    stores.mkdir()
    write_analytic_store(stores / "a.h5", coco, "coco17", "t", input_wh=(48, 64))
    write_analytic_store(stores / "b.h5", mpii, "mpii16", "t", input_wh=(48, 64))
    run = tmp_path / "run"
    res = CliRunner().invoke(uni, ["train-student", "--data", specs[0], "--data", specs[1],
                                   "--stores", str(stores), "--out", str(run)])
    one_line_error(res, "b.h5", "teacher 't' has skeleton mpii16 here but coco17")
    assert not run.exists()


def test_mpii_mat_without_head_boxes(tmp_path):
    import scipy.io

    mat = tmp_path / "mpii_gt_val.mat"
    scipy.io.savemat(str(mat), {"jnt_missing": np.zeros((16, 5)),
                                "pos_gt_src": np.zeros((16, 2, 5))})
    spec = f"mpii:{DATA}/mpii/test_mpii.json"
    for cmd in (["inspect-data", spec], ["evaluate", "--predictions", str(mat), "--data", spec]):
        res = CliRunner().invoke(uni, [*cmd, "--head-boxes", str(mat)])
        one_line_error(res, "mpii_gt_val.mat", "missing field 'headboxes_src'")
