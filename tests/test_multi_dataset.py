"""Training across dataset kinds (issue 15): real samples of six kinds at once with two teachers
of different native skeletons; a skeleton and dataset kind added by a TOML file alone; the
unified skeleton as a choice (unified27 / union) over stores cached once."""

from __future__ import annotations

import csv
import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from analytic_teacher import plain_view, write_analytic_store
from click.testing import CliRunner
from conftest import DATA, one_line_error

from uniskel.cli import uni
from uniskel.core.datasets import load_dataset
from uniskel.core.geometry import apply
from uniskel.core.skeletons import (
    get_skeleton,
    load_skeleton_file,
    unified_skeleton,
)
from uniskel.evaluation.export import export_onnx
from uniskel.pipeline.teachers import read_info
from uniskel.student.checkpoint import load_checkpoint, load_student, student_unified
from uniskel.student.config import TrainConfig
from uniskel.student.data import PoseSamples
from uniskel.student.sources import match_stores
from uniskel.student.train import train

INPUT_WH = (48, 64)

SPECS = {
    "coco": f"coco:{DATA / 'coco/test_coco.json'}",
    "aic": f"aic:{DATA / 'aic/test_aic.json'}",
    "crowdpose": f"crowdpose:{DATA / 'crowdpose/test_crowdpose.json'}",
    "jhmdb": f"jhmdb:{DATA / 'jhmdb/test_jhmdb_sub1.json'}",
    "posetrack18": f"posetrack18:{DATA / 'posetrack18/test_posetrack18_val.json'}"
                   f":{DATA / 'posetrack18'}",
    "mpii": f"mpii:{DATA / 'mpii/test_mpii.json'}",
}
HALPE = f"halpe:{DATA / 'halpe/test_halpe.json'}:{DATA / 'coco/images'}"

# Each COCO-style file's native keypoints → unified names, written out here from samples/README.md
# (not taken from core/skeletons.py, so a wrong mapping there fails).
_COCO = ["nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder",
         "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip",
         "right_hip", "left_knee", "right_knee", "left_ankle", "right_ankle"]
NATIVE_TO_UNIFIED = {
    "coco": _COCO,
    "aic": ["right_shoulder", "right_elbow", "right_wrist", "left_shoulder", "left_elbow",
            "left_wrist", "right_hip", "right_knee", "right_ankle", "left_hip", "left_knee",
            "left_ankle", "head_top", "upper_neck"],
    "crowdpose": ["left_shoulder", "right_shoulder", "left_elbow", "right_elbow", "left_wrist",
                  "right_wrist", "left_hip", "right_hip", "left_knee", "right_knee",
                  "left_ankle", "right_ankle", "head_top", "upper_neck"],
    "jhmdb": ["upper_neck", None, "head_top", "right_shoulder", "left_shoulder", "right_hip",
              "left_hip", "right_elbow", "left_elbow", "right_knee", "left_knee", "right_wrist",
              "left_wrist", "right_ankle", "left_ankle"],
    "posetrack18": ["nose", "upper_neck", "head_top"] + _COCO[3:],
}
FEET = ["left_big_toe", "right_big_toe", "left_small_toe", "right_small_toe", "left_heel",
        "right_heel"]
TEACHERS = {"coco_t": "coco17", "aic_t": "aic14"}


def _annotations(spec: str) -> dict[int, np.ndarray]:
    """{annotation id: (K, 3) keypoints} of a COCO-style file, read with plain json."""
    anns = json.loads(Path(spec.split(":")[1]).read_text())["annotations"]
    return {a["id"]: np.asarray(a["keypoints"], float).reshape(-1, 3) for a in anns}


def _steps_file(folder: Path) -> Path:
    """A config file of what the CLI has no option for: two steps, no held-out data."""
    path = folder / "steps.toml"
    path.write_text("max-steps = 2\nval-fraction = 0.0\nwarmup-steps = 1\nsave-every-s = 0\n"
                    "threads = 1\n")
    return path


def _train_cfg(specs, stores, out) -> TrainConfig:
    return TrainConfig(data=list(specs), stores=[str(s) for s in stores], out=str(out),
                       model="tiny", input_wh=INPUT_WH, epochs=1, batch_size=8, workers=0,
                       val_fraction=0.0, lr=3e-3, warmup_steps=1, max_steps=2, save_every_s=0.0,
                       threads=1)  # one thread: fast on a busy machine


def _finite_losses(run: Path) -> list[dict]:
    with open(run / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert rows
    for row in rows:
        for key, value in row.items():
            if key in ("gt", "total") or key.startswith("kd/"):
                assert math.isfinite(float(value)), (key, value)
    return rows


@pytest.fixture(scope="module")
def six_kinds(tmp_path_factory):
    """The six kinds' samples, and a coco17 and an aic14 teacher cached over every one."""
    out = tmp_path_factory.mktemp("multi_stores")
    sets = {kind: load_dataset(spec) for kind, spec in SPECS.items()}
    for name, skel in TEACHERS.items():
        for kind, ds in sets.items():
            write_analytic_store(out / f"{name}__{kind}.h5", ds, skel, name,
                                 input_wh=INPUT_WH)
    return sets, out


def test_a_student_trains_over_six_kinds_with_a_coco_and_an_aic_teacher(six_kinds, tmp_path):
    sets, stores = six_kinds
    run = train(_train_cfg(SPECS.values(), [stores], tmp_path / "run"), progress=False)
    rows = _finite_losses(run)
    assert {"kd/coco_t", "kd/aic_t"} <= set(rows[0])
    ckpt = load_checkpoint(run / "last.pt")
    assert ckpt["step"] == 2 and ckpt["teachers"] == ["aic_t", "coco_t"]
    assert student_unified(ckpt).name == "unified21"
    model, _ = load_student(run)
    assert model.head.out_channels == 21


def test_masks_follow_each_datasets_mapping(six_kinds):
    """GT weight > 0 exactly where the file labels a keypoint that maps to a unified one (and
    it falls on the grid); each teacher supervises only its own keypoints, on every kind: the
    AIC teacher teaches head top and neck on COCO images, which COCO does not label."""
    sets, stores = six_kinds
    unified = get_skeleton("unified21")
    kinds = list(NATIVE_TO_UNIFIED)
    teachers, _, sources = match_stores([stores], [sets[k] for k in SPECS])
    samples = PoseSamples([sets[k] for k in SPECS], INPUT_WH, teachers, sources, augment=None,
                          unified=unified)
    teacher_known = {name: np.isin(unified.keypoints, NATIVE_TO_UNIFIED[kind])
                     for name, kind in (("coco_t", "coco"), ("aic_t", "aic"))}
    head = [unified.keypoints.index(n) for n in ("head_top", "upper_neck")]
    taught_on_coco = 0
    files = {kind: _annotations(SPECS[kind]) for kind in kinds}
    seen = dict.fromkeys(kinds, 0)
    for index in range(len(samples)):
        d, i = samples.items[index].tolist()
        kind = list(SPECS)[d]
        s = samples[index]
        for j, name in enumerate(teachers):
            kd = s["kd_weights"][j].numpy() > 0
            assert not (kd & ~teacher_known[name]).any(), (kind, name)
            if kind == "coco" and name == "aic_t":
                taught_on_coco += int(kd[head].sum())
        if kind not in kinds:
            continue
        ds = sets[kind]
        ann_id = int(ds.instance_ids[i])
        kp = files[kind][ann_id]
        want = np.zeros(unified.num_keypoints, bool)
        pts = np.zeros((unified.num_keypoints, 2))
        for k, name in enumerate(NATIVE_TO_UNIFIED[kind]):
            if name is not None and kp[k, 2] > 0:
                u = unified.keypoints.index(name)
                want[u], pts[u] = True, kp[k, :2]
        grid = apply(plain_view(ds.bboxes[i], INPUT_WH), pts)
        w, h = INPUT_WH[0] // 4, INPUT_WH[1] // 4
        inside = ((grid >= -0.5) & (grid < np.array([w, h]) - 0.5)).all(-1)
        got = s["gt_weights"].numpy() > 0
        np.testing.assert_array_equal(got, want & inside, err_msg=f"{kind} {ann_id}")
        seen[kind] += int(got.sum())
    assert all(seen.values()), seen
    assert taught_on_coco >= 10


# --------------------------------------------------------------------------- unified27 / union


@pytest.fixture(scope="module")
def feet(tmp_path_factory):
    """COCO + Halpe samples (same images), a coco17 and a halpe26 teacher cached once."""
    out = tmp_path_factory.mktemp("feet_stores")
    specs = [SPECS["coco"], HALPE]
    sets = [load_dataset(s) for s in specs]
    for name, skel in (("coco_t", "coco17"), ("halpe_t", "halpe26")):
        for ds in sets:
            write_analytic_store(out / f"{name}__{ds.kind.name}.h5", ds, skel, name,
                                 input_wh=INPUT_WH)
    return specs, sets, out


def _digests(folder: Path) -> dict[str, tuple[str, int]]:
    return {p.name: (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(folder.glob("*.h5"))}


def test_unified21_and_unified27_runs_share_stores_cached_once(feet, tmp_path):
    """The same stores serve a unified21 run and a 27-keypoint run (`--unified union`: COCO +
    Halpe's union is unified27): nothing is cached again, the heads follow the choice."""
    specs, sets, stores = feet
    before = _digests(stores)
    run21 = train(_train_cfg(specs, [stores], tmp_path / "u21"), progress=False)
    args = ["train-student", "--out", str(tmp_path / "u27"), "--stores", str(stores),
            "--unified", "union", "--input-size", "64x48", "--epochs", "1", "--batch-size", "8",
            "--workers", "0", "--config", str(_steps_file(tmp_path))]
    for spec in specs:
        args += ["--data", spec]
    done = CliRunner().invoke(uni, args)
    assert done.exit_code == 0, done.output
    assert "unified skeleton unified27: 27 keypoints" in done.stderr
    run27 = tmp_path / "u27"
    assert _digests(stores) == before  # no store rewritten, none added
    _finite_losses(run27)
    m21, _ = load_student(run21)
    m27, cfg27 = load_student(run27)
    assert (m21.head.out_channels, m27.head.out_channels) == (21, 27)
    assert cfg27["unified"] == "union"
    u27 = student_unified(run27)
    assert u27 == get_skeleton("unified27") and u27.keypoints[21:] == tuple(FEET)
    assert student_unified(run21) == get_skeleton("unified21")
    x = torch.zeros(2, 3, INPUT_WH[1], INPUT_WH[0])
    assert m27(x).shape == (2, 27, 16, 12)


def test_unified27_supervises_halpe_feet_and_masks_coco_feet(feet):
    """GT: Halpe's labelled feet on, COCO's (unlabelled) off; KD: the Halpe teacher teaches
    feet on COCO images too, the COCO teacher never does."""
    specs, sets, stores = feet
    u27 = unified_skeleton("unified27")
    feet_idx = [u27.keypoints.index(n) for n in FEET]
    teachers, _, sources = match_stores([stores], sets)
    samples = PoseSamples(sets, INPUT_WH, teachers, sources, augment=None, unified=u27)
    halpe = _annotations(HALPE)
    coco_n = len(sets[0].instance_ids)
    supervised = taught = 0
    for index in range(len(samples)):
        s = samples[index]
        gt_w, kd_w = s["gt_weights"].numpy(), s["kd_weights"].numpy()
        assert s["gt_heatmaps"].shape[0] == 27 and kd_w.shape == (2, 27)
        assert (kd_w[teachers.index("coco_t"), feet_idx] == 0).all()
        if index < coco_n:  # COCO labels no feet: no GT loss there
            assert (gt_w[feet_idx] == 0).all()
            taught += int((kd_w[teachers.index("halpe_t"), feet_idx] > 0).sum())
        else:
            kp = halpe[int(sets[1].instance_ids[index - coco_n])]
            labelled = kp[20:26, 2] > 0  # Halpe's native 20–25: the six feet
            assert not (gt_w[feet_idx] > 0)[~labelled].any()
            supervised += int((gt_w[feet_idx] > 0).sum())
    assert supervised >= 20  # the sample labels 35 foot points, most inside their crops
    assert taught >= 20


# --------------------------------------------------------------------------- a kind by TOML alone

MINI_TOML = """\
# A 5-keypoint skeleton and its dataset kind, nothing else: no code change.
[skeletons.mini5]
keypoints = ["nose", "left_hand", "right_hand", "navel", "head_top"]
canonical = { left_hand = "left_wrist", right_hand = "right_wrist" }  # navel: its own name
sigmas = [0.026, 0.062, 0.062, 0.1, 0.08]

[kinds.mini]
reader = "coco"
skeleton = "mini5"
metric = "coco_ap"
"""


def _mini_annotations(path: Path) -> dict[int, np.ndarray]:
    """A COCO-style file of the mini kind over the COCO sample's images: nose and wrists from
    COCO, the navel midway between the hips, head_top 20 px above the nose → {id: (5, 3)}."""
    coco = json.loads((DATA / "coco/test_coco.json").read_text())
    out = {}
    for a in coco["annotations"]:
        kp = np.asarray(a["keypoints"], float).reshape(17, 3)
        hips = kp[11:13]
        navel = ([*hips[:, :2].mean(0), 2] if (hips[:, 2] > 0).all() else [0, 0, 0])
        top = [kp[0, 0], kp[0, 1] - 20, 2] if kp[0, 2] > 0 else [0, 0, 0]
        mini = np.array([kp[0], kp[9], kp[10], navel, top])
        a["keypoints"] = [round(v, 2) for v in mini.ravel().tolist()]
        a["num_keypoints"] = int((mini[:, 2] > 0).sum())
        out[a["id"]] = mini
    coco["categories"][0]["keypoints"] = ["nose", "left_hand", "right_hand", "navel", "head_top"]
    coco["categories"][0]["skeleton"] = []
    path.write_text(json.dumps(coco))
    return out


def test_a_skeleton_and_kind_added_by_toml_alone_trains(tmp_path, skeleton_registry):
    """`skeletons = "mini.toml"` in a config (relative to it) adds the mini5 skeleton and the
    mini kind; `unified = "union"` gives unified21 + navel; the navel is learnt from the mini
    file's GT, and a coco17 teacher cached over the mini data teaches what it knows."""
    exp = tmp_path / "exp"
    exp.mkdir()
    (exp / "mini.toml").write_text(MINI_TOML)
    mini = _mini_annotations(exp / "mini.json")
    mini_spec = f"mini:{exp / 'mini.json'}:{DATA / 'coco/images'}"
    (exp / "run.toml").write_text(
        f'skeletons = "mini.toml"\nunified = "union"\ndata = ["{mini_spec}", '
        f'"{SPECS["crowdpose"]}"]\nmax-steps = 2\nval-fraction = 0.0\nwarmup-steps = 1\n'
        'threads = 1\n')
    run = tmp_path / "run"
    args = ["train-student", "--config", str(exp / "run.toml"), "--out", str(run),
            "--input-size", "64x48", "--batch-size", "8", "--workers", "0"]
    # The kind is unknown until the config's skeleton file is read.
    one_line_error(CliRunner().invoke(uni, args[:1] + ["--data", mini_spec] + args[3:]),
                   "unknown dataset kind 'mini'")
    stores = tmp_path / "stores"
    stores.mkdir()
    load_skeleton_file(exp / "mini.toml")
    ds = load_dataset(mini_spec)
    assert ds.skeleton.name == "mini5" and ds.kind.name == "mini"
    write_analytic_store(stores / "coco_t__mini.h5", ds, "coco17", "coco_t", input_wh=INPUT_WH)
    done = CliRunner().invoke(uni, args + ["--stores", str(stores)])
    assert done.exit_code == 0, done.output
    _finite_losses(run)
    u = student_unified(run)
    assert u.name == "union22" and u.keypoints == get_skeleton("unified21").keypoints + (
        "navel",)
    model, cfg = load_student(run)
    assert model.head.out_channels == 22 and cfg["skeletons"] == [str(exp / "mini.toml")]
    # Masks: the navel has GT exactly where the mini file labels it; CrowdPose never has it.
    teachers, _, sources = match_stores([stores], [ds])
    samples = PoseSamples([ds], INPUT_WH, teachers, sources, augment=None, unified=u)
    navel = 21
    for index in range(len(samples)):
        s = samples[index]
        kp = mini[int(ds.instance_ids[index])]
        if s["gt_weights"][navel] > 0:
            assert kp[3, 2] > 0
        assert s["kd_weights"][0, navel] == 0  # the COCO teacher knows no navel
        assert (s["kd_weights"][0, 17:] == 0).all()
    assert sum(float(samples[i]["gt_weights"][navel] > 0) for i in range(len(samples))) >= 5
    # Exported, the student carries its union skeleton: a teacher usable without the file.
    onnx_path, diff = export_onnx(run, tmp_path / "union.onnx")
    info = read_info(onnx_path)
    assert info.skeleton == "union22" and info.skeleton_def == u and diff < 1e-4
    coco_path, _ = export_onnx(run, tmp_path / "coco.onnx", skeleton="coco17")
    assert read_info(coco_path).skeleton_def == get_skeleton("coco17")
