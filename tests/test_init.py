"""Starting weights (student/init.py): MMPose checkpoints, distillation and backbone-only files,
uni runs and plain state dicts load with keypoint rows mapped by name; misfits are one line
and leave the model untouched."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from uniskel.core.errors import UniError
from uniskel.core.skeletons import SKELETONS, UNIFIED, known_unified
from uniskel.student.init import init_weights
from uniskel.student.models import build_model
from uniskel.student.rtmpose import PER_KEYPOINT_KEYS, build_rtmpose

WH = (96, 128)  # (w, h): RTMPose needs multiples of 32
COCO = SKELETONS["coco17"]


def _coco_rtmpose(arch: str = "rtmpose-t", wh: tuple[int, int] = WH, seed: int = 0):
    """An RTMPose for coco17 whose head rows differ clearly (fresh ones are near zero)."""
    torch.manual_seed(seed)
    model = build_rtmpose(arch, 17, wh)
    with torch.no_grad():
        model.head.final_layer.weight.normal_(0, 0.02)
        model.head.final_layer.bias.normal_(0, 0.5)
    return model.eval()


def _mmpose_file(path: Path, state: dict, prefix: str = "", names: bool = True) -> Path:
    """An MMPose/MMEngine-style checkpoint: meta with numpy arrays, prefixed state_dict."""
    meta = {"dataset_meta": {
        "dataset_name": "coco", "num_keypoints": 17,
        "sigmas": np.array(COCO.sigmas, np.float32), "flip_indices": list(COCO.flip_index),
        "upper_body_ids": np.arange(11), "weight": np.float64(1.5),
        **({"keypoint_id2name": dict(enumerate(COCO.keypoints))} if names else {})}}
    torch.save({"meta": meta, "state_dict": {prefix + k: v for k, v in state.items()}}, path)
    return path


def _snapshot(model: torch.nn.Module) -> dict:
    return {k: v.clone() for k, v in model.state_dict().items()}


def _unchanged(model: torch.nn.Module, before: dict) -> None:
    after = model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items())


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def coco_t():
    return _coco_rtmpose()


def test_mmpose_checkpoint_keeps_the_17_predictions(tmp_path, coco_t):
    path = _mmpose_file(tmp_path / "rtmpose-t_coco.pth", coco_t.state_dict())
    model = build_rtmpose("rtmpose-t", UNIFIED.num_keypoints, WH)
    line = init_weights(path, model, "rtmpose-t", UNIFIED)
    assert "\n" not in line and "17 of 21 keypoint rows mapped by name from coco17" in line
    assert "4 fresh (zero)" in line
    idx = list(COCO.to(UNIFIED))
    fresh = [u for u in range(UNIFIED.num_keypoints) if u not in idx]
    for key in PER_KEYPOINT_KEYS:
        assert not model.state_dict()[key][fresh].any()  # zero tokens: v = 0 in the GAU
    x = torch.randn(2, 3, WH[1], WH[0], generator=torch.Generator().manual_seed(1))
    model.eval()
    with torch.no_grad():
        (sx, sy), (ux, uy) = coco_t(x), model(x)
    assert sx.abs().max() > 1e-3  # a real signal, not all-zero logits
    torch.testing.assert_close(ux[:, idx], sx, atol=1e-5, rtol=0)
    torch.testing.assert_close(uy[:, idx], sy, atol=1e-5, rtol=0)


def test_numpy1_checkpoint_and_name_order(tmp_path, coco_t):
    """Files written under numpy 1 name numpy.core.multiarray; a permuted keypoint order in
    meta maps rows by name, not by position."""
    perm = np.random.default_rng(0).permutation(17)
    state = dict(coco_t.state_dict())
    for key in PER_KEYPOINT_KEYS:
        state[key] = state[key][perm]
    new = _mmpose_file(tmp_path / "new.pth", state)
    ckpt = torch.load(new, weights_only=False)
    ckpt["meta"]["dataset_meta"]["keypoint_id2name"] = {i: COCO.keypoints[p]
                                                        for i, p in enumerate(perm)}
    torch.save(ckpt, new)
    old = tmp_path / "old.pth"
    with zipfile.ZipFile(new) as src, zipfile.ZipFile(old, "w") as dst:
        for name in src.namelist():
            data = src.read(name)
            if name.endswith("data.pkl"):
                assert b"numpy._core.multiarray" in data
                data = data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
            dst.writestr(name, data)
    model = build_rtmpose("rtmpose-t", 17, WH)
    line = init_weights(old, model, "rtmpose-t", known_unified()["unified21"])
    assert "from checkpoint" in line  # the metadata's order, not coco17's
    sub = list(COCO.to(UNIFIED))
    w = model.state_dict()["head.final_layer.weight"]
    torch.testing.assert_close(w[sub], coco_t.head.final_layer.weight, atol=0, rtol=0)


def test_distillation_prefix_and_count(tmp_path, coco_t):
    """'student.' keys load, 'teacher.' ones are ignored; no names: 17 rows mean coco17."""
    path = _mmpose_file(tmp_path / "dist.pth", coco_t.state_dict(), "student.", names=False)
    ckpt = torch.load(path, weights_only=False)
    ckpt["state_dict"]["teacher.backbone.stem.0.conv.weight"] = torch.zeros(3)
    ckpt["meta"] = {}
    torch.save(ckpt, path)
    model = build_rtmpose("rtmpose-t", 21, WH)
    line = init_weights(path, model, "rtmpose-t", UNIFIED)
    assert "student." in line and "from coco17" in line and "teacher.backbone.* (1)" in line
    torch.testing.assert_close(model.backbone.stem[0].conv.weight,
                               coco_t.backbone.stem[0].conv.weight)


def test_backbone_only(tmp_path, coco_t):
    """An ImageNet CSPNeXt: backbone keys load, the classifier is ignored, the head stays."""
    state = {k: v for k, v in coco_t.state_dict().items() if k.startswith("backbone.")}
    state |= {"head.fc.weight": torch.zeros(1000, 384), "head.fc.bias": torch.zeros(1000)}
    path = tmp_path / "cspnext-tiny_imagenet.pth"
    torch.save({"state_dict": state, "meta": {"epoch": 600}}, path)
    model = build_rtmpose("rtmpose-t", 21, WH)
    head = {k: v.clone() for k, v in model.head.state_dict().items()}
    line = init_weights(path, model, "rtmpose-t", UNIFIED)
    assert "backbone only" in line and "head fresh" in line and "head.fc.* (2)" in line
    assert all(torch.equal(model.head.state_dict()[k], v) for k, v in head.items())
    for k, v in state.items():
        if k.startswith("backbone."):
            assert torch.equal(model.state_dict()[k], v)


def test_uni_run_and_plain_state_dict(tmp_path):
    """A unified21 tiny run into a unified27 tiny: 21 rows by name, 6 keep their init."""
    torch.manual_seed(0)
    src = build_model("tiny", 21)
    run = tmp_path / "run"
    run.mkdir()
    torch.save({"model": src.state_dict(), "config": {"model": "tiny"},
                "unified": UNIFIED.to_json()}, run / "best.pt")
    u27 = known_unified()["unified27"]
    model = build_model("tiny", 27)
    fresh_before = model.head.weight[21:].clone()
    line = init_weights(run, model, "tiny", u27)
    assert "uni run" in line and "21 of 27 keypoint rows mapped by name from unified21" in line
    assert torch.equal(model.head.weight[:21], src.head.weight)
    assert torch.equal(model.head.weight[21:], fresh_before)
    plain = tmp_path / "plain.pt"
    torch.save(src.state_dict(), plain)
    model = build_model("tiny", 21)
    assert "from unified21" in init_weights(plain, model, "tiny", UNIFIED)  # by count
    assert torch.equal(model.stem[0][0].weight, src.stem[0][0].weight)


def test_ambiguous_count_needs_the_skeleton(tmp_path):
    torch.manual_seed(0)
    plain = tmp_path / "aic.pt"
    torch.save(build_model("tiny", 14).state_dict(), plain)
    model = build_model("tiny", 21)
    before = _snapshot(model)
    with pytest.raises(UniError, match="--init-skeleton") as e:
        init_weights(plain, model, "tiny", UNIFIED)
    assert "aic14" in str(e.value) and "crowdpose14" in str(e.value)
    _unchanged(model, before)
    assert "from aic14" in init_weights(plain, model, "tiny", UNIFIED, "aic14")
    with pytest.raises(UniError, match="mpii16"):
        init_weights(plain, model, "tiny", UNIFIED, "mpii16")


class _Thing:
    """Not a weight: unpickling it would import and build this class."""


def _bad_files(tmp_path: Path, coco_t) -> list[tuple[Path, str, str]]:
    """(file, model name to load into, fragment of the error) for each kind of misfit."""
    out = []
    (tmp_path / "random.pth").write_bytes(np.random.default_rng(0).bytes(4096))
    out.append((tmp_path / "random.pth", "rtmpose-t", "not a readable checkpoint"))
    (tmp_path / "cfg.json").write_text(json.dumps({"state_dict": {}}))
    out.append((tmp_path / "cfg.json", "rtmpose-t", "not a readable checkpoint"))
    torch.save({"state_dict": coco_t.state_dict(), "meta": {"x": _Thing()}},
               tmp_path / "code.pth")
    out.append((tmp_path / "code.pth", "rtmpose-t", "_Thing); uni loads weights only"))
    torch.save(build_model("tiny", 17).state_dict(), tmp_path / "tiny.pt")
    out.append((tmp_path / "tiny.pt", "rtmpose-t", "uni 'tiny' heatmap net"))
    out.append((tmp_path / "tiny.pt", "small", "stem.0.0.weight"))  # heatmap nets' widths
    s_state = _coco_rtmpose("rtmpose-s").state_dict()
    _mmpose_file(tmp_path / "s.pth", s_state)
    out.append((tmp_path / "s.pth", "rtmpose-t", "rtmpose-s (17 keypoints, input 128x96 HxW)"))
    out.append((tmp_path / "s.pth", "tiny", "rtmpose-s"))
    torch.save({"state_dict": {k: v for k, v in s_state.items() if k.startswith("backbone.")}},
               tmp_path / "s_backbone.pth")
    out.append((tmp_path / "s_backbone.pth", "rtmpose-t", "backbone.stem.0.conv.weight is "
                "(16, 3, 3, 3) in the checkpoint, (12, 3, 3, 3) in the model"))
    _mmpose_file(tmp_path / "big.pth", _coco_rtmpose(wh=(128, 160)).state_dict())
    out.append((tmp_path / "big.pth", "rtmpose-t",
                "input size is 160x128 (HxW), the model's 128x96"))
    out.append((tmp_path / "missing.pth", "rtmpose-t", "checkpoint not found"))
    return out


def test_bad_files_are_one_line_and_change_nothing(tmp_path, coco_t):
    models = {"rtmpose-t": build_rtmpose("rtmpose-t", 21, WH), "tiny": build_model("tiny", 21),
              "small": build_model("small", 21)}
    before = {n: _snapshot(m) for n, m in models.items()}
    for path, name, fragment in _bad_files(tmp_path, coco_t):
        with pytest.raises(UniError) as e:
            init_weights(path, models[name], name, UNIFIED)
        msg = str(e.value)
        assert "\n" not in msg and str(path) in msg and fragment in msg, (path.name, name, msg)
        _unchanged(models[name], before[name])
