"""`uni report`: the cross-dataset table and its files."""

from __future__ import annotations

import csv
import json

import cv2
import pytest
from click.testing import CliRunner
from conftest import one_line_error

from uniskel.cli import uni
from uniskel.evaluation.report import markdown_table, report_rows, scored_notes, write_report

COCO, MPII, HALPE = "coco:a/val.json", "mpii:b/val.json", "halpe:c/val.json"


def _r(metric: str, value: float) -> dict:
    return {"metric": metric, "value": value}


def test_rows_and_paper_average():
    results = {
        "joint": {COCO: _r("AP", 62.0), MPII: _r("PCKh@0.5", 80.0), HALPE: _r("AP", 50.0)},
        "coco-only": {COCO: _r("AP", 68.2), MPII: _r("PCKh@0.5", 40.0)},
    }
    rows = report_rows(results)
    assert [list(r) for r in rows] == [["model", "coco AP", "mpii PCKh@0.5", "halpe AP",
                                        "Average"]] * 2
    assert rows[0]["Average"] == pytest.approx(71.0)  # Halpe is reported, not averaged
    assert rows[1]["Average"] == pytest.approx(54.1)
    assert rows[1]["halpe AP"] is None
    md = markdown_table(rows).splitlines()
    assert md[0] == "| model | coco AP | mpii PCKh@0.5 | halpe AP | Average |"
    assert md[2] == "| joint | 62.00 | 80.00 | 50.00 | 71.00 |"
    assert md[3].endswith("| — | 54.10 |")


def test_no_average_without_both_kinds_and_repeated_formats():
    rows = report_rows({"m": {COCO: _r("AP", 60.0), "coco:x/other.json": _r("AP", 40.0)}})
    assert list(rows[0]) == ["model", "coco:val AP", "coco:other AP"]


def test_write_report_files(tmp_path):
    rows = report_rows({"a": {COCO: _r("AP", 61.5), MPII: _r("PCKh@0.5", 79.0)},
                        "b": {COCO: _r("AP", 70.0), MPII: _r("PCKh@0.5", 85.25)}})
    paths = write_report(rows, tmp_path / "rep")
    assert sorted(p.name for p in paths) == ["report.csv", "report.md", "report.png"]
    with open(tmp_path / "rep/report.csv") as f:
        got = list(csv.DictReader(f))
    assert [float(g["Average"]) for g in got] == pytest.approx([70.25, 77.625])
    assert (tmp_path / "rep/report.md").read_text().strip() == markdown_table(rows)
    png = cv2.imread(str(tmp_path / "rep/report.png"))
    assert png is not None and png.shape[0] > 100 and png.std() > 0


def test_report_cli_student_and_teacher(tmp_path, data_dir, tiny_student_run, heatmap_teacher):
    """A student and a COCO-17 ONNX teacher on COCO and MPII (head boxes added): the teacher
    knows no MPII-only joint, so it scores 0 on pelvis / thorax / neck / head top."""
    raw = json.loads((data_dir / "mpii/test_mpii.json").read_text())
    for rec in raw:
        cx, cy = rec["joints"][9]  # head_top: a made-up head box around it
        rec["head_box"] = [cx - 20, cy - 10, cx + 20, cy + 40]
    (tmp_path / "mpii.json").write_text(json.dumps(raw))
    coco = f"coco:{data_dir}/coco/test_coco.json"
    mpii = f"mpii:{tmp_path}/mpii.json:{data_dir}/mpii/images"
    out = tmp_path / "rep"
    r = CliRunner().invoke(uni, ["report", str(tiny_student_run), str(heatmap_teacher),
                                 "--data", coco, "--data", mpii, "--out", str(out),
                                 "--names", "student,teacher", "--no-flip-test"])
    assert r.exit_code == 0, r.output
    lines = r.stdout.strip().splitlines()
    assert lines[0] == "| model | coco AP | mpii PCKh@0.5 | Average |"
    assert lines[2].startswith("| student |") and lines[3].startswith("| teacher |")
    with open(out / "report.csv") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        avg = (float(row["coco AP"]) + float(row["mpii PCKh@0.5"])) / 2
        assert float(row["Average"]) == pytest.approx(avg)
    ev = CliRunner().invoke(uni, ["evaluate", str(heatmap_teacher), "--data", mpii, "--json",
                                  "--no-flip-test"])
    per = json.loads(ev.stdout)[mpii]["per_keypoint"]
    assert per["head_top"] == per["upper_neck"] == per["pelvis"] == 0.0
    assert json.loads(ev.stdout)[mpii]["value"] == pytest.approx(float(rows[1]["mpii PCKh@0.5"]))


def test_report_names_must_match_runs(tmp_path, data_dir, tiny_student_run):
    r = CliRunner().invoke(uni, ["report", str(tiny_student_run), "--data",
                                 f"coco:{data_dir}/coco/test_coco.json", "--names", "a,b"])
    one_line_error(r, "--names")


def test_scored_notes_say_what_each_column_covers():
    aic = "aic:d/aic.json"
    results = {"a": {aic: {**_r("AP", 50.0), "scored": "14 of aic14"},
                     HALPE: {**_r("AP", 40.0), "scored": "18 of halpe26"}},
               "b": {aic: {**_r("AP", 55.0), "scored": "14 of aic14"},
                     HALPE: {**_r("AP", 45.0), "scored": "24 of halpe26"}}}
    assert scored_notes(results) == ["aic AP: 14 of aic14",
                                     "halpe AP: 18 of halpe26 (a); 24 of halpe26 (b)"]


def test_report_over_four_kinds(tmp_path, data_dir, tiny_student_run, heatmap_teacher):
    """A student and a COCO-17 teacher on the real AIC, CrowdPose, sub-JHMDB and PoseTrack18
    samples: one column per kind by its metric, no Average (neither coco nor mpii), and a note
    per column saying which keypoints it scored."""
    specs = [f"aic:{data_dir}/aic/test_aic.json",
             f"crowdpose:{data_dir}/crowdpose/test_crowdpose.json",
             f"jhmdb:{data_dir}/jhmdb/test_jhmdb_sub1.json",
             f"posetrack18:{data_dir}/posetrack18/test_posetrack18_val.json"]
    out = tmp_path / "rep"
    r = CliRunner().invoke(uni, ["report", str(tiny_student_run), str(heatmap_teacher),
                                 *[a for s in specs for a in ("--data", s)], "--out", str(out),
                                 "--names", "student,teacher", "--no-flip-test"])
    assert r.exit_code == 0, r.output
    lines = r.stdout.strip().splitlines()
    assert lines[0] == "| model | aic AP | crowdpose AP | jhmdb PCK@0.2 | posetrack18 mAP |"
    notes = ["- aic AP: 14 of aic14", "- crowdpose AP: 14 of crowdpose14",
             "- jhmdb PCK@0.2: 14 of jhmdb15", "- posetrack18 mAP: 15 of posetrack17"]
    assert lines[-4:] == notes
    assert (out / "report.md").read_text().strip().splitlines()[-4:] == notes
    with open(out / "report.csv") as f:
        rows = list(csv.DictReader(f))
    assert [row["model"] for row in rows] == ["student", "teacher"]
    assert all(0 <= float(v) <= 100 for row in rows for k, v in row.items() if k != "model")
