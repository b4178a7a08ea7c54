"""`uni inspect-data`: a dataset's counts as a table or JSON, and its images drawn with people."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from uniskel.core.crops import read_image
from uniskel.core.datasets import Dataset, missing_images, summarize
from uniskel.core.draw import draw_box, draw_skeleton, save_rgb


def dataset_report(dataset: Dataset, as_json: bool = False) -> str:
    """Images, instances, missing images and labeled unified keypoints: a table, or one JSON
    object (summarize's, plus "missing_images": of the images with people)."""
    summary = summarize(dataset)
    gone, used = missing_images(dataset)
    summary["missing_images"] = len(gone)
    if as_json:
        return json.dumps(summary)
    where = f" (not found under {dataset.spec.image_root}; first: {gone[0]})" if gone else ""
    lines = [f"dataset    {dataset.spec}  (sha256 {dataset.dataset_id[:12]})",
             f"images     {summary['images']}\ninstances  {summary['instances']}",
             f"missing    {len(gone)} of {used} images with people{where}"]
    for key, label in (("videos", ""), ("frames", ""), ("ignore_regions", " polygons")):
        if key in summary:  # where the file says (PoseTrack)
            lines.append(f"{key.split('_')[0]:<11}{summary[key]}{label}")
    if "crowd_index" in summary:  # CrowdPose: images per crowd class
        lines.append("crowd      " + ", ".join(f"{c} {n}" for c, n in
                                               summary["crowd_index"].items()) + " images")
    lines.append(f"{'keypoint':<16}{'labeled':>8}")
    lines += [f"{name:<16}{count:>8}" for name, count in summary["keypoints"].items()]
    return "\n".join(lines)


def draw_dataset(dataset: Dataset, n_images: int, out_dir: Path) -> list[Path]:
    """Write PNGs of the first n_images images with every instance's box and skeleton."""
    # Images in the order their first person comes, as the dataset's rows (columns, not objects).
    images, first = np.unique(dataset.image_index, return_index=True)
    written = []
    for image in images[np.argsort(first)][:n_images]:
        insts = [dataset.instance(r) for r in np.flatnonzero(dataset.image_index == image)]
        image_id = insts[0].image_id
        img = read_image(insts[0].image_path)
        for inst in insts:
            draw_box(img, inst.bbox, label=str(inst.instance_id), copy=False)
            draw_skeleton(img, inst.unified, copy=False)
        path = Path(out_dir) / f"{dataset.kind.name}_{image_id}.png"
        save_rgb(path, img)
        written.append(path)
    return written
