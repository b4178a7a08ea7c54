"""Shared fixtures: the real sample data in samples/, one small synthetic dataset, tiny ONNX
teachers and students, and the stores the reliability tests damage copies of; the one-line
error assertion."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "samples"  # real sample annotations + images (samples/README.md)
MODELS = DATA / "models"  # a real pretrained teacher (samples/models/README.md)


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """torch on one thread for a module (`pytestmark = pytest.mark.usefixtures(...)`): small
    convolutions on a busy 2-core box spin-wait up to 10× slower on two OpenMP threads."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# The README's describe-teacher line for BlazePose: everything model-specific is in these options.
BLAZEPOSE_DESCRIBE = ["--skeleton", "blazepose33", "--head", "heatmap", "--output", "Identity_3",
                      "--keypoint-channels", "33", "--activation", "sigmoid", "--mean", "0,0,0",
                      "--std", "255,255,255", "--name", "blazepose-full"]


@pytest.fixture(scope="session")
def blazepose(tmp_path_factory) -> Path:
    """MediaPipe's BlazePose (samples/models) described as a teacher, as the README does it:
    into a folder that does not exist yet (describe-teacher creates it)."""
    from click.testing import CliRunner

    from uniskel.cli import uni

    out = tmp_path_factory.mktemp("blazepose") / "models" / "blazepose.onnx"
    model = DATA / "models/blazepose_full_256.onnx"
    result = CliRunner().invoke(uni, ["describe-teacher", str(model), *BLAZEPOSE_DESCRIBE,
                                      "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out


def one_line_error(result, *fragments: str) -> str:
    """A CliRunner result or a finished subprocess: exit 2, one 'uni: error:' line on stderr
    holding every fragment (progress bars aside), no traceback. Returns the line."""
    code = getattr(result, "exit_code", None)
    code = result.returncode if code is None else code
    err = result.stderr
    # tqdm redraws with carriage returns; its bars are not error lines.
    lines = [ln for ln in err.replace("\r", "\n").splitlines() if ln.strip() and "%|" not in ln]
    assert code == 2, (code, result.stdout[-2000:], err[-2000:])
    assert len(lines) == 1 and lines[0].startswith("uni: error:"), err[-2000:]
    assert "Traceback" not in result.stdout + err
    for f in fragments:
        assert f in lines[0], (f, lines[0])
    return lines[0]


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """Real sample annotations and images (read-only; copy before changing)."""
    return DATA


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory) -> Path:
    """A small synthetic dataset (60 persons per dataset, seed 0, `--same-domain`), generated once
    per session.

    Layout: coco/{train,val}.json, mpii/{train,val}.json, halpe/val.json, <kind>/images/.
    Read-only for tests: copy before changing.
    """
    from uniskel.app.synth import generate

    out = tmp_path_factory.mktemp("synth")
    generate(out, persons=60, seed=0, progress=False, same_domain=True)
    return out


# --------------------------------------------------------------------------- tiny ONNX teachers

COCO_SPEC = f"coco:{DATA / 'coco/test_coco.json'}"


def _export(model, input_wh: tuple[int, int], path: Path, outputs: list[str]) -> Path:
    """A torch module → ONNX with a dynamic batch axis."""
    import torch

    w, h = input_wh
    model.eval()
    with torch.no_grad():
        torch.onnx.export(model, torch.zeros(1, 3, h, w), str(path), dynamo=False,
                          input_names=["image"], output_names=outputs,
                          dynamic_axes={"image": {0: "n"}, **{o: {0: "n"} for o in outputs}})
    return path


def make_heatmap_teacher(path: Path, k: int = 17, input_wh=(48, 64), extra: int = 0,
                         seed: int = 0) -> Path:
    """A few random convs: (N, 3, 64, 48) → (N, k + extra, 16, 12) heatmap logits."""
    import torch
    from torch import nn

    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.ReLU(), nn.Conv2d(16, 16, 3, 2, 1),
                          nn.ReLU(), nn.Conv2d(16, k + extra, 3, 1, 1))
    return _export(model, input_wh, path, ["heatmaps"])


def make_simcc_teacher(path: Path, k: int = 17, input_wh=(48, 64), split: float = 2.0,
                       seed: int = 0) -> Path:
    """Random convs + two linear heads: (N, 3, H, W) → x (N, k, W·split), y (N, k, H·split)."""
    import torch
    from torch import nn

    w, h = input_wh
    wx, hy = round(w * split), round(h * split)

    class SimCC(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(3, 8, 3, 4, 1), nn.ReLU(),
                                      nn.Conv2d(8, 8, 3, 2, 1), nn.ReLU(), nn.Flatten())
            feat = 8 * ((h + 7) // 8) * ((w + 7) // 8)
            self.x = nn.Linear(feat, k * wx)
            self.y = nn.Linear(feat, k * hy)

        def forward(self, image):
            f = self.body(image)
            return self.x(f).reshape(-1, k, wx) * 8, self.y(f).reshape(-1, k, hy) * 8

    torch.manual_seed(seed)
    return _export(SimCC(), input_wh, path, ["simcc_x", "simcc_y"])


@pytest.fixture(scope="session")
def heatmap_teacher(tmp_path_factory) -> Path:
    """A described coco17 heatmap teacher (input and grid H×W 64×48 and 16×12, sigmoid)."""
    from uniskel.pipeline.teachers import TeacherInfo, describe_model

    path = make_heatmap_teacher(tmp_path_factory.mktemp("teachers") / "hm.onnx")
    info = TeacherInfo(name="hm", skeleton="coco17", head="heatmap", input_wh=(48, 64),
                       activation="sigmoid")
    return describe_model(path, info)


@pytest.fixture(scope="session")
def simcc_teacher(tmp_path_factory) -> Path:
    """A described mpii16 SimCC teacher (input H×W 64×48, split 2)."""
    from uniskel.pipeline.teachers import TeacherInfo, describe_model

    path = make_simcc_teacher(tmp_path_factory.mktemp("teachers") / "simcc.onnx", k=16)
    info = TeacherInfo(name="simcc", skeleton="mpii16", head="simcc", input_wh=(48, 64),
                       activation="softmax")
    return describe_model(path, info)


@pytest.fixture(scope="session")
def coco_crops():
    """(12, 64, 48, 3) uint8: every labelled person of the real COCO sample, cropped."""
    import numpy as np

    from uniskel.core.crops import crop_person, read_image
    from uniskel.core.datasets import load_dataset

    ds = load_dataset(COCO_SPEC)
    return np.stack([crop_person(read_image(i.image_path), i.bbox, (48, 64))[0]
                     for i in ds.instances])


@pytest.fixture(scope="session")
def tiny_student_run(tmp_path_factory) -> Path:
    """A run directory holding best.pt of an untrained tiny student (input H×W 64×48, seed 0).

    Its head weights are scaled up so heatmaps have distinct peaks (not near-flat noise).
    """
    import torch

    from uniskel.core.skeletons import UNIFIED
    from uniskel.student.models import build_model

    torch.manual_seed(0)
    model = build_model("tiny")
    with torch.no_grad():
        model.head.weight.mul_(300.0)
    run = tmp_path_factory.mktemp("runs") / "tiny_run"
    run.mkdir()
    torch.save({"model": model.state_dict(), "config": {"model": "tiny", "input_wh": [48, 64]},
                "unified": UNIFIED.to_json()}, run / "best.pt")
    return run


@pytest.fixture
def skeleton_registry():
    """Whatever a test adds to the known skeletons, unified skeletons and dataset kinds
    (load_skeleton_file, `uni --skeletons` run in-process) is forgotten after it."""
    from uniskel.core import skeletons

    tables = (skeletons.SKELETONS, skeletons._UNIFIED_KNOWN, skeletons._KINDS,
              skeletons._ORIGIN)
    saved = [dict(t) for t in tables]
    yield skeletons
    for table, before in zip(tables, saved, strict=True):
        table.clear()
        table.update(before)


# --------------------------------------------------------------------------- reliability stores

STAGE_ONE_BATCH = 4  # the reliability tests' cache batch size: kills land between small batches


def _repeated_coco(tmp: Path, times: int, images: Path) -> str:
    """The real COCO sample, its annotations repeated `times` times (new ids)."""
    data = json.loads((DATA / "coco/test_coco.json").read_text())
    anns = data["annotations"]
    data["annotations"] = [dict(a, id=r * 1_000_000 + a["id"]) for r in range(times)
                           for a in anns]
    (tmp / "ann.json").write_text(json.dumps(data))
    return f"coco:{tmp / 'ann.json'}:{images}"


@pytest.fixture(scope="session")
def stage_one(heatmap_teacher, tmp_path_factory):
    """(spec, teacher, reference store, no-flip store): 36 instances, one image truncated (its
    people are skipped, so the stores stay partial), cached without interruption, with and
    without flip. Read-only for tests: copy before changing."""
    from uniskel.pipeline.cache import cache_teachers

    tmp = tmp_path_factory.mktemp("stage_one")
    images = tmp / "images"
    shutil.copytree(DATA / "coco/images", images)
    broken = sorted(images.iterdir())[1]
    broken.write_bytes(broken.read_bytes()[:200])
    spec = _repeated_coco(tmp, 3, images)
    (ref,) = cache_teachers([spec], [heatmap_teacher], tmp / "ref", workers=1,
                            batch_size=STAGE_ONE_BATCH, progress=False)
    (no_flip,) = cache_teachers([spec], [heatmap_teacher], tmp / "no_flip", workers=1,
                                batch_size=STAGE_ONE_BATCH, flip_test=False, progress=False)
    assert ref.skipped and ref.computed + len(ref.skipped) == ref.instances == 36
    return spec, heatmap_teacher, ref.path, no_flip.path


@pytest.fixture(scope="session")
def stage_two(synth_dir, tmp_path_factory):
    """(spec, dataset, store dir): 10 people of the synthetic COCO train set (3 steps of 4 an
    epoch) and one analytic teacher's store of them. Read-only for tests: copy before changing."""
    from analytic_teacher import write_analytic_store

    from uniskel.core.datasets import load_dataset

    tmp = tmp_path_factory.mktemp("stage_two")
    raw = json.loads((synth_dir / "coco/train.json").read_text())
    raw["annotations"] = raw["annotations"][:10]
    (tmp / "ten.json").write_text(json.dumps(raw))
    spec = f"coco:{tmp / 'ten.json'}:{synth_dir / 'coco/images'}"
    ds = load_dataset(spec)
    assert len(ds.instances) == 10
    (tmp / "stores").mkdir()
    write_analytic_store(tmp / "stores/t__coco.h5", ds, "coco17", "t", input_wh=(48, 64))
    return spec, ds, tmp / "stores"
