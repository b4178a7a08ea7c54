"""What every benchmark script shares: the machine, the demo's teachers and data, bigger
datasets made by repeating the demo's persons, a MAC counter, timing and markdown helpers.

Scripts import this as ``common`` (they run as ``python bench/NAME.py``, so bench/ is on
sys.path). Every figure the scripts report is a ratio of two things measured side by side in
the same run; absolute times are only context.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
TEACHER_NAMES = ("coco_teacher", "mpii_teacher")  # app.demo.TEACHERS
DEFAULT_WORK = Path(os.environ.get("TMPDIR", "/tmp")) / "uni-bench"


def say(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def add_common_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--work", type=Path, default=DEFAULT_WORK,
                    help=f"scratch folder for data, stores and runs [{DEFAULT_WORK}]")
    ap.add_argument("--demo-dir", type=Path, default=None,
                    help="an existing `uni demo` output (teachers/*.onnx + data/); default: "
                         "./demo_out when it has teachers, else `uni demo --quick` in WORK/demo")


# --------------------------------------------------------------------------- machine


def machine() -> dict[str, str]:
    """CPU, cores, memory, OS, accelerator and library versions."""
    import h5py
    import onnxruntime
    import psutil
    import torch

    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu,
        "cores": f"{os.cpu_count()} logical, {len(os.sched_getaffinity(0))} usable",
        "memory": f"{psutil.virtual_memory().total / 2**30:.1f} GiB",
        "gpu": gpu,
        "os": f"{platform.system()} {platform.release()} ({platform.machine()})",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onnxruntime": (f"{onnxruntime.__version__} "
                        f"({', '.join(onnxruntime.get_available_providers())})"),
        "h5py / HDF5": f"{h5py.version.version} / {h5py.version.hdf5_version}",
    }


def load() -> str:
    """The machine's load average (1, 5, 15 min) against its core count."""
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} / {five:.2f} / {fifteen:.2f} on {os.cpu_count()} cores"


# --------------------------------------------------------------------------- demo


def _has_teachers(d: Path) -> bool:
    return all((d / "teachers" / f"{n}.onnx").is_file() for n in TEACHER_NAMES) and (
        d / "data" / "coco" / "train.json").is_file()


def demo_dir(args: argparse.Namespace) -> Path:
    """The demo output to take teachers and data from; runs the quick demo when there is none."""
    if args.demo_dir is not None:
        if not _has_teachers(args.demo_dir):
            sys.exit(f"--demo-dir {args.demo_dir}: no teachers/{{{','.join(TEACHER_NAMES)}}}"
                     ".onnx and data/")
        return args.demo_dir
    if _has_teachers(REPO / "demo_out"):
        return REPO / "demo_out"
    out = args.work / "demo"
    if not _has_teachers(out):
        from uniskel.app.demo import run_demo

        say(f"no demo output given: running the quick demo in {out}")
        run_demo(out, quick=True)
    return out


SAMPLES = REPO / "samples"


def blazepose(work: Path) -> tuple[Path, list[str]] | None:
    """The real pretrained teacher (samples/models: MediaPipe BlazePose-full, 33 keypoints,
    sigmoid heatmaps 64×64), described as the README shows, and the real sample datasets it can
    run on; None when the model file is not there."""
    src = SAMPLES / "models" / "blazepose_full_256.onnx"
    specs = [f"coco:{SAMPLES / 'coco/test_coco.json'}",
             f"mpii:{SAMPLES / 'mpii/test_mpii.json'}"]
    if not src.is_file():
        return None
    dst = work / "blazepose-full.onnx"
    if not dst.is_file():
        from uniskel.pipeline.teachers import TeacherInfo, describe_model

        info = TeacherInfo(name="blazepose-full", skeleton="blazepose33", head="heatmap",
                           input_wh=(256, 256), mean=(0.0, 0.0, 0.0), std=(255.0, 255.0, 255.0),
                           outputs=("Identity_3",), num_keypoints=33, activation="sigmoid")
        describe_model(src, info, dst)
    return dst, specs


def teachers(demo: Path) -> list[Path]:
    return [demo / "teachers" / f"{n}.onnx" for n in TEACHER_NAMES]


def spec(demo: Path, kind: str, split: str) -> str:
    return f"{kind}:{demo / 'data' / kind / f'{split}.json'}"


def repeat_dataset(demo: Path, kind: str, n: int, out: Path) -> str:
    """A `kind` ('coco' | 'mpii') training set of exactly n persons, cycling the demo's train
    persons with fresh instance ids; each copy of an image is a hard link (a copy across file
    systems) under its own name, so every copy is decoded like a distinct image (readers refuse
    symlinks leaving the image root). Returns its data spec."""
    out = Path(out)
    ann = out / "train.json"
    if ann.is_file():
        return f"{kind}:{ann}"
    src = demo / "data" / kind
    images = out / "images"
    images.mkdir(parents=True, exist_ok=True)
    raw = json.loads((src / "train.json").read_text())

    def link(name: str, copy: int) -> str:
        new = f"r{copy}_{name}"
        dst = images / new
        if not dst.exists():
            try:
                os.link(src / "images" / name, dst)
            except OSError:
                shutil.copyfile(src / "images" / name, dst)
        return new

    if kind == "coco":
        by_image = {im["id"]: im for im in raw["images"]}
        anns = raw["annotations"]
        new_images, new_anns = {}, []
        for j in range(n):
            a, copy = anns[j % len(anns)], j // len(anns)
            im = by_image[a["image_id"]]
            new_id = copy * 10**7 + im["id"]
            if new_id not in new_images:
                new_images[new_id] = {**im, "id": new_id, "file_name": link(im["file_name"], copy)}
            new_anns.append({**a, "id": j + 1, "image_id": new_id})
        data = {**raw, "images": list(new_images.values()), "annotations": new_anns}
    elif kind == "mpii":
        data = [{**raw[j % len(raw)], "image": link(raw[j % len(raw)]["image"], j // len(raw))}
                for j in range(n)]
    else:
        raise ValueError(kind)
    tmp = ann.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    tmp.replace(ann)
    return f"{kind}:{ann}"


# --------------------------------------------------------------------------- FLOPs


def torch_macs(model, input_wh: tuple[int, int]) -> int:
    """Multiply-accumulates of one (1, 3, H, W) forward pass: conv and linear layers only."""
    import torch

    total = 0

    def conv(m, _inp, out) -> None:
        nonlocal total
        kh, kw = m.kernel_size
        total += out.numel() * (m.in_channels // m.groups) * kh * kw

    def linear(m, _inp, out) -> None:
        nonlocal total
        total += out.numel() * m.in_features

    hooks = [m.register_forward_hook(conv if isinstance(m, torch.nn.Conv2d) else linear)
             for m in model.modules() if isinstance(m, torch.nn.Conv2d | torch.nn.Linear)]
    w, h = input_wh
    with torch.no_grad():
        model.eval()(torch.zeros(1, 3, h, w))
    for hook in hooks:
        hook.remove()
    return total


def onnx_macs(path: Path) -> int:
    """Multiply-accumulates of one image through an ONNX model: Conv, Gemm and MatMul nodes,
    shapes from ONNX shape inference with the batch fixed to 1."""
    import onnx

    model = onnx.load(str(path))
    for v in model.graph.input:
        d = v.type.tensor_type.shape.dim
        if d and not d[0].HasField("dim_value"):
            d[0].dim_value = 1
    model = onnx.shape_inference.infer_shapes(model, data_prop=True)  # Resize sizes
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in (*model.graph.value_info, *model.graph.output, *model.graph.input)}
    shapes.update({t.name: list(t.dims) for t in model.graph.initializer})
    total = 0
    for node in model.graph.node:
        out = shapes.get(node.output[0], [])
        if node.op_type in ("Conv", "Gemm", "MatMul") and (not out or 0 in out):
            raise RuntimeError(f"{path}: shape of {node.output[0]} unknown, MACs undercounted")
        if node.op_type == "Conv":
            w = shapes[node.input[1]]  # (Cout, Cin/groups, kh, kw)
            total += int(np.prod(shapes[node.output[0]])) * int(np.prod(w[1:]))
        elif node.op_type in ("Gemm", "MatMul"):
            a = shapes[node.input[0]]
            total += int(np.prod(shapes[node.output[0]])) * a[-1]
    return total


# --------------------------------------------------------------------------- helpers


class Timer:
    """Accumulates seconds per named part: ``with timer("decode"): ...``."""

    def __init__(self):
        self.seconds: dict[str, float] = {}
        self._name = ""

    def __call__(self, name: str) -> Timer:
        self._name = name
        return self

    def __enter__(self) -> None:
        self._t = time.perf_counter()

    def __exit__(self, *exc) -> None:
        self.seconds[self._name] = self.seconds.get(self._name, 0.0) + (
            time.perf_counter() - self._t)


def table(headers: list[str], rows: list[list]) -> str:
    """A markdown table; floats keep the formatting the caller gave them (pass strings)."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def verdict(ok: bool) -> str:
    return "met" if ok else "**missed**"


def main(run, ap: argparse.ArgumentParser) -> None:
    """Standalone entry of a group script: parse, run, print its markdown section."""
    add_common_args(ap)
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    print(run(args))
