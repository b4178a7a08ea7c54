"""`uni`: one command per stage. Thin: parse options, call the module that does the work."""

from __future__ import annotations

import json
import os
import sys
from dataclasses import Field, asdict, fields
from pathlib import Path

import click
from click.core import ParameterSource

from uniskel.core.errors import UniError
from uniskel.core.files import check_output_path
from uniskel.student.config import (
    DEFAULTS,
    TrainConfig,
    command_config,
    field_type,
    input_wh,
)


class _Group(click.Group):
    """Turns user errors into one line on stderr and exit code 2 (no traceback)."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except UniError as e:
            click.echo(f"uni: error: {e}", err=True)
            if getattr(e, "exit_hard", False):  # stores.create.StoreWriteFailed
                # HDF5 crashes at exit (SIGSEGV) over a file whose writes failed: skip its
                # teardown, so a full disk still ends in this one line and exit code 2.
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(2)
            sys.exit(2)
        except KeyboardInterrupt:
            click.echo("uni: interrupted", err=True)
            sys.exit(130)


@click.group(cls=_Group, context_settings={"show_default": True})
@click.version_option(package_name="uniskel")
@click.option("--skeletons", "skeleton_files", multiple=True,
              type=click.Path(dir_okay=False, path_type=Path),
              help="A TOML file of skeletons, unified skeletons and dataset kinds to add "
                   "(README \"Dataset kinds\"); repeat for more.")
def uni(skeleton_files: tuple[Path, ...]) -> None:
    """Train one human-pose student from many datasets and many teachers."""
    if skeleton_files:
        from uniskel.core.skeletons import load_skeleton_file

        for path in skeleton_files:
            load_skeleton_file(path)


class OutPath(click.Path):
    """A path the command writes (--out and the like): one line and exit 2 at once when it
    cannot be made (under a file, in a read-only folder), before any work is done."""

    def convert(self, value, param, ctx):
        what = param.opts[0] if param and param.opts else "--out"
        try:
            path = super().convert(value, param, ctx)
        except click.BadParameter as e:  # a file where a folder is wanted, or the reverse
            raise UniError(f"{what}: {e.message}") from None
        check_output_path(Path(path), what)
        return path


# Options several commands share, worded once.
AS_JSON = click.option("--json", "as_json", is_flag=True,
                       help="Print one JSON object instead of a table.")
FLIP_TEST = click.option("--flip-test/--no-flip-test", default=True,
                         help="Average each crop's heatmaps with its mirror's (off: half the "
                              "compute).")
DEVICE = click.option("--device", default="auto",
                      help="auto | cpu | cuda | cuda:N: where MODEL runs (cuda without one: an "
                           "error).")
HEAD_BOXES = click.option("--head-boxes", type=click.Path(dir_okay=False, path_type=Path),
                          help="MPII head boxes (mpii_gt_val.mat) for PCKh.")
DRAW_OUT = click.option("--out", type=OutPath(file_okay=False, path_type=Path),
                        help="Folder for the --draw PNGs.")


class TrainCommand(click.Command):
    """train-student: one option per TrainConfig field that has one, made from the field
    (student/config.py: name, type, help, default — what --help shows), with the command's own
    options after --out; the epilog lists the keys only a --config file sets. An option left
    at its default does not override the --config file: the command passes on only those given."""

    def __init__(self, name: str, params: list[click.Parameter] | None = None, **kw) -> None:
        made = [_train_option(f) for f in fields(TrainConfig) if f.metadata["option"]]
        at = [p.name for p in made].index("out") + 1
        keys = ", ".join(f"{f.name.replace('_', '-')} {_shown(DEFAULTS[f.name])}"
                         for f in fields(TrainConfig) if not f.metadata["option"])
        epilog = ("Keys without an option, set in the --config TOML (- or _ alike), with their "
                  f"defaults: {keys}. student/config.py documents every key.")
        super().__init__(name, params=[*made[:at], *(params or []), *made[at:]], epilog=epilog,
                         **kw)


_TRAIN_TYPES = {"out": OutPath(file_okay=False, path_type=Path),
                "init": click.Path(path_type=Path),
                "stores": click.Path(path_type=Path)}


def _train_option(f: Field) -> click.Option:
    """A TrainConfig field's train-student option (its default only for --help's sake)."""
    meta, default = f.metadata, DEFAULTS[f.name]
    decl = meta["option"] if isinstance(meta["option"], str) else "--" + f.name.replace("_", "-")
    kw = {"help": meta["help"] or None, "show_default": meta["shown"], "default": default}
    if f.name == "input_wh":  # written HxW, as papers do; held as (w, h)
        kw.update(default="x".join(map(str, default[::-1])),
                  callback=lambda _ctx, _param, value: input_wh(value))
    elif isinstance(default, bool):
        kw["is_flag"] = True
    elif isinstance(default, list | dict):
        kw.update(multiple=True, default=(), type=_TRAIN_TYPES.get(f.name))
    elif meta["choices"]:
        kw["type"] = click.Choice(meta["choices"])
        if default in ("", None):  # filled in by the config (a recipe's), not a choice itself
            kw["default"] = None
    else:
        kw["type"] = _TRAIN_TYPES.get(f.name, field_type(f.name))
    return click.Option([decl, f.name], **kw)


def _shown(value) -> str:
    """A config default as --help writes it."""
    if value is None:  # a recipe's (student/config.py RECIPES)
        return "by recipe"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list | dict | tuple):
        return ", ".join(map(str, value)) if value else "none"
    return str(value)


@uni.command("describe-teacher")
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--skeleton", required=True,
              help="Native keypoint order: a known skeleton (`uni skeletons`: coco17, mpii16, "
                   "...; a file's with `uni --skeletons FILE`), embedded whole in the model.")
@click.option("--head", required=True, type=click.Choice(["heatmap", "simcc"]))
@click.option("--name", help="Teacher name.", show_default="MODEL's file name without .onnx")
@click.option("--mean", help="Per-channel mean in 0–255 units, R,G,B.", show_default="ImageNet's")
@click.option("--std", help="Per-channel std in 0–255 units, R,G,B.", show_default="ImageNet's")
@click.option("--bgr", is_flag=True, help="The model expects BGR channel order.")
@click.option("--input-size", help="Crop size HxW, as papers write it (256x192: 256 high); "
              "read from the model when its input is static.")
@click.option("--simcc-split", type=float, default=2.0)
@click.option("--output", "outputs", multiple=True,
              help="Output name(s): the heatmap output, or the SimCC x then y outputs.")
@click.option("--keypoint-channels", type=int, default=0, show_default="the skeleton's count",
              help="Leading output channels that are keypoints.")
@click.option("--activation", type=click.Choice(["none", "sigmoid", "softmax"]),
              help="Raw output → probability.", show_default="none for heatmap, softmax for SimCC")
@click.option("--padding", type=float, default=1.25, help="Crop box = person box × padding.")
@click.option("--out", type=OutPath(dir_okay=False, path_type=Path),
              help="Where to write the described copy.",
              show_default="MODEL.described.onnx beside MODEL")
@click.option("--in-place", is_flag=True, help="Rewrite MODEL itself instead of writing a copy.")
def describe_teacher(model: Path, **options) -> None:
    """Stamp how to run MODEL (a pose ONNX model) into the metadata of a copy of it (or of MODEL
    itself with --in-place), making it a teacher."""
    from uniskel.app.describe_teacher import describe_teacher as describe

    dst, info = describe(model, **options)
    click.echo(f"{dst}: {json.dumps(asdict(info))}")
    click.echo(f"uni: rewrote {model} in place" if dst == model else
               f"uni: wrote {dst}, a described copy; {model} is unchanged", err=True)


@uni.command("cache-teachers")
@click.option("--data", "data", multiple=True, required=True,
              help="KIND:ANN[:IMAGES]; repeat for more datasets.")
@click.option("--teacher", "teachers", multiple=True, required=True,
              type=click.Path(dir_okay=False, path_type=Path),
              help="A described ONNX teacher; repeat for more.")
@click.option("--out", required=True, type=OutPath(file_okay=False, path_type=Path),
              help="Store directory: one TEACHER__FORMAT-DATASETID.h5 per teacher × dataset.")
@click.option("--workers", type=int, help="Local dask worker processes (1 runs in this "
              "process).", show_default="one per visible GPU, else one per 4 CPU cores")
@click.option("--scheduler", help="Use a running dask cluster instead (tcp://host:8786).")
@click.option("--scheduler-file", type=click.Path(dir_okay=False, path_type=Path),
              help="Or the file `dask scheduler --scheduler-file` wrote (shared filesystem).")
@click.option("--device", default="auto", help="auto | cpu | cuda | cuda:N: "
              "where teachers run; auto uses CUDA when it works, local workers take the "
              "GPUs round-robin; cuda where CUDA cannot run is an error.")
@click.option("--threads", type=int, help="onnxruntime threads per worker.",
              show_default="the cores shared among the local workers; 1 with --scheduler")
@click.option("--batch-size", type=int, default=32, help="Crops per task.")
@click.option("--threshold", type=float, help="Zero stored values under this fraction of their "
              "map's peak (higher: smaller stores).",
              show_default="4/255, an error ≤ 1.6 % of the peak")
@click.option("--flip-test/--no-flip-test", default=True,
              help="Average each crop's maps with its mirror's (off: half the compute).")
@click.option("--overwrite", is_flag=True, help="Rebuild stores, also incompatible ones.")
@click.option("--strict", is_flag=True, help="Stop at the first unreadable image.")
def cache_teachers(data: tuple[str, ...], teachers: tuple[Path, ...], out: Path, **options) -> None:
    """Stage one: run every teacher once over every person crop into compressed stores."""
    from uniskel.pipeline.cache import cache_teachers as run
    from uniskel.pipeline.cache import format_run_summary

    for flag in ("workers", "threads"):
        if options[flag] is not None and options[flag] < 1:
            raise UniError(f"--{flag} must be at least 1, got {options[flag]}")
    if options["scheduler"] and options["scheduler_file"]:
        raise UniError("give --scheduler or --scheduler-file, not both")
    for s in run(list(data), list(teachers), out, **options):
        click.echo(format_run_summary(s))


@uni.command("synth")
@click.option("--out", required=True, type=OutPath(file_okay=False, path_type=Path),
              help="Folder to write coco/, mpii/ and halpe/ into.")
@click.option("--persons", type=int, default=600,
              help="People per dataset (COCO-style and MPII-style; Halpe val gets 15 %).")
@click.option("--seed", type=int, default=0)
@click.option("--overwrite", is_flag=True, help="Replace existing coco/, mpii/, halpe/ in OUT.")
@click.option("--same-domain", is_flag=True, help="Draw every dataset in one shared style (a "
              "dot names each keypoint alike everywhere) instead of each in its own domain.")
@click.option("--marks", type=click.Choice(["none", "domain", "shared"]), default=None,
              show_default="none", help="Keypoint marks in the datasets' own domains: none (the "
              "body alone), domain (a dot palette of each dataset's own), shared (the shared "
              "style's dots).")
def synth(out: Path, persons: int, seed: int, overwrite: bool, same_domain: bool,
          marks: str | None) -> None:
    """Write synthetic COCO / MPII / Halpe datasets (real file formats), each dataset drawn in
    its own domain unless --same-domain."""
    from uniskel.app.synth import generate

    for key, path in generate(out, persons, seed, overwrite, same_domain=same_domain,
                              marks=marks).items():
        click.echo(f"{key}: {key.split('/')[0]}:{path}")


@uni.command("inspect-data")
@click.argument("spec")
@AS_JSON
@click.option("--draw", type=int, default=0, help="Draw boxes and skeletons on N images.")
@DRAW_OUT
@click.option("--head-boxes", type=click.Path(dir_okay=False, path_type=Path),
              help="MPII head boxes (mpii_gt_val.mat).")
def inspect_data(spec: str, as_json: bool, draw: int, out: Path | None,
                 head_boxes: Path | None) -> None:
    """Count images, instances and labeled unified keypoints of SPEC (KIND:ANN[:IMAGES])."""
    from uniskel.app.inspect_data import dataset_report, draw_dataset
    from uniskel.core.datasets import load_dataset

    if draw and out is None:
        raise UniError("--draw needs --out DIR")
    ds = load_dataset(spec, head_boxes)
    click.echo(dataset_report(ds, as_json))
    for path in draw_dataset(ds, draw, out) if draw else []:
        click.echo(f"wrote {path}", err=as_json)


@uni.command("skeletons")
@AS_JSON
def skeletons_cmd(as_json: bool) -> None:
    """List the known skeletons (keypoints, mapping to unified names) and dataset kinds."""
    from uniskel.core.skeletons import summary, summary_lines

    click.echo(json.dumps(summary()) if as_json else "\n".join(summary_lines()))


@uni.command("train-student", cls=TrainCommand)
@click.option("--config", "config_file", type=click.Path(dir_okay=False, path_type=Path),
              help="TOML file of these options (CLI options override it) and of the keys "
                   "below.")
@click.pass_context
def train_student(ctx: click.Context, config_file: Path | None, **options) -> None:
    """Stage two: train a student on GT and cached teacher targets (torchrun-able)."""
    from uniskel.student.train import train

    given = {k: v for k, v in options.items()
             if ctx.get_parameter_source(k) is not ParameterSource.DEFAULT}
    run = train(command_config(config_file, given))
    click.echo(f"{run}: done")


@uni.command("inspect-store")
@click.argument("store", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of text.")
@click.option("--verify", is_flag=True,
              help="Read every chunk (checksums) and check the done mask; exit 1 on problems.")
@click.option("--draw", type=int, default=0, help="Overlay N instances' heatmaps on their crops.")
@DRAW_OUT
def inspect_store(store: Path, as_json: bool, verify: bool, draw: int, out: Path | None) -> None:
    """Show a soft-label STORE's provenance and size; optionally verify or draw it."""
    from uniskel.app.inspect_store import draw_store, store_report
    from uniskel.stores.reader import open_store

    if draw and out is None:
        raise UniError("--draw needs --out DIR")
    reader = open_store(store)
    text, problems = store_report(reader, as_json, verify)
    click.echo(text)
    for path in draw_store(reader, draw, out) if draw else []:
        click.echo(f"wrote {path}", err=as_json)
    if problems:
        sys.exit(1)


@uni.command("evaluate")
@click.argument("model", required=False, type=click.Path(path_type=Path))
@click.option("--data", "data", multiple=True, required=True,
              help="KIND:ANN[:IMAGES] to evaluate on (`uni skeletons` lists the kinds); "
                   "repeat for more.")
@click.option("--predictions", type=click.Path(dir_okay=False, path_type=Path),
              help="Score this COCO keypoint results file instead of running a MODEL.")
@click.option("--save-predictions", type=OutPath(dir_okay=False, path_type=Path),
              help="Also write MODEL's predictions here (COCO keypoint results JSON).")
@click.option("--boxes", type=click.Path(dir_okay=False, path_type=Path),
              help="COCO detection results JSON: run on these person boxes (rescored, "
                   "OKS-NMS 0.9) instead of the ground-truth ones; AP datasets only.")
@click.option("--box-threshold", type=float, default=0.0,
              help="With --boxes: drop boxes scoring lower (MMPose's det_bbox_thr).")
@HEAD_BOXES
@FLIP_TEST
@click.option("--batch-size", type=int, default=32)
@DEVICE
@AS_JSON
def evaluate_cmd(model: Path | None, data: tuple[str, ...], predictions: Path | None,
                 save_predictions: Path | None, as_json: bool, **options) -> None:
    """Score MODEL (run dir, .pt or described .onnx) by each dataset's metric: AP, PCKh, PCK."""
    from uniskel.evaluation.evaluate import evaluate, format_results

    if save_predictions and predictions:
        raise UniError("--save-predictions needs a MODEL, not --predictions")
    results = evaluate(list(data), model, predictions, save_to=save_predictions,
                       progress=not as_json, **options)
    click.echo(json.dumps(results) if as_json else format_results(results))


@uni.command("report")
@click.argument("runs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--data", "data", multiple=True, required=True,
              help="KIND:ANN[:IMAGES]; one table column per dataset.")
@click.option("--out", type=OutPath(file_okay=False, path_type=Path),
              help="Write report.md, report.csv and report.png here.")
@click.option("--names", help="Comma-separated row names, one per RUN.",
              show_default="the model names")
@HEAD_BOXES
@FLIP_TEST
def report_cmd(runs: tuple[Path, ...], data: tuple[str, ...], out: Path | None,
               names: str | None, head_boxes: Path | None, flip_test: bool) -> None:
    """The cross-dataset table: every RUN (model) on every dataset, plus the paper's Average."""
    from uniskel.evaluation.report import report

    table, written = report(list(runs), list(data), out, names.split(",") if names else None,
                            head_boxes, flip_test)
    click.echo(table)
    for path in written:
        click.echo(f"wrote {path}", err=True)


@uni.command("export")
@click.argument("run", metavar="MODEL", type=click.Path(path_type=Path))
@click.option("--out", required=True, type=OutPath(dir_okay=False, path_type=Path),
              help="The ONNX file to write (described: usable as a teacher).")
@click.option("--name", help="Model name in its metadata.",
              show_default="the run's name, or the checkpoint file's")
@click.option("--skeleton", help="A run: keep only this skeleton's channels (e.g. coco17 for a "
              "COCO-only teacher). An MMPose checkpoint: its keypoints' skeleton.",
              show_default="all of the student's unified skeleton; a checkpoint's own")
def export_cmd(run: Path, out: Path, name: str | None, skeleton: str | None) -> None:
    """Export MODEL to ONNX (dynamic batch), checked against PyTorch, teacher-described. MODEL:
    a student run (directory or .pt) or an MMPose RTMPose checkpoint (.pth; architecture, width,
    keypoints and input size read from its weights)."""
    from uniskel.evaluation.export import export_onnx

    path, diff = export_onnx(run, out, name, skeleton)
    click.echo(f"{path}: onnxruntime vs torch max |diff| {diff:.2e}")


@uni.command("predict")
@click.argument("model", type=click.Path(path_type=Path))
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--out", required=True, type=OutPath(file_okay=False, path_type=Path))
@click.option("--boxes", type=click.Path(dir_okay=False, path_type=Path),
              help="COCO detection results JSON; images match image_id by the digits of their "
                   "file name.", show_default="the whole image is one person box")
@click.option("--score-threshold", type=float, default=0.3, help="Drop boxes scoring lower.")
@click.option("--keypoint-threshold", type=float, default=0.3,
              help="Draw keypoints scoring higher.")
@FLIP_TEST
@DEVICE
def predict_cmd(model: Path, images: tuple[Path, ...], out: Path, boxes: Path | None,
                score_threshold: float, keypoint_threshold: float, flip_test: bool,
                device: str) -> None:
    """Draw MODEL's unified keypoints on IMAGEs → OUT/<image>.png and OUT/predictions.json."""
    from uniskel.evaluation.predict import predict_images

    for path in predict_images(model, list(images), out, boxes, score_threshold,
                               keypoint_threshold, flip_test, device=device):
        click.echo(f"wrote {path}")


@uni.command("demo")
@click.option("--out", default="demo_out", type=OutPath(file_okay=False, path_type=Path))
@click.option("--quick", is_flag=True, help="About 3 minutes on 2 cores: smaller crops, fewer "
              "epochs, and the single-dataset students serve as the teachers.")
@click.option("--seed", default=0)
@click.option("--ablation", is_flag=True, help="Add the same students trained on data drawn in "
              "one shared domain (`uni synth --same-domain`): a second table, twice the time.")
@click.option("--same-domain", is_flag=True, help="Only the table on data drawn in one shared "
              "domain.")
def demo_cmd(out: Path, quick: bool, seed: int, ablation: bool, same_domain: bool) -> None:
    """The whole method on synthetic data: teachers, caches, four students, the paper's table,
    each dataset drawn in its own domain."""
    from uniskel.app.demo import run_demo

    run_demo(out, quick, seed, same_domain=same_domain, ablation=ablation)


def main() -> None:
    uni(prog_name="uni")


if __name__ == "__main__":
    main()
