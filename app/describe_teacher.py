"""`uni describe-teacher`: the command's options → a TeacherInfo stamped into an ONNX model."""

from __future__ import annotations

from pathlib import Path

from uniskel.core.crops import DEFAULT_MEAN, DEFAULT_STD
from uniskel.core.errors import UniError
from uniskel.core.sizes import parse_input_size
from uniskel.pipeline.teachers import TeacherInfo, describe_model, model_input_wh, read_info


def describe_teacher(model: Path, skeleton: str, head: str, name: str | None = None,
                     mean: str | None = None, std: str | None = None, bgr: bool = False,
                     input_size: str | None = None, simcc_split: float = 2.0,
                     outputs: tuple[str, ...] = (), keypoint_channels: int = 0,
                     activation: str | None = None, padding: float = 1.25,
                     out: Path | None = None, in_place: bool = False) -> tuple[Path, TeacherInfo]:
    """Describe MODEL into a copy (out, else MODEL.described.onnx beside it) or, in_place, into
    MODEL itself; → (the file written, its description as read back). Options as the CLI's."""
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
    return dst, read_info(dst)


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
