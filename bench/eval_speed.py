"""Evaluation time: pycocotools against faster-coco-eval (and uni's own path) on a COCO-val-sized
keypoint set, and whether they give the same numbers (issue 22).

    .venv/bin/python bench/eval_speed.py [--eval-images 6000] [--eval-persons 11000]
                                         [--eval-predictions 25000] [--eval-rounds 3]
                                         [--crowd-images 2000] [--skip-uni]

The set is synthetic but shaped like COCO val2017 with detector-box results: the persons of
samples/coco/test_coco.json repeated onto new images with new ids (a random subset per image,
shifted a little), predictions = each labelled person's keypoints jittered by a few pixels with a
score, plus near-duplicates and misplaced false positives, all written as COCO JSON to a temp
folder. Each evaluator reads both files itself and runs evaluate / accumulate / summarize;
the arms run interleaved, round after round, and the median is reported.
- pycocotools (cocodataset/cocoapi, PythonAPI/pycocotools/cocoeval.py): COCOeval "keypoints"
  with the kind's sigmas.
- faster-coco-eval (MiXaiLL76/faster_coco_eval, faster_coco_eval/core/cocoeval.py):
  COCOeval_faster, the same; for CrowdPose "keypoints_crowd" with use_area=False.
- uni: uniskel.evaluation.evaluate.evaluate(["KIND:GT.json"], predictions=FILE) (images need
  not exist to score a predictions file), which runs faster-coco-eval (evaluation/oks.py).
The CrowdPose rule (crowdposetools, Jeff-sjtu/CrowdPose, crowdpose-api/PythonAPI/crowdposetools/
cocoeval.py: OKS and area ranges on 0.53 × box w × h) on a smaller set made the same way from
samples/crowdpose: pycocotools gets a copy of the ground truth whose areas are 0.53 × w × h.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from importlib import metadata
from pathlib import Path

import common
import numpy as np

SAMPLES = common.REPO / "samples"
COCO_LABELS = ("AP", "AP50", "AP75", "AP-M", "AP-L", "AR", "AR50", "AR75", "AR-M", "AR-L")
# keypoints_crowd's stats[0..5] are pycocotools' stats[0, 1, 2, 5, 6, 7]
CROWD_LABELS = ("AP", "AP50", "AP75", "AR", "AR50", "AR75")
CROWD_FROM_COCO = (0, 1, 2, 5, 6, 7)
UNI_KEYS = ("AP", "AP50", "AP75", "AP-M", "AP-L", "AR")  # pycocotools' stats[0..5]


# --------------------------------------------------------------------------- the synthetic set


def make_set(source: Path, n_images: int, n_persons: int, n_predictions: int, seed: int = 0,
             crowd: bool = False) -> tuple[dict, list[dict]]:
    """(ground truth, keypoint results): SOURCE's persons repeated onto N_IMAGES new images,
    about N_PERSONS of them, and about N_PREDICTIONS results (one per labelled person, jittered
    by a few px, plus false positives). crowd: each image gets a random crowdIndex."""
    rng = np.random.default_rng(seed)
    src = json.loads(source.read_text())
    by_image: dict[int, list[dict]] = {}
    for a in src["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a)
    images_src = [im for im in src["images"] if im["id"] in by_image]
    per_image = np.mean([len(by_image[im["id"]]) for im in images_src])
    keep_p = min(1.0, n_persons / (n_images * per_image))
    images, anns = [], []
    for i in range(n_images):
        im = images_src[i % len(images_src)]
        new = {k: v for k, v in im.items() if k != "crowdIndex"} | {"id": i + 1}
        new["file_name"] = f"{i + 1:012d}.jpg"
        if crowd:
            new["crowdIndex"] = round(float(rng.uniform(0.0, 1.0)), 2)
        images.append(new)
        shift = rng.uniform(-15, 15, 2)
        for a in by_image[im["id"]]:
            if rng.random() >= keep_p:
                continue
            kp = np.asarray(a["keypoints"], np.float64).reshape(-1, 3)
            lab = kp[:, 2] > 0
            kp[lab, :2] += shift
            box = [a["bbox"][0] + shift[0], a["bbox"][1] + shift[1], a["bbox"][2], a["bbox"][3]]
            ann = {k: v for k, v in a.items() if k != "segmentation"}
            ann.update(id=len(anns) + 1, image_id=i + 1, bbox=[round(v, 2) for v in box],
                       keypoints=[round(v, 2) if j % 3 < 2 else int(v)
                                  for j, v in enumerate(kp.reshape(-1).tolist())])
            anns.append(ann)
    gt = {k: v for k, v in src.items() if k not in ("images", "annotations")}
    gt.update(images=images, annotations=anns)
    return gt, _predictions(anns, n_predictions, rng)


def _predictions(anns: list[dict], n_predictions: int, rng: np.random.Generator) -> list[dict]:
    """One result per labelled person (jitter 1–6 px), then false positives up to N: half
    near-duplicates (jitter 10–40 px), half a person's pose moved about a box away."""
    labelled = [a for a in anns if a["num_keypoints"] > 0 and not a["iscrowd"]]
    out = []

    def result(a: dict, jitter: float, offset: np.ndarray, score: float) -> dict:
        kp = np.asarray(a["keypoints"], np.float64).reshape(-1, 3)
        x, y, w, h = a["bbox"]
        xy = np.where(kp[:, 2:] > 0, kp[:, :2], [x + w / 2, y + h / 2])
        xy = xy + offset + rng.normal(0.0, jitter, xy.shape)
        s = rng.uniform(0.2, 1.0, (len(kp), 1))
        return {"image_id": a["image_id"], "category_id": 1, "score": round(score, 4),
                "keypoints": np.round(np.hstack([xy, s]), 2).reshape(-1).tolist()}

    for a in labelled:
        out.append(result(a, rng.uniform(1, 6), np.zeros(2), float(rng.uniform(0.3, 1.0))))
    while len(out) < n_predictions and labelled:
        a = labelled[int(rng.integers(len(labelled)))]
        if rng.random() < 0.5:
            out.append(result(a, rng.uniform(10, 40), np.zeros(2), float(rng.uniform(0.05, 0.6))))
        else:
            off = rng.choice([-1, 1], 2) * np.asarray(a["bbox"][2:]) * rng.uniform(0.5, 1.5, 2)
            out.append(result(a, rng.uniform(1, 6), off, float(rng.uniform(0.05, 0.6))))
    return out


def with_box_areas(gt: dict, factor: float = 0.53) -> dict:
    """A copy of GT whose every area is FACTOR × box w × h (crowdposetools' rule)."""
    return {**gt, "annotations": [a | {"area": factor * a["bbox"][2] * a["bbox"][3]}
                                  for a in gt["annotations"]]}


# --------------------------------------------------------------------------- the evaluators


def pycocotools_stats(gt: Path, res: Path, sigmas: np.ndarray) -> list[float]:
    """pycocotools COCO + loadRes + COCOeval keypoints → its 10 stats (0–1)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO(str(gt))
        ev = COCOeval(coco_gt, coco_gt.loadRes(str(res)), "keypoints")
        ev.params.kpt_oks_sigmas = np.asarray(sigmas, np.float64)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return [float(s) for s in ev.stats]


def faster_stats(gt: Path, res: Path, sigmas: np.ndarray, iou_type: str = "keypoints",
                 use_area: bool = True) -> list[float]:
    """faster-coco-eval COCO + loadRes + COCOeval_faster → its stats (0–1)."""
    from faster_coco_eval import COCO, COCOeval_faster

    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO(str(gt))
        ev = COCOeval_faster(coco_gt, coco_gt.loadRes(str(res)), iou_type,
                             kpt_oks_sigmas=[float(s) for s in sigmas], use_area=use_area)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return [float(s) for s in ev.stats]


@contextlib.contextmanager
def _env(name: str, value: str) -> Iterator[None]:
    old = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            del os.environ[name]
        else:
            os.environ[name] = old


def uni_metrics(spec: str, res: Path, cache: Path) -> dict:
    """uni's `evaluate --predictions FILE` on SPEC (its dataset cache in CACHE) → metric dict."""
    from uniskel.evaluation.evaluate import evaluate

    with _env("UNI_CACHE_DIR", str(cache)):
        return evaluate([spec], predictions=res, progress=False)[spec]


def sigmas_of(kind: str) -> np.ndarray:
    """The kind's OKS sigmas (core/skeletons.toml)."""
    from uniskel.core.skeletons import get_kind, get_skeleton

    return np.asarray(get_skeleton(get_kind(kind).skeleton).sigmas, np.float64)


def timed(arms: dict[str, Callable[[], object]], rounds: int
          ) -> tuple[dict[str, float], dict[str, object]]:
    """Each arm once untimed (imports, dataset cache), then ROUNDS interleaved timed rounds →
    ({arm: median seconds}, {arm: its last result})."""
    last = {name: fn() for name, fn in arms.items()}
    seconds: dict[str, list[float]] = {name: [] for name in arms}
    for r in range(rounds):
        for name, fn in arms.items():
            t0 = time.perf_counter()
            last[name] = fn()
            seconds[name].append(time.perf_counter() - t0)
            common.say(f"eval_speed: round {r + 1}: {name} {seconds[name][-1]:.2f} s")
    return {k: statistics.median(v) for k, v in seconds.items()}, last


def _max_diff(a: list[float], b: list[float]) -> float:
    return max(abs(x - y) for x, y in zip(a, b, strict=True))


# --------------------------------------------------------------------------- the benchmark


def _coco_part(args: argparse.Namespace, folder: Path) -> tuple[list[list[str]], list[str]]:
    gt, res = make_set(SAMPLES / "coco/test_coco.json", args.eval_images, args.eval_persons,
                       args.eval_predictions)
    gt_path, res_path = folder / "coco_gt.json", folder / "coco_results.json"
    gt_path.write_text(json.dumps(gt))
    res_path.write_text(json.dumps(res))
    sigmas = sigmas_of("coco")
    arms: dict[str, Callable[[], object]] = {
        "pycocotools": lambda: pycocotools_stats(gt_path, res_path, sigmas),
        "faster-coco-eval": lambda: faster_stats(gt_path, res_path, sigmas)}
    if not args.skip_uni:
        arms["uni evaluate"] = lambda: uni_metrics(f"coco:{gt_path}", res_path, folder / "cache")
    common.say(f"eval_speed: COCO set: {len(gt['images'])} images, {len(gt['annotations'])} "
               f"persons, {len(res)} results")
    secs, out = timed(arms, args.eval_rounds)
    ref = out["pycocotools"]
    rows = [["pycocotools COCOeval", f"{secs['pycocotools']:.2f}", "1.00", "—"],
            ["faster-coco-eval COCOeval_faster", f"{secs['faster-coco-eval']:.2f}",
             f"{secs['pycocotools'] / secs['faster-coco-eval']:.2f}",
             f"{100 * _max_diff(ref, out['faster-coco-eval'][:10]):.2g} (10 stats)"]]
    if "uni evaluate" in out:
        u = out["uni evaluate"]
        rows.append(["uni `evaluate --predictions` (faster-coco-eval inside)",
                     f"{secs['uni evaluate']:.2f}",
                     f"{secs['pycocotools'] / secs['uni evaluate']:.2f}",
                     f"{_max_diff([100 * s for s in ref[:6]], [u[k] for k in UNI_KEYS]):.2g}"
                     " (AP … AR)"])
    figures = [f"{k} {100 * v:.2f}" for k, v in zip(COCO_LABELS, ref, strict=True)]
    size = (f"COCO rule (17 keypoints, annotated areas): {len(gt['images'])} images, "
            f"{len(gt['annotations'])} persons, {len(res)} results")
    return [[size, "", "", ""]] + rows, figures


def _crowd_part(args: argparse.Namespace, folder: Path) -> tuple[list[list[str]], list[str]]:
    n = args.crowd_images
    gt, res = make_set(SAMPLES / "crowdpose/test_crowdpose.json", n, int(n * 2.5), n * 5,
                       seed=1, crowd=True)
    gt_path, area_path = folder / "crowd_gt.json", folder / "crowd_gt_area053.json"
    res_path = folder / "crowd_results.json"
    gt_path.write_text(json.dumps(gt))
    area_path.write_text(json.dumps(with_box_areas(gt)))
    res_path.write_text(json.dumps(res))
    sigmas = sigmas_of("crowdpose")
    arms: dict[str, Callable[[], object]] = {
        "pycocotools": lambda: pycocotools_stats(area_path, res_path, sigmas),
        "faster-coco-eval": lambda: faster_stats(gt_path, res_path, sigmas, "keypoints_crowd",
                                                 use_area=False)}
    if not args.skip_uni:
        arms["uni evaluate"] = lambda: uni_metrics(f"crowdpose:{gt_path}", res_path,
                                                   folder / "cache")
    secs, out = timed(arms, args.eval_rounds)
    ref = [out["pycocotools"][i] for i in CROWD_FROM_COCO]
    rows = [["pycocotools COCOeval, area = 0.53 w h", f"{secs['pycocotools']:.2f}", "1.00", "—"],
            ["faster-coco-eval keypoints_crowd, use_area=False",
             f"{secs['faster-coco-eval']:.2f}",
             f"{secs['pycocotools'] / secs['faster-coco-eval']:.2f}",
             f"{100 * _max_diff(ref, out['faster-coco-eval'][:6]):.2g} (AP … AR75)"]]
    if "uni evaluate" in out:
        u = out["uni evaluate"]
        diff = _max_diff([100 * s for s in ref[:4]], [u[k] for k in CROWD_LABELS[:4]])
        rows.append(["uni `evaluate --predictions` (+ AP easy/medium/hard)",
                     f"{secs['uni evaluate']:.2f}",
                     f"{secs['pycocotools'] / secs['uni evaluate']:.2f}",
                     f"{diff:.2g} (AP, AP50, AP75, AR)"])
    figures = [f"{k} {100 * v:.2f}" for k, v in zip(CROWD_LABELS, ref, strict=True)]
    size = (f"CrowdPose rule (14 keypoints, 0.53 × box area): {len(gt['images'])} images, "
            f"{len(gt['annotations'])} persons, {len(res)} results")
    return [[size, "", "", ""]] + rows, figures


def run(args: argparse.Namespace) -> str:
    """Both sets, every arm timed → the markdown section."""
    with tempfile.TemporaryDirectory(prefix="uni-eval-speed-", dir=args.work) as tmp:
        folder = Path(tmp)
        load_before = common.load()
        rows, figures = _coco_part(args, folder)
        crowd_figures: list[str] = []
        if args.crowd_images > 0:
            crowd_rows, crowd_figures = _crowd_part(args, folder)
            rows += crowd_rows
        load_after = common.load()
    versions = ", ".join(f"{name} {metadata.version(name)}"
                         for name in ("pycocotools", "faster-coco-eval"))
    table = common.table(["evaluator", "seconds (median)", "pycocotools ÷ this",
                          "max abs difference from pycocotools (AP points)"], rows)
    crowd = (f"\nCrowdPose figures (pycocotools, 0.53 × box area): {', '.join(crowd_figures)}."
             if crowd_figures else "")
    return f"""## 8. Evaluation time: pycocotools vs faster-coco-eval

`bench/eval_speed.py`: a synthetic keypoint set shaped like COCO val2017 with detector results
(samples/coco's persons repeated onto new images, results = their keypoints jittered by a few
pixels plus false positives); each evaluator reads the ground-truth and results JSON itself and
runs evaluate + accumulate + summarize. Median of {args.eval_rounds} interleaved rounds after
one untimed warm-up; {versions}. Before: {load_before}; after: {load_after}.

{table}

COCO figures (pycocotools): {', '.join(figures)}.{crowd}
"""


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--eval-images", type=int, default=6000, help="images in the COCO set [6000]")
    ap.add_argument("--eval-persons", type=int, default=11000,
                    help="about this many ground-truth persons [11000]")
    ap.add_argument("--eval-predictions", type=int, default=25000,
                    help="keypoint results [25000]")
    ap.add_argument("--eval-rounds", type=int, default=3, help="timed rounds [3]")
    ap.add_argument("--crowd-images", type=int, default=2000,
                    help="images in the CrowdPose set (0: skip it) [2000]")
    ap.add_argument("--skip-uni", action="store_true", help="time only the two libraries")
    common.main(run, ap)
