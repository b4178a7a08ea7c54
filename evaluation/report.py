"""The paper's cross-dataset table (`uni report`): every model on every dataset, plus Average.

One row per model, one column per dataset and its kind's metric ("coco AP", "mpii PCKh@0.5",
"aic AP", "jhmdb PCK@0.2", …; a kind given twice gets its annotation file's stem too).
"Average" is the paper's average accuracy (docs/conventions.md "Metrics"): the mean of the coco
AP and mpii PCKh columns, present when the table has both; other columns are reported but not
averaged. Under the table, each kind's official figures where its tool reports more than the
column's one (CrowdPose's AP … AP(H), COCO-WholeBody's body / foot / body+foot AP and AR, under
their official names: docs/conventions.md "Metrics"), then which keypoints each column scored
("aic AP: 14 of aic14"; per model when models of different unified skeletons score different
ones).
Outputs: markdown on stdout; report.md, report.csv and report.png (grouped bars) in --out.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from uniskel.core.datasets import parse_spec
from uniskel.core.errors import UniError
from uniskel.core.files import atomic_write, write_text
from uniskel.evaluation.coco_results import parse_results
from uniskel.evaluation.evaluate import evaluate_dataset, load_datasets, model_records
from uniskel.evaluation.predict import load_predictor

AVERAGE = "Average"
AVERAGED_KINDS = ("coco", "mpii")


def _columns(specs: list[str], metrics: dict[str, str]) -> dict[str, str]:
    """spec → column label: 'FORMAT METRIC', plus the annotation stem when FORMAT repeats."""
    kinds = [parse_spec(s).kind for s in specs]
    out = {}
    for s, kind in zip(specs, kinds, strict=True):
        label = kind if kinds.count(kind) == 1 else f"{kind}:{parse_spec(s).annotations.stem}"
        if label in out.values():
            label = s  # same format and stem twice: only the full spec tells them apart
        out[s] = f"{label} {metrics[s]}"
    return out


def _spec_columns(results: dict[str, dict[str, dict]]) -> tuple[list[str], dict[str, str]]:
    """Specs in first-seen order over all models, and each one's column label."""
    specs = list(dict.fromkeys(s for per_spec in results.values() for s in per_spec))
    metrics = {s: next(per[s]["metric"] for per in results.values() if s in per) for s in specs}
    return specs, _columns(specs, metrics)


def scored_notes(results: dict[str, dict[str, dict]]) -> list[str]:
    """{model: {spec: evaluate result}} → one line per column: the keypoints it scored."""
    specs, cols = _spec_columns(results)
    lines = []
    for s in specs:
        by_model = {name: per[s]["scored"] for name, per in results.items() if s in per}
        kinds = list(dict.fromkeys(by_model.values()))
        text = kinds[0] if len(kinds) == 1 else "; ".join(
            f"{k} ({', '.join(n for n, v in by_model.items() if v == k)})" for k in kinds)
        lines.append(f"{cols[s]}: {text}")
    return lines


def official_notes(results: dict[str, dict[str, dict]]) -> list[str]:
    """{model: {spec: evaluate result}} → one line per column and model whose result has the
    kind's "official" figures: "crowdpose AP, student: AP 20.20 · … · AP(E) —"."""
    specs, cols = _spec_columns(results)
    return [f"{cols[s]}, {name}: " + " · ".join(
                f"{k} {'—' if v is None else f'{v:.2f}'}" for k, v in per[s]["official"].items())
            for s in specs for name, per in results.items() if "official" in per.get(s, {})]


def official_text(lines: list[str]) -> str:
    return "\n\nOfficial figures (each kind's own tool, its names):\n" + "\n".join(
        f"- {n}" for n in lines) if lines else ""


def notes_text(notes: list[str]) -> str:
    return "\n\nScored keypoints (labelled in the file and in the model's skeleton):\n" + "\n".join(
        f"- {n}" for n in notes) if notes else ""


def report_rows(results: dict[str, dict[str, dict]]) -> list[dict]:
    """{model name: {spec: evaluate result}} → rows [{"model": name, column: value | None, …,
    "Average": value | None}] in a fixed column order (specs in first-seen order)."""
    specs, cols = _spec_columns(results)
    averaged = [s for s in specs if parse_spec(s).kind in AVERAGED_KINDS]
    with_average = {parse_spec(s).kind for s in averaged} == set(AVERAGED_KINDS)
    rows = []
    for name, per_spec in results.items():
        row: dict = {"model": name}
        for s in specs:
            row[cols[s]] = float(per_spec[s]["value"]) if s in per_spec else None
        if with_average:
            vals = [row[cols[s]] for s in averaged]
            row[AVERAGE] = None if None in vals else float(np.mean(vals))
        rows.append(row)
    return rows


def markdown_table(rows: list[dict]) -> str:
    """Rows → a markdown table, numbers with two decimals, missing ones as '—'."""
    if not rows:
        return ""
    keys = list(rows[0])
    lines = ["| " + " | ".join(keys) + " |", "|" + "|".join(["---"] + ["---:"] * (len(keys) - 1))
             + "|"]
    for r in rows:
        cells = [str(r["model"])] + ["—" if r[k] is None else f"{r[k]:.2f}" for k in keys[1:]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def bar_chart(rows: list[dict], path: Path) -> Path:
    """Grouped bars: one group per column, one bar per model (matplotlib, no display)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    keys = list(rows[0])[1:]
    width = 0.8 / len(rows)
    fig = Figure(figsize=(max(6.0, 1.6 * len(keys) + 1), 4.5), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    x = np.arange(len(keys))
    for i, r in enumerate(rows):
        vals = [np.nan if r[k] is None else r[k] for k in keys]
        bars = ax.bar(x + (i - (len(rows) - 1) / 2) * width, vals, width, label=str(r["model"]))
        ax.bar_label(bars, labels=["" if np.isnan(v) else f"{v:.1f}" for v in vals],
                     fontsize=7, padding=1)
    ax.set_xticks(x, keys)
    ax.set_ylabel("AP / PCKh@0.5 (0–100)")
    ax.set_ylim(0, 105)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.set_title("Every model on every dataset")
    fig.tight_layout()
    atomic_write(path, lambda p: fig.savefig(p, format="png"))
    return path


def write_report(rows: list[dict], out_dir: Path, notes: list[str] = (),
                 official: list[str] = ()) -> list[Path]:
    """report.md (the table, the `official` figures and `notes`), report.csv (the columns'
    values; empty cell = not evaluated) and report.png into out_dir."""
    if not rows:
        raise UniError("report: no rows to write")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    md = out_dir / "report.md"
    write_text(md, markdown_table(rows) + official_text(list(official)) + notes_text(list(notes))
               + "\n")
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: ("" if v is None else v) for k, v in r.items()})
    csv_path = out_dir / "report.csv"
    write_text(csv_path, buf.getvalue())
    return [md, csv_path, bar_chart(rows, out_dir / "report.png")]


def report(runs: list[Path], specs: list[str], out_dir: Path | None = None,
           names: list[str] | None = None, head_boxes: Path | None = None,
           flip_test: bool = True, progress: bool = True) -> tuple[str, list[Path]]:
    """Evaluate every run on every spec → (markdown table, files written)."""
    if names is not None and len(names) != len(runs):
        raise UniError(f"--names: {len(names)} names for {len(runs)} runs")
    datasets = load_datasets(list(specs), head_boxes)
    results: dict[str, dict[str, dict]] = {}
    for i, run in enumerate(runs):
        predictor = load_predictor(run)
        name = names[i] if names else predictor.name
        if name in results:
            raise UniError(f"{run}: two runs are both named {name!r}; give --names")
        _, records = model_records(predictor, datasets, flip_test, progress=progress)
        per_ds = parse_results(records, datasets, str(run), predictor.unified)
        results[name] = {s: evaluate_dataset(ds, res)
                         for s, ds, res in zip(specs, datasets, per_ds, strict=True)}
    rows, notes, official = report_rows(results), scored_notes(results), official_notes(results)
    written = write_report(rows, out_dir, notes, official) if out_dir is not None else []
    return markdown_table(rows) + official_text(official) + notes_text(notes), written
