"""The statistics docs/conventions.md ("Synthetic datasets") gives for each dataset, measured the
same way on a real annotation file (samples/) and on a synthetic one (tests/test_synth_stats.py)."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np


def _median(values: list[float]) -> float:
    return round(float(np.median(values)), 3) if values else float("nan")


def coco_stats(ann_file: Path, keypoints: int = 17) -> dict[str, float]:
    """A COCO-style file → persons per image, share of persons with no keypoint, median box
    height / image height and labelled share (persons with keypoints), share of v=1 labels,
    image aspect (w / h). keypoints: the first K of each person count (Halpe: its body)."""
    raw = json.loads(Path(ann_file).read_text())
    images = {im["id"]: im for im in raw["images"]}
    anns = raw["annotations"]
    rel, lab, v1, v12, empty = [], [], 0, 0, 0
    for a in anns:
        kp = np.asarray(a["keypoints"], float).reshape(-1, 3)[:keypoints]
        n = int((kp[:, 2] > 0).sum())
        if n == 0:
            empty += 1
            continue
        rel.append(a["bbox"][3] / images[a["image_id"]]["height"])
        lab.append(n / keypoints)
        v1 += int((kp[:, 2] == 1).sum())
        v12 += n
    with_people = {a["image_id"] for a in anns}
    return {"persons_per_image": round(len(anns) / max(len(with_people), 1), 3),
            "no_keypoints": round(empty / max(len(anns), 1), 3),
            "box_height": _median(rel), "labelled": round(float(np.mean(lab)), 3),
            "occluded": round(v1 / max(v12, 1), 3),
            "aspect": _median([im["width"] / im["height"] for im in images.values()])}


def mpii_stats(ann_file: Path, image_root: Path) -> dict[str, float]:
    """MMPose's MPII list → persons per image, median joints' height / image height, labelled
    share, median 200·scale / joints' extent, median upper neck position from the thorax (0)
    to the head top (1), image aspect."""
    recs = json.loads(Path(ann_file).read_text())
    sizes: dict[str, tuple[int, int]] = {}
    rel, lab, side, neck = [], [], [], []
    for r in recs:
        if r["image"] not in sizes:
            h, w = cv2.imread(str(Path(image_root) / r["image"])).shape[:2]
            sizes[r["image"]] = (w, h)
        j, v = np.asarray(r["joints"], float), np.asarray(r["joints_vis"]) > 0
        ext = j[v].max(0) - j[v].min(0)
        rel.append(ext[1] / sizes[r["image"]][1])
        lab.append(v.mean())
        side.append(200 * r["scale"] / max(float(ext.max()), 1.0))
        if v[[7, 8, 9]].all():  # thorax, upper neck, head top
            th, un, ht = j[7], j[8], j[9]
            neck.append(float(np.dot(un - th, ht - th) / max(np.dot(ht - th, ht - th), 1e-6)))
    return {"persons_per_image": round(len(recs) / max(len(sizes), 1), 3),
            "joints_height": _median(rel), "labelled": round(float(np.mean(lab)), 3),
            "box_side": _median(side), "upper_neck": _median(neck),
            "aspect": _median([w / h for w, h in sizes.values()])}
