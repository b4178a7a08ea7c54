"""Issue 21 end to end through `uni`: MMPose RTMPose checkpoints (as MMPose publishes them) export
as SimCC teachers reproducing MMPose's outputs; `train-student --model rtmpose-t --init` trains
with heatmap and SimCC teacher stores and resumes exactly; a trained RTMPose student exports,
caches and teaches; bad checkpoints are one line and write nothing."""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import signal
import zipfile
from collections import OrderedDict
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import COCO_SPEC, one_line_error
from mmpose_ref import reference_input, reference_state_dict
from reliability import UNI
from reliability import run as run_uni

from uniskel.cli import uni
from uniskel.core.datasets import load_dataset
from uniskel.core.skeletons import SKELETONS, UNIFIED
from uniskel.evaluation.predict import OnnxPredictor, StudentPredictor, predict_boxes
from uniskel.pipeline.teachers import Teacher
from uniskel.student.init import init_weights
from uniskel.student.models import build_model
from uniskel.student.rtmpose import build_rtmpose

REF = Path(__file__).resolve().parent / "data" / "mmpose_ref"
KEYS = json.loads((REF / "rtmpose_keys.json").read_text())
COCO = SKELETONS["coco17"]
WH = (64, 64)  # (w, h) of the training tests' RTMPose: the smallest multiple of 32 that trains
STEPS = 6  # 2 epochs of 3 steps: 9 of stage_two's 10 people train (batch 4), 1 validates


def _cli(*args) -> object:
    return CliRunner().invoke(uni, [str(a) for a in args])


def _ok(result) -> object:
    assert result.exit_code == 0, (result.output[-2000:], result.stderr[-2000:])
    return result


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# --------------------------------------------------------------------------- MMPose-format files


def _dataset_meta() -> dict:
    """COCO's dataset_meta as mmpose's parse_pose_metainfo gives it (numpy arrays included)."""
    names, flip = list(COCO.keypoints), list(COCO.flip_index)
    links = [(15, 13), (13, 11), (16, 14), (14, 12), (11, 12), (5, 11), (6, 12), (5, 6), (5, 7),
             (6, 8), (7, 9), (8, 10), (1, 2), (0, 1), (0, 2), (1, 3), (2, 4), (3, 5), (4, 6)]
    return {"dataset_name": "coco", "num_keypoints": 17,
            "keypoint_id2name": dict(enumerate(names)),
            "keypoint_name2id": {n: i for i, n in enumerate(names)},
            "upper_body_ids": list(range(11)), "lower_body_ids": list(range(11, 17)),
            "flip_indices": flip, "flip_pairs": [(i, f) for i, f in enumerate(flip) if i != f],
            "keypoint_colors": np.full((17, 3), (51, 153, 255), np.uint8),
            "num_skeleton_links": len(links), "skeleton_links": links,
            "skeleton_link_colors": np.zeros((len(links), 3), np.uint8),
            "dataset_keypoint_weights": np.ones(17, np.float32),
            "sigmas": np.array(COCO.sigmas, np.float32)}


def mmpose_checkpoint(path: Path, state: dict[str, torch.Tensor], arch: str = "rtmpose-t",
                      numpy1: bool = False) -> Path:
    """A .pth as MMPose publishes it (tools/misc/publish_model.py of a Runner checkpoint):
    {'meta': {cfg, seed, …, dataset_meta}, 'state_dict': OrderedDict}, legacy (non-zip)
    torch.save. numpy1: the arrays named as numpy 1.x pickled them (files published in 2023)."""
    sd = OrderedDict(state)
    sd._metadata = OrderedDict()  # as nn.Module.state_dict() returns it
    meta = {"cfg": f"model = dict(type='TopdownPoseEstimator')  # {arch}", "seed": 21,
            "experiment_name": f"{arch}_coco", "time": "20230301_000000",
            "mmengine_version": "0.10.3", "epoch": 420, "iter": 491400,
            "dataset_meta": _dataset_meta()}
    torch.save({"meta": meta, "state_dict": sd}, path, _use_new_zipfile_serialization=False)
    if numpy1:  # numpy 2 names the array rebuilder numpy._core.multiarray; the rest is alike
        data = path.read_bytes()
        new_name = b"cnumpy._core.multiarray\n_reconstruct\n"
        assert new_name in data
        path.write_bytes(data.replace(new_name, b"cnumpy.core.multiarray\n_reconstruct\n"))
    return path


def _ref_state(name: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """tests/mmpose_ref.py's weights for a model of rtmpose_keys.json (256x192, K=17)."""
    return reference_state_dict([(k, tuple(s)) for k, s in KEYS[name]["keys"]], seed=seed)


def _small_state(arch: str, k: int = 17, wh: tuple[int, int] = WH, seed: int = 0
                 ) -> dict[str, torch.Tensor]:
    """The same recipe's weights for `arch` at another size (MMPose's key order)."""
    shapes = [(key, tuple(v.shape)) for key, v in build_rtmpose(arch, k, wh).state_dict().items()]
    return reference_state_dict(shapes, seed=seed)


def _distiller(path: Path) -> Path:
    """A DWPose distiller's checkpoint (mmpose/models/distillers/dwpose_distiller.py):
    teacher.* (rtmpose-m), student.* (rtmpose-t), distill_losses.* (FeaLoss' 1x1 align)."""
    state = {f"teacher.{k}": v for k, v in _ref_state("rtmpose-m", seed=2).items()}
    state |= {f"student.{k}": v for k, v in _ref_state("rtmpose-t").items()}
    state["distill_losses.loss_fea.align.weight"] = torch.zeros(768, 384, 1, 1)
    state["distill_losses.loss_fea.align.bias"] = torch.zeros(768)
    return mmpose_checkpoint(path, state)


# --------------------------------------------------------------------------- 1. export


@pytest.mark.parametrize("name", ["rtmpose-t", "rtmpose-s", "rtmpose-m", "student"])
def test_mmpose_checkpoint_exports_to_mmposes_outputs(tmp_path, name):
    """`uni export CKPT --skeleton coco17 --out m.onnx`, no other flag: onnxruntime on the file
    gives the simcc_x / simcc_y MMPose itself computed; the file is a SimCC teacher."""
    import onnxruntime as ort

    arch = "rtmpose-t" if name == "student" else name
    ckpt = (_distiller(tmp_path / "dwpose.pth") if name == "student"
            else mmpose_checkpoint(tmp_path / f"{name}.pth", _ref_state(name), name))
    assert not zipfile.is_zipfile(ckpt)  # the legacy serialisation, as published
    out = tmp_path / "m.onnx"
    _ok(_cli("export", ckpt, "--skeleton", "coco17", "--out", out))
    wh = tuple(KEYS[arch]["input_wh"])
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    simcc_x, simcc_y = sess.run(["simcc_x", "simcc_y"],
                                {"image": reference_input(wh, seed=1).numpy()})
    with np.load(REF / "outputs.npz") as ref:
        np.testing.assert_allclose(simcc_x, ref[f"{arch}/simcc_x"], rtol=0, atol=1e-4)
        np.testing.assert_allclose(simcc_y, ref[f"{arch}/simcc_y"], rtol=0, atol=1e-4)
    info = Teacher(out, providers=["CPUExecutionProvider"]).info
    assert (info.head, info.skeleton, info.input_wh, info.outputs) == (
        "simcc", "coco17", wh, ("simcc_x", "simcc_y"))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([ckpt.name, "m.onnx"])


# --------------------------------------------------------------------------- 2. train-student


@pytest.fixture(scope="module")
def rtm(stage_two, tmp_path_factory) -> SimpleNamespace:
    """A COCO-17 rtmpose-t checkpoint at 64x64 in MMPose's format (numpy 1 names), its export
    (a SimCC teacher 'rtm_t', ONNX), and a store folder: stage_two's heatmap teacher 't' +
    rtm_t cached by `uni cache-teachers` over the same 10 people."""
    spec, _, hm_stores = stage_two
    tmp = tmp_path_factory.mktemp("rtm")
    ckpt = mmpose_checkpoint(tmp / "rtm_t.pth", _small_state("rtmpose-t"), numpy1=True)
    onnx = tmp / "rtm_t.onnx"
    _ok(_cli("export", ckpt, "--skeleton", "coco17", "--out", onnx))
    stores = tmp / "stores"
    stores.mkdir()
    for f in hm_stores.glob("*.h5"):
        shutil.copy(f, stores / f.name)
    _ok(_cli("cache-teachers", "--data", spec, "--teacher", onnx, "--out", stores,
             "--workers", "1", "--batch-size", "4", "--threads", "1"))
    return SimpleNamespace(spec=spec, ckpt=ckpt, onnx=onnx, stores=stores, tmp=tmp)


def _train_args(rtm: SimpleNamespace, out: Path, config: Path) -> list[str]:
    return ["train-student", "--data", rtm.spec, "--stores", str(rtm.stores), "--out", str(out),
            "--model", "rtmpose-t", "--init", str(rtm.ckpt), "--input-size", "64x64",
            "--epochs", "2", "--batch-size", "4", "--workers", "0", "--config", str(config)]


def _toml(path: Path, saves: str = "") -> Path:
    # EMA on (rtmpose-t's recipe has it off): its state must resume exactly too.
    path.write_text("val-fraction = 0.1\nlog-every = 1\nthreads = 1\nema = true\n"
                    f"save-every-s = 0\n{saves}")
    return path


@pytest.fixture(scope="module")
def rtm_run(rtm) -> SimpleNamespace:
    """An uninterrupted 6-step rtmpose-t run (RTMPose recipe: EMA, AdamW groups, rtmpose
    augmentation) from the COCO checkpoint, with KD from both teachers."""
    run = rtm.tmp / "rtm_student"
    res = _ok(CliRunner().invoke(uni, _train_args(rtm, run, _toml(rtm.tmp / "c.toml"))))
    return SimpleNamespace(dir=run, stderr=res.stderr)


def test_rtmpose_t_trains_from_a_coco_checkpoint_with_both_teachers(rtm_run):
    said = [ln for ln in rtm_run.stderr.splitlines() if ln.startswith("uni: --init")]
    assert len(said) == 1 and "17 of 21 keypoint rows mapped by name from coco17" in said[0]
    rows = list(csv.DictReader(open(rtm_run.dir / "metrics.csv")))
    assert int(rows[-1]["step"]) == STEPS
    for col in ("gt", "kd/t", "kd/rtm_t"):
        values = [float(r[col]) for r in rows if r[col]]
        assert values and all(math.isfinite(v) and v > 0 for v in values), col
    last = torch.load(rtm_run.dir / "last.pt", weights_only=True)
    assert last["config"]["model"] == "rtmpose-t" and last["ema"] is not None
    assert sorted(last["teachers"]) == ["rtm_t", "t"]


def test_rtmpose_resume_after_sigkill_is_exact(rtm, rtm_run, tmp_path):
    """Killed (SIGKILL) one step past a mid-epoch checkpoint, --resume ends bit for bit where
    the uninterrupted run ends: weights, EMA, optimiser."""
    run = tmp_path / "killed"
    # A checkpoint at step 4, one step into epoch 2 (besides epoch 1's at step 3).
    args = _train_args(rtm, run, _toml(tmp_path / "c.toml", "save-every = 4\n"))
    killed = run_uni([*UNI, *args], tmp_path, "train-step:5")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    at_kill = torch.load(run / "last.pt", weights_only=True)
    assert (at_kill["epoch"], at_kill["step"], at_kill["step_in_epoch"]) == (1, 4, 1)
    # --init applies to a fresh run only: the resume restores its own weights.
    _ok(_cli(*args, "--resume"))
    a, b = (torch.load(r / "last.pt", weights_only=True) for r in (run, rtm_run.dir))
    assert a["step"] == b["step"] == STEPS
    for part in ("model", "ema"):
        flat_a, flat_b = _flatten(a[part]), _flatten(b[part])
        assert flat_a.keys() == flat_b.keys()
        for k, v in flat_b.items():
            assert torch.equal(flat_a[k], v) if isinstance(v, torch.Tensor) else flat_a[k] == v, \
                (part, k)
    for i, state in b["optimizer"]["state"].items():
        for k, v in state.items():
            assert torch.equal(a["optimizer"]["state"][i][k], v), (i, k)


def _flatten(obj, prefix: str = "") -> dict:
    """Nested dicts of tensors → {dotted key: leaf}."""
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            out |= _flatten(v, f"{prefix}{k}.")
        return out
    return {prefix: obj}


def test_coco_init_predicts_the_sources_17_keypoints(rtm):
    """Before training, a unified21 rtmpose-t initialised from the COCO checkpoint (as
    train-student does it) predicts, through the predictor path (crop, SimCC decode, flip
    test, image coordinates), what `uni export` of the checkpoint predicts for the 17 COCO
    keypoints. Real photos: the synthetic people are mirror-symmetric enough that the flip
    test's average ties between mirrored bins."""
    items = [(i.image_path, i.bbox) for i in load_dataset(COCO_SPEC).instances[:4]]
    source = OnnxPredictor(rtm.onnx, device="cpu")
    assert source.known.sum() == 17
    model = build_model("rtmpose-t", UNIFIED.num_keypoints, WH)
    line = init_weights(rtm.ckpt, model, "rtmpose-t", UNIFIED)
    assert "17 of 21 keypoint rows mapped by name from coco17" in line
    student = StudentPredictor(model, "init", WH, device="cpu")
    want = predict_boxes(source, items, progress=False)  # (4, 21, 3)
    got = predict_boxes(student, items, progress=False)
    known = source.known
    assert (want[:, known, 2] > 0).all()
    np.testing.assert_allclose(got[:, known], want[:, known], atol=1e-3, rtol=0)


# --------------------------------------------------------------------------- 3. student → teacher


def test_simcc_student_exports_caches_and_teaches(rtm, rtm_run, stage_two, tmp_path):
    spec = rtm.spec
    onnx = tmp_path / "s.onnx"
    _ok(_cli("export", rtm_run.dir, "--skeleton", "coco17", "--out", onnx))
    info = Teacher(onnx, providers=["CPUExecutionProvider"]).info
    assert (info.name, info.head, info.skeleton, info.input_wh) == (
        "rtm_student", "simcc", "coco17", WH)
    stores = tmp_path / "stores"
    _ok(_cli("cache-teachers", "--data", spec, "--teacher", onnx, "--out", stores,
             "--workers", "1", "--batch-size", "4", "--threads", "1"))
    (tmp_path / "c.toml").write_text("max-steps = 2\nval-fraction = 0.0\nthreads = 1\n")
    run = tmp_path / "tiny"
    _ok(_cli("train-student", "--data", spec, "--stores", stores, "--out", run,
             "--input-size", "64x48", "--epochs", "1", "--batch-size", "4", "--workers", "0",
             "--config", tmp_path / "c.toml"))
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    kd = [float(r["kd/rtm_student"]) for r in rows if r["kd/rtm_student"]]
    assert kd and all(math.isfinite(v) and v > 0 for v in kd)


# --------------------------------------------------------------------------- 4. bad checkpoints


class Payload:
    """Unpickling this would run code: its __reduce__ makes the unpickler call os.system."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _bad(tmp: Path, kind: str, tiny_run: Path) -> tuple[Path, str]:
    """(a misfit checkpoint of `kind`, a fragment of its error line) for an rtmpose-t at 64x64."""
    path = tmp / f"{kind}.pth"
    if kind == "random":
        path.write_bytes(np.random.default_rng(0).bytes(4096))
        return path, "not a readable checkpoint"
    if kind == "json":
        path = tmp / "ckpt.json"
        path.write_text(json.dumps({"meta": {}, "state_dict": {"head.cls_x.weight": [[0.0]]}}))
        return path, "not a readable checkpoint"
    if kind == "code":
        torch.save({"meta": {"x": Payload(tmp / "MARKER")},
                    "state_dict": _small_state("rtmpose-t")}, path)
        return path, "uni loads weights only"
    if kind == "truncated":
        mmpose_checkpoint(path, _small_state("rtmpose-t"))
        path.write_bytes(path.read_bytes()[:50_000])
        return path, "not a readable checkpoint"
    if kind == "rtmpose-s":
        return mmpose_checkpoint(path, _small_state("rtmpose-s"), "rtmpose-s"), "rtmpose-s"
    if kind == "tiny-run":
        return tiny_run, "heatmap net"
    if kind == "input-size":  # rtmpose-t for COCO at 96x96 into a 64x64 student
        return mmpose_checkpoint(path, _small_state("rtmpose-t", wh=(96, 96))), "96x96"
    raise AssertionError(kind)


INIT_KINDS = ["random", "json", "code", "truncated", "rtmpose-s", "tiny-run", "input-size"]


@pytest.mark.parametrize("kind", INIT_KINDS)
def test_bad_init_checkpoint_is_one_line_and_writes_nothing(kind, tmp_path, stage_two,
                                                           tiny_student_run):
    spec = stage_two[0]
    path, fragment = _bad(tmp_path, kind, tiny_student_run)
    run = tmp_path / "run"
    res = _cli("train-student", "--data", spec, "--out", run, "--model", "rtmpose-t",
               "--init", path, "--input-size", "64x64", "--batch-size", "4", "--workers", "0")
    one_line_error(res, str(path), fragment)
    assert not run.exists()
    assert not (tmp_path / "MARKER").exists()  # the pickled payload never ran
    if kind == "code":  # …and it is armed: a full unpickler runs it
        torch.load(path, weights_only=False)
        assert (tmp_path / "MARKER").exists()


def _export_misfit(tmp: Path, kind: str) -> tuple[Path, str]:
    """Checkpoints that only `uni export` meets: no RTMPose, shapes of no input size, a
    --skeleton that contradicts the file."""
    path = tmp / f"{kind}.pth"
    if kind == "tiny-weights":
        torch.save({"state_dict": build_model("tiny", 17).state_dict()}, path)
        return path, "not an RTMPose checkpoint"
    state = _small_state("rtmpose-t")
    # cls_x for a 96-wide input, the MLP for 64x64: no input size fits both
    state["head.cls_x.weight"] = torch.zeros(192, state["head.cls_x.weight"].shape[1])
    return mmpose_checkpoint(path, state), "not an RTMPose checkpoint"


@pytest.mark.parametrize("kind", ["random", "json", "code", "truncated", "tiny-weights",
                                  "input-size", "skeleton"])
def test_bad_export_checkpoint_is_one_line_and_writes_nothing(kind, tmp_path, tiny_student_run):
    skeleton = []
    if kind in ("random", "json", "code", "truncated"):
        path, fragment = _bad(tmp_path, kind, tiny_student_run)
    elif kind == "skeleton":  # 17 keypoints named as COCO's, called MPII's
        path = mmpose_checkpoint(tmp_path / "rtm.pth", _small_state("rtmpose-t"))
        fragment, skeleton = "mpii16", ["--skeleton", "mpii16"]
    else:
        path, fragment = _export_misfit(tmp_path, kind)
    before = sorted(p.name for p in tmp_path.iterdir())
    out = tmp_path / "out" / "m.onnx"
    one_line_error(_cli("export", path, "--out", out, *skeleton), str(path), fragment)
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no ONNX, no temporaries
    assert not (tmp_path / "MARKER").exists()
