"""A real third-party model on real images: MediaPipe's BlazePose (samples/models) through
describe-teacher, cache-teachers and evaluate, with nothing BlazePose-specific in the pipeline."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from uniskel.cli import uni
from uniskel.core.crops import crop_person, read_image
from uniskel.core.datasets import load_dataset
from uniskel.core.geometry import apply, invert
from uniskel.core.heatmaps import decode_heatmaps
from uniskel.core.skeletons import UNIFIED_NAMES, get_skeleton, native_to_unified
from uniskel.evaluation.evaluate import evaluate
from uniskel.evaluation.predict import load_predictor, predict_boxes
from uniskel.pipeline.teachers import Teacher
from uniskel.stores.reader import open_store

REPO = Path(__file__).resolve().parents[1]


def _readme_example() -> str:
    """README's "A real model on real images" section: its figures must be this run's."""
    text = (REPO / "README.md").read_text()
    return text[text.index("## A real model on real images"):]

def _run(*args) -> str:
    result = CliRunner().invoke(uni, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture(scope="module")
def coco_spec(data_dir) -> str:
    return f"coco:{data_dir / 'coco/test_coco.json'}"


def test_described_teacher_runs_one_crop_at_a_time(blazepose, coco_spec):
    t = Teacher(blazepose, providers=["CPUExecutionProvider"])
    assert t.fixed_batch == 1  # detected from the model's input, not declared
    assert t.heatmap_wh == (64, 64)
    ds = load_dataset(coco_spec)
    crops = np.stack([crop_person(read_image(i.image_path), i.bbox, (256, 256))[0]
                      for i in ds.instances[:3]])
    together = t.predict(crops, flip_test=False)  # (3, 33, 64, 64): the 33 of 39 channels
    assert together.shape == (3, 33, 64, 64)
    assert 0.0 <= together.min() and together.max() <= 1.0  # sigmoid applied
    alone = np.concatenate([t.predict(c[None], flip_test=False) for c in crops])
    np.testing.assert_allclose(together, alone, atol=1e-5)


@pytest.mark.parametrize("flip_test", [False, True], ids=["no-flip-test", "flip-test"])
def test_store_keypoints_near_ground_truth(blazepose, coco_spec, tmp_path, flip_test):
    """Argmax of each stored heatmap, back through the stored affine: ≥ 85 % of the labelled
    keypoints within 0.2 × max(box w, h) (the models README measured 90.6 % without flip)."""
    out = _run("cache-teachers", "--data", coco_spec, "--teacher", blazepose, "--out", tmp_path,
               "--workers", "1", *([] if flip_test else ["--no-flip-test"]))
    (path,) = tmp_path.glob("*.h5")
    if flip_test:  # the README's run (flip test on by default): its summary line is this one's
        pattern = r"(\d+) instances, (\d+) computed, (\d+) skipped,.*?([\d.]+) MB on disk"
        said = re.search(pattern, _readme_example(), re.S).groups()
        got = re.search(pattern, out, re.S).groups()
        assert said[:3] == got[:3], (said, got)
        assert abs(float(said[3]) - float(got[3])) <= 0.015, f"README {said[3]} MB, run {got[3]}"
    store = open_store(path)
    assert store.complete and store.meta.heatmap_shape == (33, 64, 64)
    assert store.meta.flip_test == flip_test
    skeleton = get_skeleton(store.meta.skeleton)
    by_id = load_dataset(coco_spec).by_id()
    hits = total = 0
    for row in np.flatnonzero(store.done):
        inst = by_id[int(store.instance_ids[row])]
        heatmaps, affine = store.read(int(row))
        side = max(inst.bbox[2:])
        # Square 256×256 input: the crop is a square of side 1.25 × max(w, h) → 64 grid pixels.
        np.testing.assert_allclose(affine[:, :2], np.eye(2) * 64 / (1.25 * side), rtol=1e-9)
        coords, _ = decode_heatmaps(heatmaps[None])  # (1, 33, 2) heatmap pixels
        native = np.concatenate([apply(invert(affine), coords[0]), np.ones((33, 1))], 1)
        unified = native_to_unified(native, skeleton)  # (21, 3)
        labelled = (inst.unified[:, 2] > 0) & skeleton.unified_mask
        err = np.linalg.norm(unified[labelled, :2] - inst.unified[labelled, :2], axis=1)
        hits += int((err <= 0.2 * side).sum())
        total += int(labelled.sum())
    assert total == 181  # every labelled keypoint of the sample is a COCO one BlazePose knows
    assert hits / total >= 0.85, f"{hits}/{total} = {hits / total:.1%} within 0.2 × box"


def test_evaluate_coco_ap(blazepose, coco_spec):
    """COCO AP on the sample, GT boxes: measured 40.3 without flip, 45.0 with (12 people)."""
    r = evaluate([coco_spec], blazepose, flip_test=False, progress=False)[coco_spec]
    assert r["predicted"] == r["instances"] == 12
    assert len(r["scored_keypoints"]) == 17
    assert r["value"] > 30.0, r["value"]
    flipped = evaluate([coco_spec], blazepose, flip_test=True, progress=False)[coco_spec]
    assert flipped["value"] > 30.0, flipped["value"]
    # The README's table: "| COCO AP (AP50 / AP75) | 40.3 (…) | 45.0 (…) |".
    said = re.search(r"\| COCO AP \(AP50 / AP75\) \| ([\d.]+) .*?\| ([\d.]+) ", _readme_example())
    assert said, "README lost its BlazePose AP table"
    assert [float(v) for v in said.groups()] == [round(r["value"], 1),
                                                 round(flipped["value"], 1)]
    # Keypoints BlazePose lacks (pelvis, thorax, upper_neck, head_top) are not predicted.
    ds = load_dataset(coco_spec)
    kps = predict_boxes(load_predictor(blazepose), [(ds.image_path(r), ds.bboxes[r])
                                                    for r in range(len(ds.instance_ids))],
                        flip_test=False, progress=False)  # (12, 21, 3)
    missing = [UNIFIED_NAMES.index(n) for n in ("pelvis", "thorax", "upper_neck", "head_top")]
    assert (kps[:, missing] == 0).all() and (kps[:, :17, 2] > 0).all()
