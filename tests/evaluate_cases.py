"""What the `uni evaluate` tests share: ground truth written as COCO keypoint results,
pycocotools run directly on a file, the real sample datasets of every kind, a stub model."""

from __future__ import annotations

import contextlib
import functools
import io
import json

import numpy as np
from click.testing import CliRunner
from conftest import DATA
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from uniskel.cli import uni
from uniskel.core.datasets import Dataset, load_dataset
from uniskel.core.skeletons import UNIFIED, UNIFIED_NAMES
from uniskel.evaluation.predict import Predictor

# docs/conventions.md "Metrics", written out here so the tests do not lean on core.skeletons.
COCO_SIGMAS = [.026, .025, .025, .035, .035, .079, .079, .072, .072, .062, .062,
               .107, .107, .087, .087, .089, .089]
COCO_NAMES = list(UNIFIED_NAMES[:17])
KINDS = {  # spec, scored (unified21 model), metric; samples/README.md has the counts
    "aic": ("aic:{d}/aic/test_aic.json", "14 of aic14", "AP"),
    "crowdpose": ("crowdpose:{d}/crowdpose/test_crowdpose.json", "14 of crowdpose14", "AP"),
    "jhmdb": ("jhmdb:{d}/jhmdb/test_jhmdb_sub1.json", "14 of jhmdb15", "PCK@0.2"),
    # PoseTrack18 never labels the ears.
    "posetrack18": ("posetrack18:{d}/posetrack18/test_posetrack18_val.json", "15 of posetrack17",
                    "mAP"),  # poseval's mAP first, COCO-style AP beside it
}


def cli(*args: object):
    """`uni ARGS` in this process (CliRunner), arguments as strings."""
    return CliRunner().invoke(uni, [str(a) for a in args])


@functools.cache
def coco_sample() -> tuple[str, Dataset]:
    """The real COCO sample: (its spec, the dataset). Read-only."""
    spec = f"coco:{DATA}/coco/test_coco.json"
    return spec, load_dataset(spec)


def flat(kp) -> list[float]:
    return [float(v) for v in np.asarray(kp).reshape(-1)]


def gt_records(ds: Dataset, jitter: float = 0.0, seed: int = 0, **extra) -> list[dict]:
    """Ground truth as COCO keypoint results in the dataset's native order (labelled keypoints;
    others at 0, 0), with instance ids, optionally jittered."""
    rng = np.random.default_rng(seed)
    out = []
    for row, iid in enumerate(ds.instance_ids.tolist()):
        gt = ds.keypoints[row]
        kp = np.zeros_like(gt)
        lab = gt[:, 2] > 0
        kp[lab, :2] = gt[lab, :2] + rng.normal(0, jitter, (lab.sum(), 2))
        kp[lab, 2] = rng.uniform(0.3, 1.0, lab.sum()) if jitter else 1.0
        out.append({"image_id": int(ds.image_ids[ds.image_index[row]]), "category_id": 1,
                    "keypoints": flat(kp), "score": float(rng.uniform(0.2, 1.0)),
                    "instance_id": iid, **extra})
    return out


def write(path, records) -> str:
    path.write_text(json.dumps(records))
    return str(path)


def direct_cocoeval(ann_file, records, sigmas=COCO_SIGMAS) -> list[float]:
    """pycocotools on the annotation file and the records as written: nothing from uni."""
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(ann_file))
        ev = COCOeval(gt, gt.loadRes(records), "keypoints")
        ev.params.kpt_oks_sigmas = np.array(sigmas)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return [None if ev.stats[i] < 0 else 100 * ev.stats[i] for i in range(6)]


def direct_on_copy(ds: Dataset, records, tmp_path) -> list[float]:
    """pycocotools on a copy of the annotation file with what pycocotools requires and these
    files leave out ('area' = box w × h, 'iscrowd' 0, num_keypoints = labelled count), the
    kind's sigmas. CrowdPose and AIC are scored on 0.53 × box w × h, as crowdposetools and
    xtcocotools' use_area=False do (tests/test_evaluate_official.py checks that rule against
    faster-coco-eval)."""
    raw = json.loads(ds.spec.annotations.read_text())
    for a in raw["annotations"]:
        if ds.kind.name in ("crowdpose", "aic"):
            a["area"] = 0.53 * a["bbox"][2] * a["bbox"][3]
        a.setdefault("area", a["bbox"][2] * a["bbox"][3])
        a["iscrowd"] = int(a.get("iscrowd", 0))
        a["num_keypoints"] = sum(v > 0 for v in a["keypoints"][2::3])
    raw.setdefault("categories", [{"id": 1, "name": "person"}])
    path = tmp_path / "gt_copy.json"
    path.write_text(json.dumps(raw))
    stats = direct_cocoeval(path, records, list(ds.skeleton.sigmas))
    if ds.kind.name == "crowdpose":  # crowdposetools reports no AP-M / AP-L
        stats[3] = stats[4] = None
    return stats


def ap_stats(r: dict) -> list[float]:
    """pycocotools' stats[0..5] as uni names them; CrowdPose (crowdposetools scores the 'all'
    area range only, no AP-M / AP-L) has None in their places."""
    return [r.get(k) if k in ("AP-M", "AP-L") else r[k]
            for k in ("AP", "AP50", "AP75", "AP-M", "AP-L", "AR")]


class StubPredictor(Predictor):
    """Never runs: the tests replace evaluate's predict_boxes with a table of box → keypoints."""

    name, input_wh = "stub", (48, 64)

    def __init__(self):
        self.unified, self.known = UNIFIED, np.ones(21, bool)
