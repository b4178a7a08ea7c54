"""`uni`: one command per stage. Thin: parse options, call the module that does the work."""

from __future__ import annotations

import json
import os
import sys
from dataclasses import asdict
from pathlib import Path

import click

from uniskel.core.errors import UniError
from uniskel.core.files import check_output_path


class _Group(click.Group):
    """Turns user errors into one line on stderr and exit code 2 (no traceback)."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except UniError as e:
            click.echo(f"uni: error: {e}", err=True)
            if getattr(e, "exit_hard", False):  # stores.writer.StoreWriteFailed
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


class TrainCommand(click.Command):
    """train-student: its options default to None (a --config file, else student/config.py's
    DEFAULTS fill them), so --help shows those defaults, read when it is asked for (importing
    torch), and lists the keys only a --config file sets."""

    def format_help(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        from uniskel.student.config import DEFAULTS

        shown = {"input_size": "x".join(map(str, DEFAULTS["input_wh"][::-1]))}
        if "val_data" in DEFAULTS and "val_fraction" in DEFAULTS:
            shown["val_data"] = f"{100 * DEFAULTS['val_fraction']:g} % of --data held out"
        blank = []  # (option, its own default): the config's default stands in for this help
        for p in self.params:
            value = shown.get(p.name, DEFAULTS.get(p.name))
            if (isinstance(p, click.Option) and not p.multiple and not p.is_flag
                    and isinstance(value, str | int | float) and not isinstance(value, bool)):
                blank.append((p, p.default))
                p.default = value
            elif p.name in shown and not isinstance(p.show_default, str):
                p.show_default = shown[p.name]
        have = {p.name for p in self.params} | {"input_wh"}
        self.epilog = ("Keys without an option, set in the --config TOML (- or _ alike), "
                       "with their defaults: " + ", ".join(
                           f"{k.replace('_', '-')} {_shown(v)}" for k, v in DEFAULTS.items()
                           if k not in have) + ". student/config.py documents every key.")
        try:
            super().format_help(ctx, formatter)
        finally:
            for p, default in blank:
                p.default = default


def _shown(value) -> str:
    """A config default as --help writes it."""
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list | dict | tuple):
        return ", ".join(map(str, value)) if value else "none"
    return str(value)


def _floats3(value: str | None, option: str) -> tuple[float, float, float] | None:
    if value is None:
        return None
    try:
        parts = tuple(float(v) for v in value.split(","))
    except ValueError:
        parts = ()
    if len(parts) != 3:
        raise UniError(f"{option}: expected three comma-separated numbers, got {value!r}")
    return parts


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
@click.option("--simcc-split", type=float, default=2.0, show_default=True)
@click.option("--output", "outputs", multiple=True,
              help="Output name(s): the heatmap output, or the SimCC x then y outputs.")
@click.option("--keypoint-channels", type=int, default=0, show_default="the skeleton's count",
              help="Leading output channels that are keypoints.")
@click.option("--activation", type=click.Choice(["none", "sigmoid", "softmax"]),
              help="Raw output → probability.",
              show_default="none for heatmap, softmax for SimCC")
@click.option("--padding", type=float, default=1.25, show_default=True,
              help="Crop box = person box × padding.")
@click.option("--out", type=OutPath(dir_okay=False, path_type=Path),
              help="Where to write the described copy.",
              show_default="MODEL.described.onnx beside MODEL")
@click.option("--in-place", is_flag=True, help="Rewrite MODEL itself instead of writing a copy.")
def describe_teacher(model: Path, skeleton: str, head: str, name: str | None, mean: str | None,
                     std: str | None, bgr: bool, input_size: str | None, simcc_split: float,
                     outputs: tuple[str, ...], keypoint_channels: int, activation: str | None,
                     padding: float, out: Path | None, in_place: bool) -> None:
    """Stamp how to run MODEL (a pose ONNX model) into the metadata of a copy of it (or of MODEL
    itself with --in-place), making it a teacher."""
    from uniskel.core.crops import DEFAULT_MEAN, DEFAULT_STD
    from uniskel.core.geometry import parse_input_size
    from uniskel.pipeline.teachers import TeacherInfo, describe_model, model_input_wh, read_info

    if in_place and out:
        raise UniError("give --out or --in-place, not both")
    if input_size:
        try:
            wh = parse_input_size(input_size)
        except ValueError as e:
            raise UniError(f"--input-size: {e}") from None
    else:
        wh = model_input_wh(model)
        if wh is None:
            raise UniError(f"{model}: the input size is not static; give --input-size HxW")
    info = TeacherInfo(
        name=name or model.stem, skeleton=skeleton, head=head, input_wh=wh,
        mean=_floats3(mean, "--mean") or DEFAULT_MEAN, std=_floats3(std, "--std") or DEFAULT_STD,
        bgr=bgr, simcc_split=simcc_split, outputs=outputs, num_keypoints=keypoint_channels,
        activation=activation or ("softmax" if head == "simcc" else "none"), padding=padding)
    dst = describe_model(model, info, model if in_place else
                         out or model.with_name(f"{model.stem}.described.onnx"))
    click.echo(f"{dst}: {json.dumps(asdict(read_info(dst)))}")
    click.echo(f"uni: rewrote {model} in place" if dst == model else
               f"uni: wrote {dst}, a described copy; {model} is unchanged", err=True)


@uni.command("cache-teachers")
@click.option("--data", "data", multiple=True, required=True,
              help="KIND:ANNOTATIONS[:IMAGE_ROOT]; repeat for more datasets.")
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
@click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda | cuda:N: "
              "where teachers run; auto uses CUDA when it works, local workers take the "
              "GPUs round-robin; cuda where CUDA cannot run is an error.")
@click.option("--threads", type=int, help="onnxruntime threads per worker.",
              show_default="the cores shared among the local workers; 1 with --scheduler")
@click.option("--batch-size", type=int, default=32, show_default=True, help="Crops per task.")
@click.option("--threshold", type=float, help="Zero stored values under this fraction of their "
              "map's peak (higher: smaller stores).",
              show_default="4/255, an error ≤ 1.6 % of the peak")
@click.option("--flip-test/--no-flip-test", default=True, show_default=True,
              help="Average each crop's maps with its mirror's (off: half the compute).")
@click.option("--overwrite", is_flag=True, help="Rebuild stores, also incompatible ones.")
@click.option("--strict", is_flag=True, help="Stop at the first unreadable image.")
def cache_teachers(data: tuple[str, ...], teachers: tuple[Path, ...], out: Path,
                   workers: int | None, scheduler: str | None, scheduler_file: Path | None,
                   device: str, threads: int | None, batch_size: int, threshold: float | None,
                   flip_test: bool, overwrite: bool, strict: bool) -> None:
    """Stage one: run every teacher once over every person crop into compressed stores."""
    from uniskel.pipeline.cache import cache_teachers as run
    from uniskel.pipeline.cache import format_run_summary

    for flag, value in (("--workers", workers), ("--threads", threads)):
        if value is not None and value < 1:
            raise UniError(f"{flag} must be at least 1, got {value}")
    if scheduler and scheduler_file:
        raise UniError("give --scheduler or --scheduler-file, not both")
    for s in run(list(data), list(teachers), out, workers=workers, scheduler=scheduler,
                 threads=threads, batch_size=batch_size, flip_test=flip_test,
                 overwrite=overwrite, strict=strict, threshold=threshold, device=device,
                 scheduler_file=scheduler_file):
        click.echo(format_run_summary(s))


@uni.command("synth")
@click.option("--out", required=True, type=OutPath(file_okay=False, path_type=Path),
              help="Folder to write coco/, mpii/ and halpe/ into.")
@click.option("--persons", type=int, default=600, show_default=True,
              help="People per dataset (COCO-style and MPII-style; Halpe val gets 15 %).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--overwrite", is_flag=True, help="Replace existing coco/, mpii/, halpe/ in OUT.")
def synth(out: Path, persons: int, seed: int, overwrite: bool) -> None:
    """Write synthetic COCO / MPII / Halpe datasets of stick people (real file formats)."""
    from uniskel.app.synth import generate

    for key, path in generate(out, persons, seed, overwrite).items():
        kind = key.split("/")[0]
        click.echo(f"{key}: {kind}:{path}")


@uni.command("inspect-data")
@click.argument("spec")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of a table.")
@click.option("--draw", type=int, default=0, help="Draw boxes and skeletons on N images.")
@click.option("--out", type=OutPath(file_okay=False, path_type=Path),
              help="Folder for the --draw PNGs.")
@click.option("--head-boxes", type=click.Path(dir_okay=False, path_type=Path),
              help="MPII head boxes (mpii_gt_val.mat).")
def inspect_data(spec: str, as_json: bool, draw: int, out: Path | None,
                 head_boxes: Path | None) -> None:
    """Count images, instances and labeled unified keypoints of SPEC (KIND:ANN[:IMAGES])."""
    from uniskel.core.datasets import load_dataset, missing_images, summarize

    if draw and out is None:
        raise UniError("--draw needs --out DIR")
    ds = load_dataset(spec, head_boxes)
    summary = summarize(ds)
    gone, used = missing_images(ds)
    summary["missing_images"] = len(gone)  # of the images with people
    if as_json:
        click.echo(json.dumps(summary))
    else:
        click.echo(f"dataset    {ds.spec}  (sha256 {ds.dataset_id[:12]})")
        click.echo(f"images     {summary['images']}\ninstances  {summary['instances']}")
        where = f" (not found under {ds.spec.image_root}; first: {gone[0]})" if gone else ""
        click.echo(f"missing    {len(gone)} of {used} images with people{where}")
        for key, label in (("videos", ""), ("frames", ""), ("ignore_regions", " polygons")):
            if key in summary:  # where the file says (PoseTrack)
                click.echo(f"{key.split('_')[0]:<11}{summary[key]}{label}")
        if "crowd_index" in summary:  # CrowdPose: images per crowd class
            click.echo("crowd      " + ", ".join(f"{c} {n}" for c, n in
                                                 summary["crowd_index"].items()) + " images")
        click.echo(f"{'keypoint':<16}{'labeled':>8}")
        for name, count in summary["keypoints"].items():
            click.echo(f"{name:<16}{count:>8}")
    if draw:
        from uniskel.core.draw import draw_dataset

        for path in draw_dataset(ds, draw, out):
            click.echo(f"wrote {path}", err=as_json)


@uni.command("skeletons")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of a table.")
def skeletons_cmd(as_json: bool) -> None:
    """List the known skeletons (keypoints, mapping to unified names) and dataset kinds."""
    from uniskel.core.skeletons import summary, summary_lines

    click.echo(json.dumps(summary()) if as_json else "\n".join(summary_lines()))


@uni.command("train-student", cls=TrainCommand)
@click.option("--data", "data", multiple=True, help="KIND:ANN[:IMAGES] training data; repeat.")
@click.option("--stores", "stores", multiple=True, type=click.Path(path_type=Path),
              help="Teacher stores (folders of *.h5 or files); none = ground truth only.")
@click.option("--out", type=OutPath(file_okay=False, path_type=Path), help="Run directory.")
@click.option("--config", "config_file", type=click.Path(dir_okay=False, path_type=Path),
              help="TOML file of these options (CLI options override it) and of the keys "
                   "below.")
@click.option("--model", type=click.Choice(["tiny", "small", "base"]),
              help="Student size: tiny ≈1M, small ≈5M, base ≈16M parameters.")
@click.option("--input-size", help="Crop size HxW, as papers write it (256x192: 256 high).")
@click.option("--epochs", type=int)
@click.option("--batch-size", type=int, help="Per process.")
@click.option("--lr", type=float, help="AdamW peak learning rate, cosine schedule.")
@click.option("--workers", type=int, help="DataLoader worker processes.")
@click.option("--gt-weight", type=float, help="Ground-truth loss weight.")
@click.option("--kd-weight", "kd_weight", multiple=True, help="TEACHER=W; repeat.",
              show_default="0.25 COCO / 0.45 MPII teacher, else 0.7 shared equally")
@click.option("--kd-decay", "kd_decay", multiple=True, help="TEACHER=none|linear; repeat.",
              show_default="linear for the MPII teacher, else none")
@click.option("--kd-loss", type=click.Choice(["kl", "mse"]),
              help="kl: spatial-softmax KL at temperature 1/kd-beta.")
@click.option("--seed", type=int)
@click.option("--val-data", "val_data", multiple=True,
              help="Validation data (GT loss picks best.pt).")
@click.option("--resume", is_flag=True, default=None,
              help="Continue OUT/last.pt exactly, as configured; no checkpoint yet: start OUT.")
@click.option("--amp", is_flag=True, default=None, help="bf16 autocast on CPU, fp16 on CUDA.")
@click.option("--strict", is_flag=True, default=None, help="An unreadable image is fatal.")
@click.option("--skip-corrupt", is_flag=True, default=None,
              help="Train without the instances whose cached targets fail verification.",
              show_default="refuse such a store")
@click.option("--unified", help="The student's unified skeleton: unified21, unified27, one a "
              "skeleton file defines, or union (unified21 + every keypoint of the --data "
              "datasets).")
def train_student(config_file: Path | None, input_size: str | None, **options) -> None:
    """Stage two: train a student on GT and cached teacher targets (torchrun-able)."""
    from uniskel.student.config import input_wh, read_config_file
    from uniskel.student.train import train

    cfg = read_config_file(config_file) if config_file else {}
    if input_size:
        options["input_wh"] = input_wh(input_size)
    for key, value in options.items():
        if value is None or value == ():
            continue
        cfg[key] = list(value) if isinstance(value, tuple) else value
    if "out" not in cfg:
        raise UniError("--out RUN_DIR is required")
    check_output_path(Path(str(cfg["out"])), "out")  # also when it came from --config
    if not cfg.get("data") and not options.get("resume"):
        raise UniError("--data is required (KIND:ANNOTATIONS[:IMAGES]; repeat for more)")
    run = train(cfg)
    click.echo(f"{run}: done")


@uni.command("inspect-store")
@click.argument("store", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of text.")
@click.option("--verify", is_flag=True,
              help="Read every chunk (checksums) and check the done mask; exit 1 on problems.")
@click.option("--draw", type=int, default=0, help="Overlay N instances' heatmaps on their crops.")
@click.option("--out", type=OutPath(file_okay=False, path_type=Path),
              help="Folder for the --draw PNGs.")
def inspect_store(store: Path, as_json: bool, verify: bool, draw: int, out: Path | None) -> None:
    """Show a soft-label STORE's provenance and size; optionally verify or draw it."""
    from uniskel.app.inspect_store import draw_store, format_store_summary, summary_json
    from uniskel.stores.heatmap_store import open_store

    if draw and out is None:
        raise UniError("--draw needs --out DIR")
    reader = open_store(store)
    summary = reader.summary()
    problems = reader.verify(progress=not as_json) if verify else []
    if as_json:
        if verify:
            summary["problems"] = problems
        click.echo(json.dumps(summary_json(summary)))
    else:
        click.echo(format_store_summary(summary))
        if verify:
            for p in problems:
                click.echo(f"problem      {p}")
            click.echo(f"verify       {len(problems)} problem(s)" if problems else
                       "verify       ok")
    if draw:
        for path in draw_store(reader, draw, out):
            click.echo(f"wrote {path}", err=as_json)
    if problems:
        sys.exit(1)


@uni.command("evaluate")
@click.argument("model", required=False, type=click.Path(path_type=Path))
@click.option("--data", "data", multiple=True, required=True,
              help="KIND:ANNOTATIONS[:IMAGE_ROOT] to evaluate on (`uni skeletons` lists the "
                   "kinds); repeat for more.")
@click.option("--predictions", type=click.Path(dir_okay=False, path_type=Path),
              help="Score this COCO keypoint results file instead of running a MODEL.")
@click.option("--save-predictions", type=OutPath(dir_okay=False, path_type=Path),
              help="Also write MODEL's predictions here (COCO keypoint results JSON).")
@click.option("--boxes", type=click.Path(dir_okay=False, path_type=Path),
              help="COCO detection results JSON: run on these person boxes (rescored, "
                   "OKS-NMS 0.9) instead of the ground-truth ones; AP datasets only.")
@click.option("--box-threshold", type=float, default=0.0, show_default=True,
              help="With --boxes: drop boxes scoring lower (MMPose's det_bbox_thr).")
@click.option("--head-boxes", type=click.Path(dir_okay=False, path_type=Path),
              help="MPII head boxes (mpii_gt_val.mat) for PCKh.")
@click.option("--flip-test/--no-flip-test", default=True, show_default=True,
              help="Average each crop's heatmaps with its mirror's (off: half the compute).")
@click.option("--batch-size", type=int, default=32, show_default=True)
@click.option("--device", default="auto", show_default=True,
              help="auto | cpu | cuda | cuda:N: where MODEL runs (cuda without one: an error).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of a table.")
def evaluate_cmd(model: Path | None, data: tuple[str, ...], predictions: Path | None,
                 save_predictions: Path | None, boxes: Path | None, box_threshold: float,
                 head_boxes: Path | None, flip_test: bool, batch_size: int, device: str,
                 as_json: bool) -> None:
    """Score MODEL (run dir, .pt or described .onnx) by each dataset's metric: AP, PCKh, PCK."""
    from uniskel.evaluation.evaluate import evaluate, format_results

    if save_predictions and predictions:
        raise UniError("--save-predictions needs a MODEL, not --predictions")
    results = evaluate(list(data), model, predictions, flip_test, head_boxes,
                       save_predictions, batch_size, progress=not as_json, device=device,
                       boxes=boxes, box_threshold=box_threshold)
    click.echo(json.dumps(results) if as_json else format_results(results))


@uni.command("report")
@click.argument("runs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--data", "data", multiple=True, required=True,
              help="KIND:ANNOTATIONS[:IMAGE_ROOT]; one table column per dataset.")
@click.option("--out", type=OutPath(file_okay=False, path_type=Path),
              help="Write report.md, report.csv and report.png here.")
@click.option("--names", help="Comma-separated row names, one per RUN.",
              show_default="the model names")
@click.option("--head-boxes", type=click.Path(dir_okay=False, path_type=Path),
              help="MPII head boxes (mpii_gt_val.mat) for PCKh.")
@click.option("--flip-test/--no-flip-test", default=True, show_default=True,
              help="Average each crop's heatmaps with its mirror's (off: half the compute).")
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
@click.argument("run", type=click.Path(path_type=Path))
@click.option("--out", required=True, type=OutPath(dir_okay=False, path_type=Path),
              help="The ONNX file to write (described: usable as a teacher).")
@click.option("--name", help="Model name in its metadata.", show_default="the run's name")
@click.option("--skeleton", help="Keep only this skeleton's channels (e.g. coco17 for a "
              "COCO-only teacher).", show_default="all of the student's unified skeleton")
def export_cmd(run: Path, out: Path, name: str | None, skeleton: str | None) -> None:
    """Export a student to ONNX (dynamic batch), checked against PyTorch, teacher-described."""
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
@click.option("--score-threshold", type=float, default=0.3, show_default=True,
              help="Drop boxes scoring lower.")
@click.option("--keypoint-threshold", type=float, default=0.3, show_default=True,
              help="Draw keypoints scoring higher.")
@click.option("--flip-test/--no-flip-test", default=True, show_default=True,
              help="Average each crop's heatmaps with its mirror's (off: half the compute).")
@click.option("--device", default="auto", show_default=True,
              help="auto | cpu | cuda | cuda:N: where MODEL runs (cuda without one: an error).")
def predict_cmd(model: Path, images: tuple[Path, ...], out: Path, boxes: Path | None,
                score_threshold: float, keypoint_threshold: float, flip_test: bool,
                device: str) -> None:
    """Draw MODEL's 21 keypoints on IMAGEs → OUT/<image>.png and OUT/predictions.json."""
    from uniskel.evaluation.predict import predict_images

    for path in predict_images(model, list(images), out, boxes, score_threshold,
                               keypoint_threshold, flip_test, device=device):
        click.echo(f"wrote {path}")


@uni.command("demo")
@click.option("--out", default="demo_out", show_default=True,
              type=OutPath(file_okay=False, path_type=Path))
@click.option("--quick", is_flag=True, help="About 3 minutes on 2 cores: smaller crops, and the "
              "single-dataset students serve as the teachers.")
@click.option("--seed", default=0, show_default=True)
def demo_cmd(out: Path, quick: bool, seed: int) -> None:
    """The whole method on synthetic data: teachers, caches, four students, the paper's table."""
    from uniskel.app.demo import run_demo

    run_demo(out, quick, seed)


def main() -> None:
    uni()


if __name__ == "__main__":
    main()
