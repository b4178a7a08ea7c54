"""poseval's own figures on the PoseTrack18 sample, frozen for tests/test_evaluate_posetrack.py.

Runs ONLY in the scratch venv of README.md here (poseval + shapely), never in uni's. For each
predictions file in predictions/ (uni's COCO keypoint results, native posetrack17 order), it does
what MMPose's PoseTrack18Metric does (mmpose/evaluation/metrics/posetrack18_metric.py): one GT
file and one prediction file per video (keypoint scores as "scores", the keypoints' third value
as written), poseval's `eval_helpers.load_data_dir`, `evaluateAP.evaluateAP` and
`eval_helpers.getCum`, and writes reference.json. With --synthetic it first (re)writes
predictions/synthetic.json, hand-made predictions that exercise every rule (seeded).

poseval reads the per-video files in `glob.glob` order (the file system's); the frames' order
decides computeRPC's order among equal scores. Here glob is sorted, which is the sample file's
video order (uni's frame order); every case is also run in all orders of the videos and
reference.json says whether any order changed a figure.
"""

from __future__ import annotations

import argparse
import glob
import itertools
import json
import os
import tempfile
from pathlib import Path

import numpy as np
import shapely
from poseval import eval_helpers
from poseval.evaluateAP import evaluateAP
from shapely import geometry

HERE = Path(__file__).resolve().parent
SAMPLE = HERE.parents[2] / "samples/posetrack18/test_posetrack18_val.json"
POSEVAL_COMMIT = "4258a15 (leonid-pishchulin/poseval master)"
JOINTS = ("right_ankle", "right_knee", "right_hip", "left_hip", "left_knee", "left_ankle",
          "right_wrist", "right_elbow", "right_shoulder", "left_shoulder", "left_elbow",
          "left_wrist", "head_bottom", "nose", "head_top")  # eval_helpers.Joint order
ROWS = ("Head", "Shou", "Elb", "Wri", "Hip", "Knee", "Ankl", "Total")  # getHeader


def videos(gt: dict) -> list[tuple[str, list[dict]]]:
    """[(video folder, its image records)], in the file's order."""
    out: dict[str, list[dict]] = {}
    for im in gt["images"]:
        out.setdefault(Path(im["file_name"]).parent.name, []).append(im)
    return list(out.items())


def write_dirs(gt: dict, records: list[dict], root: Path, order: tuple[int, ...]) -> None:
    """root/gt/NN_video.json and root/pred/NN_video.json (NN: the video's place in `order`)."""
    (root / "gt").mkdir(parents=True)
    (root / "pred").mkdir()
    for rank, (name, images) in zip(order, videos(gt), strict=True):
        ids = [im["id"] for im in images]
        anns = [a for a in gt["annotations"] if a["image_id"] in ids]
        fname = f"{rank:02d}_{name}.json"
        (root / "gt" / fname).write_text(json.dumps(
            {"images": images, "annotations": anns, "categories": gt["categories"]}))
        preds = []
        for image_id in ids:  # posetrack18_metric.results2json
            mine = [r for r in records if r["image_id"] == image_id]
            for track_id, r in enumerate(mine):
                kp = np.asarray(r["keypoints"], float).reshape(-1, 3)
                preds.append({"image_id": image_id, "keypoints": kp.reshape(-1).tolist(),
                              "scores": kp[:, 2].tolist(), "score": float(r["score"]),
                              "track_id": track_id})
        (root / "pred" / fname).write_text(json.dumps(
            {"images": [{"id": im["id"], "file_name": im["file_name"]} for im in images],
             "annotations": preds, "categories": gt["categories"]}))


def run_poseval(gt: dict, records: list[dict], order: tuple[int, ...]) -> tuple[list, list]:
    """poseval on one video order → (15 joint APs, getCum's 8 rows); NaN as None."""
    real_glob = glob.glob
    with tempfile.TemporaryDirectory() as tmp:
        write_dirs(gt, records, Path(tmp), order)
        eval_helpers.glob.glob = lambda pattern: sorted(real_glob(pattern))
        try:
            gt_frames, pr_frames = eval_helpers.load_data_dir(
                ["", os.path.join(tmp, "gt") + "/", os.path.join(tmp, "pred") + "/"])
            ap, _, _ = evaluateAP(gt_frames, pr_frames, None, False, False)
        finally:
            eval_helpers.glob.glob = real_glob
    rows = eval_helpers.getCum(ap)

    def clean(v) -> float | None:
        return None if np.isnan(v) else float(v)

    return [clean(v) for v in ap[:15, 0]], [clean(v) for v in rows]


def synthetic(gt: dict, seed: int = 0) -> list[dict]:
    """Predictions that exercise poseval's rules on the sample: GT moved by 0.05–3 head sizes
    (0.499 / 0.501 among them), absent joints (x = y = score = 0), score-0 joints, a second
    prediction competing for some persons, false positives, joints inside ignore regions and
    one on a polygon's vertex (the boundary: kept)."""
    rng = np.random.default_rng(seed)
    polys = {im["id"]: [np.c_[x, y] for x, y in zip(im.get("ignore_regions_x", []),
                                                    im.get("ignore_regions_y", []), strict=True)]
             for im in gt["images"]}
    radii = np.array([0.05, 0.2, 0.45, 0.499, 0.501, 0.55, 1.0, 3.0])
    out = []
    for a in gt["annotations"]:
        kp = np.asarray(a["keypoints"], float).reshape(17, 3)
        hx, hy, hw, hh = a["bbox_head"]
        head = 0.6 * np.hypot(hw, hh)
        for copy in range(2 if a["id"] % 3 == 0 else 1):  # a rival for every third person
            angle = rng.uniform(0, 2 * np.pi, 17)
            r = rng.choice(radii, 17) * head
            pred = kp.copy()
            pred[:, 0] += r * np.cos(angle)
            pred[:, 1] += r * np.sin(angle)
            missing = kp[:, 2] == 0  # unlabelled: somewhere in the box (a false positive)
            x, y, w, h = a["bbox"]
            pred[missing, 0] = x + rng.uniform(0, w, missing.sum())
            pred[missing, 1] = y + rng.uniform(0, h, missing.sum())
            pred[:, 2] = np.round(rng.uniform(0.01, 1.0, 17), 4)
            pred[rng.random(17) < 0.1] = 0.0  # absent
            pred[rng.random(17) < 0.05, 2] = 0.0  # present, score 0
            out.append({"image_id": a["image_id"], "category_id": 1,
                        "keypoints": pred.reshape(-1).round(3).tolist(),
                        "score": float(rng.uniform(0.3, 1.0)) - 0.1 * copy})
    for im in gt["images"]:
        w, h = im.get("width", 1920), im.get("height", 1080)
        for _ in range(2):  # false positives anywhere
            pred = np.c_[rng.uniform(0, w, 17), rng.uniform(0, h, 17),
                         np.round(rng.uniform(0.01, 1.0, 17), 4)]
            out.append({"image_id": im["id"], "category_id": 1,
                        "keypoints": pred.reshape(-1).round(3).tolist(),
                        "score": float(rng.uniform(0.1, 0.5))})
        for poly in polys[im["id"]][:2]:  # all joints in an ignore region; one on its vertex
            shape = geometry.Polygon(poly)
            inner = shape.representative_point()
            assert shape.contains(inner)
            pred = np.tile([inner.x, inner.y, 0.5], (17, 1))
            pred[:, 2] = np.round(rng.uniform(0.01, 1.0, 17), 4)
            pred[0, :2] = poly[0]
            assert not shape.contains(geometry.Point(poly[0]))
            out.append({"image_id": im["id"], "category_id": 1,
                        "keypoints": pred.reshape(-1).tolist(), "score": 0.4})
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--synthetic", action="store_true", help="rewrite predictions/synthetic")
    args = parser.parse_args()
    gt = json.loads(SAMPLE.read_text())
    if args.synthetic:
        (HERE / "predictions/synthetic.json").write_text(json.dumps(synthetic(gt)))
    cases = {}
    for path in sorted((HERE / "predictions").glob("*.json")):
        records = json.loads(path.read_text())
        n = len(videos(gt))
        first = run_poseval(gt, records, tuple(range(n)))
        others = [run_poseval(gt, records, p) for p in itertools.permutations(range(n))]
        cases[path.stem] = {"joints": dict(zip(JOINTS, first[0], strict=True)),
                            "rows": dict(zip(ROWS, first[1], strict=True)),
                            "same_in_every_video_order": all(o == first for o in others)}
        print(path.stem, cases[path.stem]["rows"])
    versions = {"poseval": POSEVAL_COMMIT, "numpy": np.__version__,
                "shapely": shapely.__version__}
    (HERE / "reference.json").write_text(json.dumps({"versions": versions, "cases": cases},
                                                    indent=1) + "\n")


if __name__ == "__main__":
    main()
