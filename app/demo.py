"""`uni demo`: the whole method on synthetic data, on a CPU, in minutes.

1. synthetic COCO-, MPII- and Halpe-format datasets (app.synth), each in its own domain (the
   table); with `ablation`, again all in one shared domain (`uni synth --same-domain`, a second
   table under OUT/same_domain/);
2. a COCO-only and an MPII-only teacher (ground truth only; `small` models, or in the quick run
   the COCO-only and MPII-only students themselves), exported to ONNX with their own skeleton
   (coco17, mpii16): each knows only its dataset's keypoints;
3. stage one: each teacher cached over both training sets (pipeline.cache);
4. stage two: four students — COCO only, MPII only, joint GT only, joint GT + KD from the caches;
5. every model on COCO-val, MPII-val and Halpe-val of its table: the paper's table per domain
   setting (report.md / .json / .csv / .png), two sentences on what changed between them, and
   predictions.png (the four students on COCO's and MPII's own validation images).

Steps 2–5 of every table run as separate processes, as many at a time as the cores allow (two on
two cores, one torch thread each), each as soon as what it needs is done. Everything lands in one
directory; a second run over it reuses data, teachers, stores and finished runs (and says so), so
no teacher inference happens twice.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from uniskel.app.steps import Step, cpu_seconds, run_steps
from uniskel.app.synth import generate
from uniskel.core.crops import crop_person, read_image
from uniskel.core.datasets import load_dataset
from uniskel.core.draw import draw_skeleton
from uniskel.core.files import atomic_write, write_json, write_text
from uniskel.core.geometry import apply
from uniskel.evaluation.evaluate import evaluate
from uniskel.evaluation.export import export_onnx
from uniskel.evaluation.predict import load_predictor, predict_boxes
from uniskel.evaluation.report import AVERAGE, markdown_table, report_rows, write_report
from uniskel.pipeline.cache import StoreSummary, cache_teachers, format_run_summary
from uniskel.student.checkpoint import load_checkpoint
from uniskel.student.config import TrainConfig
from uniskel.student.train import train


@dataclass(frozen=True)
class DemoSettings:
    persons: int  # per synthetic dataset (train + val)
    input_wh: tuple[int, int]
    teacher_model: str | None  # None: the COCO-only and MPII-only students are the teachers
    student_model: str
    teacher_epochs: int
    student_epochs: int  # single-dataset students
    batch_size: int
    lr: float = 4e-3
    caveat: str = ""  # one line under the table: how far this size's ordering can be trusted
    marks: str | None = None  # override the domains' keypoint marks (the docs' measurement)

    @property
    def joint_epochs(self) -> int:
        """Joint students see two datasets: half the epochs gives every student the same number
        of optimiser steps, so the table compares data and targets, not compute."""
        return max(1, self.student_epochs // 2)


# The own-domain table with real teachers (`small`, 96×128, 7 epochs) in about eight minutes on
# two cores; `--ablation` adds the shared-domain table at the same settings, as long again
# (README "The demo" gives the CPU seconds per step).
FULL = DemoSettings(persons=650, input_wh=(96, 128), teacher_model="small", student_model="tiny",
                    teacher_epochs=7, student_epochs=8, batch_size=32)
# Quick: the single-dataset students double as the teachers, at 72×96 (about 300 CPU s, under
# 3 minutes on two cores).
QUICK = DemoSettings(
    persons=650, input_wh=(72, 96), teacher_model=None, student_model="tiny", teacher_epochs=8,
    student_epochs=8, batch_size=32,
    caveat="Quick run, teachers = the single-dataset students: too short for a reliable order; "
           "`make demo` trains real teachers at a larger input size.")
VARIANTS = {"own": "", "shared": "same_domain"}  # variant → its folder under --out
TITLES = {"own": "Each dataset in its own domain",
          "shared": "One shared domain (`uni synth --same-domain`)"}

STUDENTS = {  # run name → (datasets, use the teachers' stores)
    "coco_only": (("coco",), False),
    "mpii_only": (("mpii",), False),
    "joint_gt": (("coco", "mpii"), False),
    "joint_gt_kd": (("coco", "mpii"), True),
}
# name → (dataset, skeleton, the student that is this teacher when teacher_model is None)
TEACHERS = {"coco_teacher": ("coco", "coco17", "coco_only"),
            "mpii_teacher": ("mpii", "mpii16", "mpii_only")}


def _say(msg: str) -> None:
    print(f"[demo] {msg}", file=sys.stderr, flush=True)


def _finished(run: Path, epochs: int) -> bool:
    last = run / "last.pt"
    return last.is_file() and int(load_checkpoint(last).get("epoch", 0)) >= epochs


# --------------------------------------------------------------------------- one process each


def _threads(jobs: int) -> int:
    """Torch / onnxruntime threads per job: the cores shared out, never oversubscribed (two
    one-thread processes on two busy cores, not two two-thread ones: ddp.cpu_threads)."""
    return max(1, (os.cpu_count() or 1) // jobs)


def _train_job(config: TrainConfig, threads: int, onnx: tuple[Path, str, str] | None = None
               ) -> Path:
    """Train (or resume) one run, then export it when onnx = (path, name, skeleton)."""
    run = train(replace(config, workers=1, threads=threads), progress=False)
    if onnx is not None:
        torch.set_num_threads(threads)
        export_onnx(run, *onnx)
    return run


def _cache_job(data: list[str], onnx: Path, out: Path, threads: int) -> list[StoreSummary]:
    return cache_teachers(data, [onnx], out, workers=1, threads=threads, progress=False)


def _evaluate_job(val: list[str], model: Path, threads: int) -> dict:
    torch.set_num_threads(threads)
    return evaluate(val, model=model, progress=False)


# --------------------------------------------------------------------------- the demo


def _config(run: Path, data: list[str], stores: list[str], model: str, s: DemoSettings,
            epochs: int, seed: int) -> TrainConfig:
    return TrainConfig(data=data, stores=stores, out=str(run), model=model, input_wh=s.input_wh,
                       epochs=epochs, batch_size=s.batch_size, lr=s.lr, seed=seed,
                       val_fraction=0.05, resume=(run / "last.pt").is_file())


def _predictions_png(runs: dict[str, Path], specs: list[str], out: Path, n: int = 2) -> Path:
    """A grid: n validation persons of each spec (its own images) a row each, a column per
    student."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    picks = []
    for spec in specs:
        ds = load_dataset(spec)
        picks += [ds.instances[i] for i in np.linspace(0, len(ds.instances) - 1, n).astype(int)]
    rows = len(picks)
    fig, axes = plt.subplots(rows, len(runs), figsize=(2.6 * len(runs), 3.2 * rows),
                             squeeze=False)
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


def _tasks(out: Path, spec: dict[str, str], s: DemoSettings, seed: int,
           threads: int) -> tuple[list[Step], dict[str, Path]]:
    """The demo's steps, finished ones left out (saying so); → (steps, {table row: the model it
    evaluates})."""
    models: dict[str, Path] = {}
    made_by: dict[str, str] = {}  # table row → the step that trains its model
    steps = _teacher_steps(out, spec, s, seed, threads, models, made_by)
    steps += _student_steps(out, spec, s, seed, threads, models, made_by)
    # Teachers and caches first, then the longest students first (the KD one, which also waits
    # for both caches, then joint GT: measured 165 and 147 CPU s against 130 and 118 for the
    # single-dataset ones), so the last two finish close together; evaluations fill the gaps.
    order = [*TEACHERS, *(f"cache {name}" for name in TEACHERS), "joint_gt_kd", "joint_gt",
             *STUDENTS]
    steps.sort(key=lambda t: order.index(t.name))
    val = [spec["coco/val"], spec["mpii/val"], spec["halpe/val"]]
    rows = sorted(models, key=lambda m: list(STUDENTS).index(m.split(" ")[0])
                  if m.split(" ")[0] in STUDENTS else len(STUDENTS))
    for label in rows:
        steps.append(Step(f"evaluate {label}", (made_by[label],) if label in made_by else (),
                          lambda _, p=models[label]: (_evaluate_job, val, p, threads)))
    return steps, {label: models[label] for label in rows}


def _teacher_steps(out: Path, spec: dict[str, str], s: DemoSettings, seed: int, threads: int,
                   models: dict[str, Path], made_by: dict[str, str]) -> list[Step]:
    """Each teacher trained and exported (unless its ONNX file is there), then cached over both
    training sets; adds its table row to models, and to made_by when it is trained."""
    train_specs = [spec["coco/train"], spec["mpii/train"]]
    steps = []
    for name, (kind, skeleton, student) in TEACHERS.items():
        onnx = out / "teachers" / f"{name}.onnx"
        if s.teacher_model is None:
            run, model, epochs = out / "runs" / student, s.student_model, s.student_epochs
            label = f"{student} ({model})"
            models[label] = run
        else:
            run, model, epochs = out / "teachers" / name, s.teacher_model, s.teacher_epochs
            label = f"{name} ({model})"
            models[label] = onnx
        if onnx.is_file():
            _say(f"reusing teacher {onnx}")
        else:
            made_by[label] = name
            cfg = _config(run, [spec[f"{kind}/train"]], [], model, s, epochs, seed)
            steps.append(Step(name, (), lambda _, c=cfg, o=(onnx, name, skeleton):
                              (_train_job, c, threads, o)))
        steps.append(Step(f"cache {name}", (name,) if label in made_by else (),
                          lambda _, o=onnx: (_cache_job, train_specs, o, out / "stores",
                                             threads)))
    return steps


def _student_steps(out: Path, spec: dict[str, str], s: DemoSettings, seed: int, threads: int,
                   models: dict[str, Path], made_by: dict[str, str]) -> list[Step]:
    """Each student not a teacher and not finished yet (saying so), the KD one on both caches'
    stores of its datasets; adds its table row to models and made_by."""
    caches = [f"cache {name}" for name in TEACHERS]
    steps = []
    for name, (fmts, kd) in STUDENTS.items():
        label = f"{name} ({s.student_model})"
        if label in models:  # a teacher, trained above
            continue
        run = models[label] = out / "runs" / name
        epochs = s.student_epochs if len(fmts) == 1 else s.joint_epochs
        if _finished(run, epochs):
            _say(f"reusing finished run {run}")
            continue
        made_by[label] = name
        data = [spec[f"{f}/train"] for f in fmts]

        def call(done: dict, run=run, data=data, kd=kd, fmts=fmts, epochs=epochs) -> tuple:
            stores = [str(x.path) for c in caches for x in done[c]] if kd else []
            stores = [p for p in stores if any(f"__{f}-" in Path(p).name for f in fmts)]
            return (_train_job, _config(run, data, stores, s.student_model, s, epochs, seed),
                    threads)

        steps.append(Step(name, tuple(caches) if kd else (), call))
    return steps


def _verdict(rows: list[dict], kd: str = "joint_gt_kd") -> str:
    """One line: where the joint KD student stands among the students on Average."""
    students = sorted((r for r in rows if r["model"].split(" ")[0] in STUDENTS
                       and r.get(AVERAGE) is not None), key=lambda r: -r[AVERAGE])
    if not students or not any(r["model"].startswith(kd) for r in students):
        return ""
    kd_row = next(r for r in students if r["model"].startswith(kd))
    if students[0] is kd_row:
        runner = students[1] if len(students) > 1 else kd_row
        return (f"In this run the joint KD student leads the students on Average by "
                f"{kd_row[AVERAGE] - runner[AVERAGE]:.2f} points (next: {runner['model']}).")
    return (f"In this run the joint KD student is not first on Average: {students[0]['model']} "
            f"leads it by {students[0][AVERAGE] - kd_row[AVERAGE]:.2f} points.")


def _prefixed(steps: list[Step], prefix: str) -> list[Step]:
    """The same steps under names starting with prefix (the shared-domain table's): each still
    sees the results of its own table's steps under their plain names."""
    if not prefix:
        return steps

    def call(done: dict, step: Step) -> tuple:
        return step.call({k[len(prefix):]: v for k, v in done.items() if k.startswith(prefix)})

    return [Step(prefix + t.name, tuple(prefix + n for n in t.needs),
                 lambda done, t=t: call(done, t)) for t in steps]


def _pckh_gap(rows: list[dict]) -> tuple[float, float] | None:
    """(MPII-only − COCO-only MPII PCKh, joint KD − best single-dataset student on Average)."""
    by = {r["model"].split(" ")[0]: r for r in rows}
    col = next((k for k in rows[0] if k.startswith("mpii")), None) if rows else None
    if col is None or not {"coco_only", "mpii_only", "joint_gt_kd"} <= set(by):
        return None
    if any(by[m].get(k) is None for m in by for k in (col, AVERAGE)):
        return None
    single = max(by["coco_only"][AVERAGE], by["mpii_only"][AVERAGE])
    return (by["mpii_only"][col] - by["coco_only"][col], by["joint_gt_kd"][AVERAGE] - single)


def what_changed(tables: dict[str, list[dict]]) -> str:
    """Two sentences: the cross-domain gap and the joint KD student's lead in each table."""
    own, shared = _pckh_gap(tables.get("own", [])), _pckh_gap(tables.get("shared", []))
    if own is None or shared is None:
        return ""
    return (f"With each dataset in its own domain the COCO-only student scores {own[0]:.1f} "
            f"PCKh points below the MPII-only student on MPII, against {shared[0]:.1f} with one "
            f"shared domain, and the joint GT+KD student leads the best single-dataset student "
            f"on Average by {own[1]:.1f} points, against {shared[1]:.1f}. A single-dataset "
            "student learns its own dataset's look, framing and labels, which do not carry to "
            "the other dataset's images; the joint student sees both domains and each teacher "
            "fills in the keypoints the other dataset lacks.")


def run_demo(out_dir: Path, quick: bool = False, seed: int = 0,
             settings: DemoSettings | None = None, same_domain: bool = False,
             ablation: bool = False) -> dict:
    """Run (or resume) the demo in out_dir; returns the report dict also written as JSON.
    settings: FULL or QUICK by `quick` unless given (tests pass smaller ones); same_domain: only
    the shared-domain table; ablation: the shared-domain table after the own-domain one."""
    s = settings or (QUICK if quick else FULL)
    # "own": each dataset in its own domain (the first table); "shared": all in one shared
    # style (`uni synth --same-domain`), the ablation's second table
    variants = ("shared",) if same_domain else ("own", "shared") if ablation else ("own",)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    times: dict[str, float] = {}
    t0, cpu0 = time.perf_counter(), cpu_seconds()
    specs = {v: _synthetic_data(out / VARIANTS[v], s, seed, v == "shared") for v in variants}
    times["data"] = time.perf_counter() - t0

    t = time.perf_counter()
    jobs = min(2, os.cpu_count() or 1)  # the task graph is at most two wide most of the time
    threads = _threads(jobs)
    steps: list[Step] = []
    models: dict[str, dict[str, Path]] = {}
    for v in variants:
        prefix = f"{VARIANTS[v]}: " if VARIANTS[v] else ""
        vsteps, models[v] = _tasks(out / VARIANTS[v], specs[v], s, seed, threads)
        steps += [(i, st) for i, st in enumerate(_prefixed(vsteps, prefix))]
    steps = [st for _, st in sorted(steps, key=lambda x: x[0])]  # the tables' steps interleaved
    _say(f"{len(steps)} steps, {jobs} at a time, {threads} thread(s) each (training runs log "
         "to their metrics.csv)")
    per_task: dict[str, dict] = {}
    done = run_steps(steps, jobs, per_task, say=_say)
    times["steps"] = time.perf_counter() - t
    summaries = [x for name, res in done.items() if name.split(": ")[-1].startswith("cache ")
                 for x in res]
    for summary in summaries:
        _say(format_run_summary(summary).splitlines()[0])
    if all(x.up_to_date for x in summaries):
        _say("stores up to date: no teacher inference")

    t = time.perf_counter()
    tables: dict[str, list[dict]] = {}
    for v in variants:
        prefix = f"{VARIANTS[v]}: " if VARIANTS[v] else ""
        tables[v] = report_rows({label: done[f"{prefix}evaluate {label}"]
                                 for label in models[v]})
        write_report(tables[v], out / VARIANTS[v])
    first = variants[0]
    students = {label.split(" ")[0]: path for label, path in models[first].items()
                if label.split(" ")[0] in STUDENTS}
    _predictions_png(students, [specs[first]["coco/val"], specs[first]["mpii/val"]],
                     out / "predictions.png")
    times["report"] = time.perf_counter() - t
    times["total"] = time.perf_counter() - t0
    cpu_s = cpu_seconds() - cpu0

    report = {"settings": {**asdict(s), "joint_epochs": s.joint_epochs}, "rows": tables[first],
              "tables": tables, "what_changed": what_changed(tables),
              "seconds": times, "cpu_seconds": round(cpu_s, 1), "jobs": jobs,
              "threads": threads, "steps": per_task,
              "runs": {v: {k: str(p) for k, p in models[v].items()} for v in variants}}
    write_json(out / "report.json", report, indent=2)
    _tell(out, report, cpu_s, s.caveat, quick)
    return report


def _synthetic_data(data_root: Path, s: DemoSettings, seed: int,
                    same_domain: bool) -> dict[str, str]:
    """The synthetic datasets in data_root/data (made unless there) → {"coco/train": spec, ...}."""
    data_dir = data_root / "data"
    if (data_dir / "halpe" / "val.json").is_file():
        _say(f"reusing synthetic data in {data_dir}")
    else:
        generate(data_dir, persons=s.persons, seed=seed, overwrite=True,
                 same_domain=same_domain, marks=None if same_domain else s.marks)
    return {f"{kind}/{split}": f"{kind}:{data_dir / kind / f'{split}.json'}"
            for kind, split in (("coco", "train"), ("coco", "val"), ("mpii", "train"),
                               ("mpii", "val"), ("halpe", "val"))}


def _tell(out: Path, report: dict, cpu_s: float, caveat: str, quick: bool) -> None:
    """report.md (a table per variant with its verdict, the caveat, what changed, times per
    step), and the same on stdout."""
    times, per_task, jobs = report["seconds"], report["steps"], report["jobs"]
    sections = []
    for v, rows in report["tables"].items():
        notes = "".join(f"\n\n{line}" for line in (_verdict(rows),) if line)
        sections.append(f"## {TITLES[v]}\n\n{markdown_table(rows)}{notes}")
    text = "\n\n".join(sections) + "".join(
        f"\n\n{line}" for line in (caveat, report["what_changed"]) if line)
    steps = "\n".join(f"- {k}: {v['wall']:.0f} s (CPU {v['cpu']:.0f} s)"
                      for k, v in per_task.items())
    md = (f"# uni demo{' (quick)' if quick else ''}\n\n{text}\n\n"
          f"Wall time {times['total']:.0f} s, CPU time {cpu_s:.0f} s: data "
          f"{times['data']:.0f} s, then {len(per_task)} steps {jobs} at a time "
          f"({report['threads']} thread(s) each) {times['steps']:.0f} s, report "
          f"{times['report']:.0f} s.\n\n{steps}\n\n![predictions](predictions.png)\n")
    write_text(out / "report.md", md)
    print(text)
    print(f"\nwall time {times['total']:.0f} s, CPU time {cpu_s:.0f} s "
          f"({jobs} processes at a time)")
    print(f"wrote {out / 'report.md'}, {out / 'report.json'}, {out / 'predictions.png'}")
