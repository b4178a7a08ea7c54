"""`uni demo`: the whole pipeline end to end on a test-sized run, then a second run that reuses
everything; app.steps, which runs its steps two processes at a time.

The quick and full demos' quality (the joint KD student ahead on Average, the cross-domain gap) is
measured, not tested here: README "The demo" gives the figures and settings.
"""

import dataclasses
import json

import pytest

from uniskel.app.demo import DemoSettings, run_demo
from uniskel.app.steps import Step, run_steps

# The pipeline, not the quality: every step runs, on data and sizes too small to learn.
SMOKE = DemoSettings(persons=24, input_wh=(32, 32), teacher_model="tiny", student_model="tiny",
                     teacher_epochs=1, student_epochs=2, batch_size=16)


def test_demo_runs_end_to_end_and_reuses_its_work(tmp_path, capfd):
    """Both tables: the datasets' own domains, then the same students on shared-domain data."""
    out = tmp_path / "demo"
    report = run_demo(out, settings=SMOKE, ablation=True)
    first = capfd.readouterr()
    assert json.loads((out / "report.json").read_text())["rows"] == report["rows"]
    assert set(report["tables"]) == {"own", "shared"}
    assert report["rows"] == report["tables"]["own"]
    for rows in report["tables"].values():
        names = [r["model"] for r in rows]
        assert len(names) == 6 and any(n.startswith("joint_gt_kd") for n in names)
        for row in rows:
            values = [v for k, v in row.items() if k != "model" and v is not None]
            assert len(values) == 4  # COCO AP, MPII PCKh, Halpe AP, Average
            assert all(0.0 <= v <= 100.0 for v in values)
    for name in ("report.md", "report.csv", "report.png", "predictions.png",
                 "same_domain/report.csv"):
        assert (out / name).stat().st_size > 0
    md = (out / "report.md").read_text()
    own, shared = md.index("## Each dataset in its own domain"), md.index("## One shared domain")
    assert own < shared and md.count("| model |") == 2
    assert report["what_changed"] and report["what_changed"] in md
    assert first.out.count("| model |") == 2
    assert report["jobs"] >= 1 and report["cpu_seconds"] > 0
    # The shared table's data is the shared style's (as before domains), the own table's is not.
    shared_desc = json.loads((out / "same_domain/data/coco/val.json").read_text())["info"]
    assert shared_desc == json.loads((out / "data/coco/val.json").read_text())["info"]
    assert (out / "same_domain/data/mpii/val.json").read_bytes() != (
        out / "data/mpii/val.json").read_bytes()
    stores = sorted(out.glob("**/stores/*.h5"))
    assert len(stores) == 8  # 2 teachers × 2 training sets × 2 tables
    mtimes = [p.stat().st_mtime_ns for p in stores]

    again = run_demo(out, settings=SMOKE, ablation=True)
    second = capfd.readouterr()
    assert "no teacher inference" in second.err
    assert second.err.count("reusing teacher") == 4
    assert second.err.count("reusing finished run") == 8
    assert [p.stat().st_mtime_ns for p in stores] == mtimes
    assert again["tables"] == report["tables"]  # same models, same numbers


def test_quick_mode_uses_the_single_dataset_students_as_teachers(tmp_path, capfd):
    shared = dataclasses.replace(SMOKE, teacher_model=None, student_epochs=1)
    report = run_demo(tmp_path / "demo", settings=shared)
    assert set(report["tables"]) == {"own"} and not report["what_changed"]
    err = capfd.readouterr().err
    assert [r["model"] for r in report["rows"]] == [
        "coco_only (tiny)", "mpii_only (tiny)", "joint_gt (tiny)", "joint_gt_kd (tiny)"]
    assert {"coco_teacher", "mpii_teacher", "joint_gt", "joint_gt_kd"} <= set(report["steps"])
    assert "coco_only done" not in err  # trained once, as the COCO teacher
    assert len(list((tmp_path / "demo" / "stores").glob("*.h5"))) == 4
    assert (tmp_path / "demo" / "teachers" / "coco_teacher.onnx").stat().st_size > 0


def test_steps_run_after_what_they_need_and_pass_results_on():
    steps = [  # listed before what it needs: it must still wait for it
        Step("total", ("sorted",), lambda done: (sum, done["sorted"])),
        Step("sorted", (), lambda done: (sorted, [3, 1, 2])),
        Step("max", (), lambda done: (max, [4, 5])),
    ]
    seconds: dict = {}
    heard: list[str] = []
    assert run_steps(steps, jobs=2, seconds=seconds, say=heard.append) == {
        "sorted": [1, 2, 3], "total": 6, "max": 5}
    assert set(seconds) == {"sorted", "total", "max"}
    assert all(v["wall"] >= 0 and v["cpu"] >= 0 for v in seconds.values())
    assert sorted(h.split()[0] for h in heard) == ["max", "sorted", "total"]
    assert heard.index(next(h for h in heard if h.startswith("sorted"))) < heard.index(
        next(h for h in heard if h.startswith("total")))


def test_a_failing_step_raises_its_error_here():
    steps = [Step("bad", (), lambda done: (int, "x")),
             Step("after", ("bad",), lambda done: (abs, -1))]
    with pytest.raises(ValueError, match="invalid literal"):
        run_steps(steps, jobs=1)


def test_a_step_needing_a_step_not_given_is_a_programming_error():
    with pytest.raises(RuntimeError, match="lonely needs"):
        run_steps([Step("lonely", ("missing",), lambda done: (abs, -1))], jobs=1)
