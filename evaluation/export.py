"""A trained student, or an MMPose RTMPose checkpoint, → a described ONNX model (`uni export`),
usable anywhere a teacher is.

The graph has a dynamic batch axis; its metadata (pipeline.teachers.describe_model) says
the student's unified skeleton (the run's: unified21 by default; its whole definition is
embedded, so a "union" student caches as a teacher with no skeleton file), or a native
skeleton: the graph then outputs only that skeleton's channels, in its order, so a
single-dataset model becomes a teacher that knows only its own keypoints;
heatmap head, the run's input size, the default normalisation (docs/conventions.md "Crop and
heatmap conventions"), activation none. RTMPose models (uni runs with model rtmpose-*, or an
MMPose RTMPose .pth) export as MMDeploy exports them: input "image" (N, 3, H, W) normalised RGB,
outputs "simcc_x" (N, K, W·2) and "simcc_y" (N, K, H·2) logits; described as head simcc,
activation softmax. Before the file appears, onnxruntime must reproduce PyTorch on a random batch.
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
from uniskel.student.init import read_weights, safe_load, source_skeleton_for
from uniskel.student.rtmpose import RTMPose, arch_from_state_dict, build_rtmpose


class _NativeChannels(torch.nn.Module):
    """Unified outputs → a native skeleton's channels (each must have a unified counterpart),
    on every output (heatmaps, or SimCC's x and y)."""

    def __init__(self, model: torch.nn.Module, index: list[int]):
        super().__init__()
        self.model = model
        self.register_buffer("index", torch.tensor(index, dtype=torch.long))

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        y = self.model(x)
        if isinstance(y, tuple):
            return tuple(t.index_select(1, self.index) for t in y)
        return y.index_select(1, self.index)


TOLERANCE = 1e-4  # max |onnxruntime - torch| on the check batch


def export_model(model: torch.nn.Module, input_wh: tuple[int, int], name: str, out: Path,
                 check_batch: int = 3, seed: int = 0, skeleton: str | None = None,
                 unified: Skeleton = UNIFIED) -> tuple[Path, float]:
    """Export `model` to `out`, described as `skeleton` (None: `unified` itself, the skeleton of
    the model's output channels). Heatmap nets: normalised (N, 3, H, W) → (N, U, H/4, W/4);
    RTMPose: → (simcc_x (N, U, W·2), simcc_y (N, U, H·2)).

    Returns (out, max |diff| between onnxruntime and torch on a random batch of check_batch).
    """
    import onnxruntime as ort

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    w, h = int(input_wh[0]), int(input_wh[1])
    simcc = isinstance(model, RTMPose)
    split = model.simcc_split if simcc else 2.0
    names = ["simcc_x", "simcc_y"] if simcc else ["heatmaps"]
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
                              input_names=["image"], output_names=names, opset_version=17,
                              dynamic_axes={n: {0: "n"} for n in ["image", *names]})
        # A batch size other than the traced one checks that the batch axis is really dynamic.
        x = torch.randn(check_batch, 3, h, w, generator=torch.Generator().manual_seed(seed))
        with torch.no_grad():
            ref = model(x)
        refs = [t.numpy() for t in (ref if simcc else (ref,))]
        sess = ort.InferenceSession(str(raw), providers=["CPUExecutionProvider"])
        gots = sess.run(names, {"image": x.numpy()})
        diff = 0.0
        for got, want in zip(gots, refs, strict=True):
            if got.shape != want.shape:
                raise UniError(f"{out}: onnxruntime output shape {got.shape} != torch "
                               f"{want.shape}")
            diff = max(diff, float(np.abs(got - want).max()))
        if not diff <= TOLERANCE:
            raise UniError(f"{out}: onnxruntime and torch outputs differ by {diff:.2e} "
                           f"(> {TOLERANCE:g}); not written")
        # RTMPose takes MMPose's normalisation, which is uni's default (MMDeploy's ONNX too).
        info = TeacherInfo(name=name, skeleton=sk.name, head="simcc" if simcc else "heatmap",
                           input_wh=(w, h), mean=DEFAULT_MEAN, std=DEFAULT_STD,
                           outputs=tuple(names), simcc_split=split,
                           activation="softmax" if simcc else "none", padding=PADDING,
                           skeleton_def=sk)
        describe_model(raw, info, out)
    finally:
        if raw.exists():
            os.remove(raw)
    return out, diff


def _is_run(path: Path) -> bool:
    """A uni run (directory, or a .pt holding 'model' and 'config'), judged by content."""
    if path.is_dir() or not path.exists():
        return True  # load_student names what is missing
    obj = safe_load(path)
    return isinstance(obj, dict) and "model" in obj and "config" in obj


def load_rtmpose_checkpoint(path: Path, skeleton: str | None = None
                            ) -> tuple[RTMPose, Skeleton]:
    """An MMPose RTMPose checkpoint (or plain state dict; 'student.' of a distillation run)
    → (the model in eval mode, its keypoints' skeleton: `skeleton`, else the checkpoint's
    metadata, else the one built-in skeleton with its keypoint count)."""
    w = read_weights(path)
    state = {k: v for k, v in w.state.items() if k.startswith(("backbone.", "head."))}
    try:
        arch, k, wh = arch_from_state_dict(state)
    except UniError as e:
        raise UniError(f"{path}: not an RTMPose checkpoint ({e})") from None
    sk = source_skeleton_for(k, skeleton, w.skeleton, str(path), "--skeleton")
    model = build_rtmpose(arch, k, wh)
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise UniError(f"{path}: the weights do not fit an {arch} with {k} keypoints at "
                       f"{wh[1]}x{wh[0]} (HxW): {str(e).splitlines()[0]}") from None
    return model.eval(), sk


def export_onnx(run_or_ckpt: Path, out: Path, name: str | None = None,
                skeleton: str | None = None) -> tuple[Path, float]:
    """A uni run (directory or .pt) or an MMPose RTMPose checkpoint (.pth, told apart by
    content) → described ONNX at `out`; see export_model. For an MMPose checkpoint `skeleton`
    names its own keypoints (their count must match)."""
    path = Path(run_or_ckpt)
    if _is_run(path):
        model, cfg = load_student(path)
        return export_model(model, tuple(cfg["input_wh"]), name or run_name(path), out,
                            skeleton=skeleton, unified=student_unified(path))
    model, sk = load_rtmpose_checkpoint(path, skeleton)
    return export_model(model, model.input_wh, name or path.stem, out, unified=sk)
