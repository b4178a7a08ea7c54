"""COCO keypoint results files: `evaluate --save-predictions` then `--predictions` gives the same
numbers, records in another order map by name, every bad file is one line and exit 2."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import one_line_error
from evaluate_cases import (
    ap_stats,
    cli,
    coco_sample,
    direct_cocoeval,
    flat,
    gt_records,
    write,
)

from uniskel.core.skeletons import native_to_unified
from uniskel.evaluation import evaluate as ev_mod
from uniskel.evaluation.evaluate import evaluate


def test_model_predictions_round_trip(tiny_student_run, data_dir, tmp_path):
    """evaluate MODEL --save-predictions, then --predictions: the same numbers; the saved
    file is COCO results that pycocotools scores alone."""
    coco = f"coco:{data_dir}/coco/test_coco.json"
    halpe = f"halpe:{data_dir}/halpe/test_halpe.json:{data_dir}/coco/images"
    saved = tmp_path / "pred.json"
    r1 = cli("evaluate", tiny_student_run, "--data", coco, "--data", halpe, "--json",
             "--save-predictions", saved, "--no-flip-test")
    assert r1.exit_code == 0, r1.output
    out1 = json.loads(r1.stdout)
    assert set(out1) == {coco, halpe}
    records = json.loads(saved.read_text())
    assert len(records) == 24
    coco_recs = [x for x in records if x["skeleton"] == "coco17"]
    assert len(coco_recs) == 12 and all(len(x["keypoints"]) == 51 for x in coco_recs)
    assert {x["unified"] for x in records} == {"unified21"}
    r2 = cli("evaluate", "--predictions", saved, "--data", coco, "--data", halpe, "--json")
    assert r2.exit_code == 0, r2.output
    assert json.loads(r2.stdout) == out1
    assert ap_stats(out1[coco]) == pytest.approx(
        direct_cocoeval(data_dir / "coco/test_coco.json", coco_recs), abs=1e-9)
    table = cli("evaluate", "--predictions", saved, "--data", coco)
    assert table.exit_code == 0 and "left_wrist" in table.stdout


def test_results_in_another_order_are_mapped_by_name(tmp_path):
    """Records in unified21 order ("skeleton": "unified21", as predict writes) score as the
    same keypoints in COCO order."""
    spec, ds = coco_sample()
    records = gt_records(ds)
    for rec in records:
        native = np.array(rec["keypoints"]).reshape(17, 3)
        rec["keypoints"] = flat(native_to_unified(native, ds.skeleton))
        rec["skeleton"] = "unified21"
    r = evaluate([spec], predictions=write(tmp_path / "p.json", records))[spec]
    assert r["value"] == pytest.approx(100.0)


def _bad(case, coco_ds):
    ok = gt_records(coco_ds)
    nested = np.array(ok[0]["keypoints"]).reshape(17, 3).tolist()
    cases = {
        "not_json": "[{",
        "not_list": json.dumps({"a": 1}),
        "nested_keypoints": json.dumps([{**ok[0], "keypoints": nested}]),
        "short_keypoints": json.dumps([{**ok[0], "keypoints": ok[0]["keypoints"][:48]}]),
        "nan": json.dumps([{**ok[0], "score": float("nan")}]),
        "unknown_instance": json.dumps([{**ok[0], "instance_id": 123}]),
        "unknown_image": json.dumps([{**ok[0], "image_id": 5}]),
        "wrong_image": json.dumps([{**ok[0], "image_id": ok[-1]["image_id"]}]),
        "duplicate": json.dumps([ok[0], ok[0]]),
        "no_score": json.dumps([{k: v for k, v in ok[0].items() if k != "score"}]),
        "other_dataset": json.dumps([{**ok[0], "dataset_id": "ab" * 32}]),
        "unknown_skeleton": json.dumps([{**ok[0], "skeleton": "nope17"}]),
        "mixed_boxes": json.dumps([ok[0], {k: v for k, v in ok[1].items()
                                           if k != "instance_id"}]),
        "empty": "[]",
    }
    return cases[case]


@pytest.mark.parametrize("case", ["not_json", "not_list", "nested_keypoints", "short_keypoints",
                                  "nan", "unknown_instance", "unknown_image", "wrong_image",
                                  "duplicate",
                                  "no_score", "other_dataset", "unknown_skeleton", "mixed_boxes",
                                  "empty"])
def test_bad_predictions_file_is_one_line_exit_2(case, tmp_path):
    spec, ds = coco_sample()
    path = tmp_path / "bad.json"
    path.write_text(_bad(case, ds))
    one_line_error(cli("evaluate", "--predictions", path, "--data", spec, "--json"), str(path))


def test_model_xor_predictions(tmp_path, tiny_student_run):
    spec, _ = coco_sample()
    one_line_error(cli("evaluate", "--data", spec), "either")
    p = write(tmp_path / "p.json", gt_records(coco_sample()[1]))
    one_line_error(cli("evaluate", tiny_student_run, "--predictions", p, "--data", spec),
                   "either")
    one_line_error(cli("evaluate", "--predictions", p, "--boxes", p, "--data", spec), "--boxes")


def test_boxes_refused_for_pck_datasets(tmp_path, data_dir, tiny_student_run):
    r = cli("evaluate", tiny_student_run, "--data", f"jhmdb:{data_dir}/jhmdb/test_jhmdb_sub1.json",
            "--boxes", data_dir / "coco/test_coco_det_AP_H_56.json")
    one_line_error(r, "PCK@0.2")


def test_synthetic_sets_ground_truth_is_perfect(synth_dir, tmp_path):
    """The synthetic val sets (real formats) evaluate end to end: GT as predictions → 100."""
    specs = [f"{kind}:{synth_dir}/{kind}/val.json" for kind in ("coco", "mpii", "halpe")]
    records = []
    for ds in ev_mod.load_datasets(specs):
        records += gt_records(ds, dataset_id=ds.dataset_id)
    r = cli("evaluate", "--predictions", write(tmp_path / "p.json", records), "--json",
            *[a for s in specs for a in ("--data", s)])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert [out[s]["metric"] for s in specs] == ["AP", "PCKh@0.5", "AP"]
    assert [out[s]["value"] for s in specs] == pytest.approx([100.0] * 3)
