"""`uni demo`: the whole method on synthetic data, on a CPU, in minutes.

1. synthetic COCO-, MPII- and Halpe-format datasets (pipeline.synth);
2. a COCO-only and an MPII-only teacher (ground truth only, bigger than the students), exported to
   ONNX with their own skeleton (coco17, mpii16): each knows only its dataset's keypoints;
3. stage one: both teachers cached over both training sets (pipeline.cache);
4. stage two: four students — COCO only, MPII only, joint GT only, joint GT + KD from the caches;
5. every model on COCO-val, MPII-val and Halpe-val: the paper's table (report.md / .json / .csv /
   .png) and predictions.png (the four students on the same validation images).

Everything lands in one directory; a second run over it reuses data, teachers, stores and
finished runs (and says so), so no teacher inference happens twice.
"""

from __future__ import annotations

import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from uniskel.pipeline.cache import cache_teachers, format_run_summary
from uniskel.pipeline.crops import crop_person, read_image
from uniskel.pipeline.datasets import load_dataset
from uniskel.pipeline.draw import draw_skeleton
from uniskel.pipeline.files import atomic_write, write_json, write_text
from uniskel.pipeline.geometry import apply
from uniskel.pipeline.synth import generate
from uniskel.student.checkpoint import load_checkpoint
from uniskel.student.evaluate import evaluate
from uniskel.student.export import export_onnx
from uniskel.student.predict import load_predictor, predict_boxes
from uniskel.student.report import markdown_table, report_rows, write_report
from uniskel.student.train import train


@dataclass(frozen=True)
class DemoSettings:
    persons: int  # per synthetic dataset (train + val)
    input_wh: tuple[int, int]
    teacher_model: str
    student_model: str
    teacher_epochs: int
    student_epochs: int  # single-dataset students
    batch_size: int

    @property
    def joint_epochs(self) -> int:
        """Joint students see two datasets: half the epochs gives every student the same number
        of optimiser steps, so the table compares data and targets, not compute."""
        return max(1, self.student_epochs // 2)


FULL = DemoSettings(persons=650, input_wh=(96, 128), teacher_model="small",
                    student_model="tiny", teacher_epochs=8, student_epochs=8, batch_size=32)
QUICK = DemoSettings(persons=160, input_wh=(48, 64), teacher_model="small",
                     student_model="tiny", teacher_epochs=4, student_epochs=4, batch_size=32)

STUDENTS = {  # run name → (datasets, use the teachers' stores)
    "coco_only": (("coco",), False),
    "mpii_only": (("mpii",), False),
    "joint_gt": (("coco", "mpii"), False),
    "joint_gt_kd": (("coco", "mpii"), True),
}
TEACHERS = {"coco_teacher": ("coco", "coco17"), "mpii_teacher": ("mpii", "mpii16")}


def _say(msg: str) -> None:
    print(f"[demo] {msg}", file=sys.stderr, flush=True)


def _finished(run: Path, epochs: int) -> bool:
    last = run / "last.pt"
    return last.is_file() and int(load_checkpoint(last).get("epoch", 0)) >= epochs


def _train(run: Path, data: list[str], stores: list[str], model: str, s: DemoSettings,
           epochs: int, seed: int) -> Path:
    if _finished(run, epochs):
        _say(f"reusing finished run {run}")
        return run
    config = {"data": data, "stores": stores, "out": str(run), "model": model,
              "input_wh": list(s.input_wh), "epochs": epochs, "batch_size": s.batch_size,
              "lr": 4e-3, "workers": 1, "seed": seed, "val_fraction": 0.05,
              "resume": (run / "last.pt").is_file()}
    _say(f"training {run.name} ({model}, {epochs} epochs, {' + '.join(data)})")
    return train(config)


def _predictions_png(runs: dict[str, Path], spec: str, out: Path, n: int = 3) -> Path:
    """A grid: one row per validation person, one column per student."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ds = load_dataset(spec)
    picks = [ds.instances[i] for i in np.linspace(0, len(ds.instances) - 1, n).astype(int)]
    fig, axes = plt.subplots(n, len(runs), figsize=(2.6 * len(runs), 3.2 * n), squeeze=False)
    for c, (name, run) in enumerate(runs.items()):
        pred = load_predictor(run)
        kps = predict_boxes(pred, [(i.image_path, i.bbox) for i in picks], progress=False)
        for r, (inst, kp) in enumerate(zip(picks, kps, strict=True)):
            crop, affine = crop_person(read_image(inst.image_path), inst.bbox, (192, 256))
            local = kp.copy()
            local[:, :2] = apply(affine, kp[:, :2])
            axes[r, c].imshow(draw_skeleton(crop, local, threshold=0.2))
            axes[r, c].axis("off")
            if r == 0:
                axes[r, c].set_title(name, fontsize=10)
    fig.tight_layout()
    atomic_write(out, lambda p: fig.savefig(p, format="png", dpi=80))
    plt.close(fig)
    return out


def run_demo(out_dir: Path, quick: bool = False, seed: int = 0) -> dict:
    """Run (or resume) the demo in out_dir; returns the report dict also written as JSON."""
    s = QUICK if quick else FULL
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    times: dict[str, float] = {}
    t0 = time.perf_counter()

    data_dir = out / "data"
    if (data_dir / "halpe" / "val.json").is_file():
        _say(f"reusing synthetic data in {data_dir}")
    else:
        generate(data_dir, persons=s.persons, seed=seed, overwrite=True)
    spec = {f"{fmt}/{split}": f"{fmt}:{data_dir / fmt / f'{split}.json'}"
            for fmt, split in (("coco", "train"), ("coco", "val"), ("mpii", "train"),
                               ("mpii", "val"), ("halpe", "val"))}
    times["data"] = time.perf_counter() - t0

    t = time.perf_counter()
    teacher_onnx = {}
    for name, (fmt, skeleton) in TEACHERS.items():
        onnx = out / "teachers" / f"{name}.onnx"
        if onnx.is_file():
            _say(f"reusing teacher {onnx}")
        else:
            run = _train(out / "teachers" / name, [spec[f"{fmt}/train"]], [], s.teacher_model,
                         s, s.teacher_epochs, seed)
            export_onnx(run, onnx, name, skeleton)
        teacher_onnx[name] = onnx
    times["teachers"] = time.perf_counter() - t

    t = time.perf_counter()
    train_specs = [spec["coco/train"], spec["mpii/train"]]
    summaries = cache_teachers(train_specs, list(teacher_onnx.values()), out / "stores",
                               workers=1, progress=True)
    for summary in summaries:
        _say(format_run_summary(summary).splitlines()[0])
    if all(x.up_to_date for x in summaries):
        _say("stores up to date: no teacher inference")
    stores = [str(x.path) for x in summaries]
    times["cache"] = time.perf_counter() - t

    t = time.perf_counter()
    runs = {}
    for name, (fmts, kd) in STUDENTS.items():
        data = [spec[f"{f}/train"] for f in fmts]
        kd_stores = [p for p in stores if kd and any(f"__{f}-" in Path(p).name for f in fmts)]
        epochs = s.student_epochs if len(fmts) == 1 else s.joint_epochs
        runs[name] = _train(out / "runs" / name, data, kd_stores, s.student_model, s, epochs,
                            seed)
    times["students"] = time.perf_counter() - t

    t = time.perf_counter()
    val = [spec["coco/val"], spec["mpii/val"], spec["halpe/val"]]
    models = {**{f"{n} ({s.student_model})": r for n, r in runs.items()},
              **{f"{n} ({s.teacher_model})": p for n, p in teacher_onnx.items()}}
    results = {name: evaluate(val, model=path, progress=False) for name, path in models.items()}
    rows = report_rows(results)
    write_report(rows, out)
    _predictions_png(runs, spec["coco/val"], out / "predictions.png")
    times["evaluate"] = time.perf_counter() - t
    times["total"] = time.perf_counter() - t0

    report = {"settings": {**asdict(s), "joint_epochs": s.joint_epochs}, "rows": rows,
              "seconds": times, "runs": {k: str(v) for k, v in models.items()}}
    write_json(out / "report.json", report, indent=2)
    table = markdown_table(rows)
    timing = "\n".join(f"- {k}: {v:.1f} s" for k, v in times.items())
    md = (f"# uni demo{' (quick)' if quick else ''}\n\n{table}\n\nWall time per stage:\n\n"
          f"{timing}\n\n![predictions](predictions.png)\n")
    write_text(out / "report.md", md)
    print(table)
    print(f"\nwall time: {', '.join(f'{k} {v:.0f} s' for k, v in times.items())}")
    print(f"wrote {out / 'report.md'}, {out / 'report.json'}, {out / 'predictions.png'}")
    return report
