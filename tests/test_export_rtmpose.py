"""`uni export` of RTMPose: MMPose checkpoints and RTMPose students → SimCC ONNX teachers that
onnxruntime and pipeline.teachers.Teacher run like PyTorch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import one_line_error

from uniskel.cli import uni
from uniskel.core.crops import normalize
from uniskel.core.errors import UniError
from uniskel.core.skeletons import SKELETONS, UNIFIED
from uniskel.evaluation.export import export_onnx
from uniskel.pipeline.teachers import Teacher
from uniskel.student.rtmpose import build_rtmpose

WH = (96, 128)  # (w, h)
COCO = SKELETONS["coco17"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _rtmpose(k: int, seed: int = 0):
    """rtmpose-t with clearly distinct keypoint rows (fresh ones sit near zero)."""
    torch.manual_seed(seed)
    model = build_rtmpose("rtmpose-t", k, WH)
    with torch.no_grad():
        model.head.final_layer.weight.normal_(0, 0.02)
        model.head.final_layer.bias.normal_(0, 0.5)
    return model.eval()


@pytest.fixture(scope="module")
def coco_t():
    return _rtmpose(17)


@pytest.fixture(scope="module")
def crops() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (3, WH[1], WH[0], 3), dtype=np.uint8)


def _check(onnx: Path, model, crops: np.ndarray, rows: list[int] | None = None) -> None:
    """The ONNX is a SimCC teacher for coco17 whose outputs equal torch's (rows: channels)."""
    import onnxruntime as ort

    t = Teacher(onnx, providers=["CPUExecutionProvider"])
    info = t.info
    assert (info.head, info.activation, info.simcc_split, info.padding) == (
        "simcc", "softmax", 2.0, 1.25)
    assert (info.skeleton, info.input_wh, info.outputs) == ("coco17", WH, ("simcc_x", "simcc_y"))
    x = normalize(crops, info.mean, info.std, info.bgr)  # (N, 3, H, W) float32
    sess = ort.InferenceSession(str(onnx), providers=["CPUExecutionProvider"])
    got_x, got_y = sess.run(["simcc_x", "simcc_y"], {"image": x})
    with torch.no_grad():
        ref_x, ref_y = (r.numpy() for r in model(torch.from_numpy(x)))
    if rows is not None:
        ref_x, ref_y = ref_x[:, rows], ref_y[:, rows]
    assert got_x.shape == (3, 17, WH[0] * 2) and got_y.shape == (3, 17, WH[1] * 2)
    np.testing.assert_allclose(got_x, ref_x, atol=1e-4, rtol=0)
    np.testing.assert_allclose(got_y, ref_y, atol=1e-4, rtol=0)
    maps = t.predict(crops, flip_test=False)
    assert maps.shape == (3, 17, WH[1] // 4, WH[0] // 4)
    mass = maps.sum((2, 3))  # softmax mass on the grid (bins past its edges fall off)
    assert (maps >= 0).all() and (mass > 0.98).all() and (mass < 1 + 1e-4).all()


def test_mmpose_checkpoint_exports_as_simcc_teacher(tmp_path, coco_t, crops):
    path = tmp_path / "rtmpose-t_coco.pth"
    meta = {"dataset_meta": {"keypoint_id2name": dict(enumerate(COCO.keypoints)),
                             "sigmas": np.array(COCO.sigmas, np.float32)}}
    torch.save({"meta": meta, "state_dict": coco_t.state_dict()}, path)
    out, diff = export_onnx(path, tmp_path / "t.onnx", skeleton="coco17")
    assert diff <= 1e-4
    _check(out, coco_t, crops)


def test_distillation_prefix_and_cli(tmp_path, coco_t, crops):
    path = tmp_path / "distill.pth"
    state = {f"student.{k}": v for k, v in coco_t.state_dict().items()}
    state["teacher.head.cls_x.weight"] = torch.zeros(3, 3)
    torch.save({"state_dict": state}, path)
    result = CliRunner().invoke(uni, ["export", str(path), "--out", str(tmp_path / "d.onnx")])
    assert result.exit_code == 0, result.output
    _check(tmp_path / "d.onnx", coco_t, crops)  # 17 rows, no names: coco17


def test_rtmpose_student_run(tmp_path, crops):
    model = _rtmpose(UNIFIED.num_keypoints, seed=1)
    run = tmp_path / "run"
    run.mkdir()
    torch.save({"model": model.state_dict(), "config": {"model": "rtmpose-t",
                                                       "input_wh": list(WH)},
                "unified": UNIFIED.to_json()}, run / "best.pt")
    out, _ = export_onnx(run, tmp_path / "s.onnx", skeleton="coco17")
    _check(out, model, crops, rows=list(COCO.to(UNIFIED)))


def test_bad_checkpoint_is_one_line_and_writes_nothing(tmp_path, coco_t):
    bad = tmp_path / "bad.pth"
    bad.write_bytes(np.random.default_rng(0).bytes(2048))
    out = tmp_path / "bad.onnx"
    r = CliRunner().invoke(uni, ["export", str(bad), "--out", str(out)])
    one_line_error(r, str(bad), "not a readable checkpoint")
    good = tmp_path / "good.pth"
    torch.save({"state_dict": coco_t.state_dict()}, good)
    with pytest.raises(UniError, match="--skeleton mpii16 says mpii16"):
        export_onnx(good, out, skeleton="mpii16")
    torch.save({"state_dict": {"head.fc.weight": torch.zeros(2, 2)}}, bad)
    with pytest.raises(UniError, match="not an RTMPose checkpoint"):
        export_onnx(bad, out)
    assert not list(tmp_path.glob("*.onnx*"))
