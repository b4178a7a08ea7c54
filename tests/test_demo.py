"""`uni demo --quick`: the whole method end to end, then a second run that reuses everything."""

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _demo(out: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "cli.py"), "demo", "--quick", "--out",
                           str(out)], capture_output=True, text=True, timeout=600, cwd=REPO)


def test_quick_demo_runs_end_to_end_and_reuses_its_work(tmp_path):
    out = tmp_path / "demo"
    first = _demo(out)
    assert first.returncode == 0, first.stderr[-2000:]
    report = json.loads((out / "report.json").read_text())
    names = [r["model"] for r in report["rows"]]
    assert len(names) == 6 and any(n.startswith("joint_gt_kd") for n in names)
    for row in report["rows"]:
        values = [v for k, v in row.items() if k != "model" and v is not None]
        assert len(values) == 4  # COCO AP, MPII PCKh, Halpe AP, Average
        assert all(0.0 <= v <= 100.0 for v in values)
    for name in ("report.md", "report.csv", "report.png", "predictions.png"):
        assert (out / name).stat().st_size > 0
    assert "| model |" in first.stdout
    stores = sorted((out / "stores").glob("*.h5"))
    assert len(stores) == 4  # 2 teachers × 2 training sets
    mtimes = [p.stat().st_mtime_ns for p in stores]

    second = _demo(out)
    assert second.returncode == 0, second.stderr[-2000:]
    assert "no teacher inference" in second.stderr
    assert second.stderr.count("reusing teacher") == 2
    assert second.stderr.count("reusing finished run") == 4
    assert [p.stat().st_mtime_ns for p in stores] == mtimes
    again = json.loads((out / "report.json").read_text())
    assert again["rows"] == report["rows"]  # same models, same numbers
