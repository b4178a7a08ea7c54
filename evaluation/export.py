"""A trained student → a described ONNX model (`uni export`), usable anywhere a teacher is.

The graph has a dynamic batch axis; its metadata (pipeline.teachers.describe_model) says
the student's unified skeleton (the run's: unified21 by default; its whole definition is
embedded, so a "union" student caches as a teacher with no skeleton file), or a native
skeleton: the graph then outputs only that skeleton's channels, in its order, so a
single-dataset model becomes a teacher that knows only its own keypoints;
heatmap head, the run's input size, the default normalisation (docs/conventions.md "Crop and
heatmap conventions"), activation none. Before the file appears, onnxruntime must reproduce
PyTorch on a random batch.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from uniskel.core.crops import DEFAULT_MEAN, DEFAULT_STD
from uniskel.core.errors import UniError
from uniskel.core.geometry import PADDING
from uniskel.core.skeletons import UNIFIED, Skeleton, get_skeleton
from uniskel.pipeline.teachers import TeacherInfo, describe_model
from uniskel.student.checkpoint import load_student, run_name, student_unified


class _NativeChannels(torch.nn.Module):
    """Unified heatmaps → a native skeleton's channels (each must have a unified counterpart)."""

    def __init__(self, model: torch.nn.Module, index: list[int]):
        super().__init__()
        self.model = model
        self.register_buffer("index", torch.tensor(index, dtype=torch.long))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x).index_select(1, self.index)


TOLERANCE = 1e-4  # max |onnxruntime - torch| on the check batch


def export_model(model: torch.nn.Module, input_wh: tuple[int, int], name: str, out: Path,
                 check_batch: int = 3, seed: int = 0, skeleton: str | None = None,
                 unified: Skeleton = UNIFIED) -> tuple[Path, float]:
    """Export `model` (normalised (N, 3, H, W) → (N, U, H/4, W/4), U = `unified`'s keypoints)
    to `out`, described as `skeleton` (None: `unified` itself).

    Returns (out, max |diff| between onnxruntime and torch on a random batch of check_batch).
    """
    import onnxruntime as ort

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    w, h = int(input_wh[0]), int(input_wh[1])
    model = model.eval().cpu()
    sk = unified if skeleton in (None, unified.name) else get_skeleton(skeleton)
    if sk is not unified:
        index = sk.to(unified)
        if None in index:
            lost = [n for n, i in zip(sk.keypoints, index, strict=True) if i is None]
            raise UniError(f"--skeleton {skeleton}: {', '.join(lost)} have no channel in the "
                           f"student's unified skeleton {unified.name}")
        model = _NativeChannels(model, list(index)).eval()
    raw = out.with_name(out.name + ".export.tmp")
    try:
        with torch.no_grad():
            torch.onnx.export(model, torch.zeros(1, 3, h, w), str(raw), dynamo=False,
                              input_names=["image"], output_names=["heatmaps"], opset_version=17,
                              dynamic_axes={"image": {0: "n"}, "heatmaps": {0: "n"}})
        # A batch size other than the traced one checks that the batch axis is really dynamic.
        x = torch.randn(check_batch, 3, h, w, generator=torch.Generator().manual_seed(seed))
        with torch.no_grad():
            ref = model(x).numpy()
        sess = ort.InferenceSession(str(raw), providers=["CPUExecutionProvider"])
        got = sess.run(["heatmaps"], {"image": x.numpy()})[0]
        if got.shape != ref.shape:
            raise UniError(f"{out}: onnxruntime output shape {got.shape} != torch {ref.shape}")
        diff = float(np.abs(got - ref).max())
        if not diff <= TOLERANCE:
            raise UniError(f"{out}: onnxruntime and torch outputs differ by {diff:.2e} "
                           f"(> {TOLERANCE:g}); not written")
        info = TeacherInfo(name=name, skeleton=sk.name, head="heatmap", input_wh=(w, h),
                           mean=DEFAULT_MEAN, std=DEFAULT_STD, outputs=("heatmaps",),
                           activation="none", padding=PADDING, skeleton_def=sk)
        describe_model(raw, info, out)
    finally:
        if raw.exists():
            os.remove(raw)
    return out, diff


def export_onnx(run: Path, out: Path, name: str | None = None, skeleton: str | None = None
                ) -> tuple[Path, float]:
    """RUN (run directory or .pt) → described ONNX at `out`; see export_model."""
    model, cfg = load_student(run)
    name = name or run_name(run)
    return export_model(model, tuple(cfg["input_wh"]), name, out, skeleton=skeleton,
                        unified=student_unified(run))
