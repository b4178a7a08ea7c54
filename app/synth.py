"""Synthetic pose datasets in the real file formats: stick people, each dataset in its own domain.

Every person is an articulated figure of the 21-keypoint unified skeleton (app.synth_draw). By
default each dataset is drawn in its own domain (app.synth_domains; the differences and their
sources: docs/conventions.md, "Synthetic datasets"): COCO's everyday scenes, MPII's video frames
with MPII's framing and labels, Halpe on COCO's images. `same_domain` draws every dataset in the
one shared style the demo used before, a coloured dot naming each keypoint alike everywhere.

Writes, under OUT:
- ``coco/{train,val}.json``: COCO keypoints (17), boxes and areas from the drawn pixels;
- ``mpii/{train,val}.json``: MMPose's MPII list (16 joints, center, scale, head_box), 1-based;
- ``halpe/val.json``: Halpe-26, COCO-style, feet unlabeled;
- JPEGs under ``OUT/<format>/images/``.
The same seed gives byte-identical files.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from uniskel.app.synth_domains import DOMAINS, MARKS, Domain, domain_scene, with_marks
from uniskel.app.synth_draw import IDX, STYLES, Style, shared_scene
from uniskel.core.errors import UniError
from uniskel.core.files import check_output_path
from uniskel.core.skeletons import SKELETONS, unified_to_native

DEFAULT_PERSONS = 600  # per dataset (COCO-style and MPII-style); Halpe val gets 15 % of it
VAL_FRACTION = 0.15
JPEG_QUALITY = 90  # the shared style's; each domain has its own
# MPII's labels and framing, measured on samples/mpii (docs/conventions.md): the upper neck
# this far from the thorax towards the head top, the (center, scale) box side this many times
# the joints' extent, the center at this point of the joints' box.
MPII_NECK = (0.05, 0.15)
MPII_SIDE = (1.13, 1.49)
MPII_CENTER = ((0.29, 0.82), (0.37, 0.48))


def _r(x: float) -> float:
    return round(float(x), 2)


def _split_sizes(persons: int) -> dict[str, int]:
    val = max(1, int(round(persons * VAL_FRACTION)))
    return {"train": max(1, persons - val), "val": val}


def _scenes(rng: np.random.Generator, look: Style | Domain, persons: int, bar: tqdm):
    """Yield (image, people) until `persons` labelled figures are drawn."""
    left = persons
    while left > 0:
        n = min(left, int(rng.integers(look.people[0], look.people[1] + 1)))
        left -= n
        bar.update(n)
        if isinstance(look, Style):
            yield shared_scene(rng, look, n)
        else:
            yield domain_scene(rng, look, n)


def _write_jpeg(path: Path, img: np.ndarray, look: Style | Domain) -> None:
    quality = look.jpeg_quality if isinstance(look, Domain) else JPEG_QUALITY
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(img, cv2.COLOR_RGB2BGR),
                           [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise UniError(f"{path}: could not encode JPEG")
    path.write_bytes(buf.tobytes())


def _coco_categories(skeleton_name: str) -> list[dict]:
    sk = SKELETONS[skeleton_name]
    cat = {"supercategory": "person", "id": 1, "name": "person", "keypoints": list(sk.keypoints)}
    if skeleton_name == "coco17":  # COCO's own 1-based limb list
        cat["skeleton"] = [[16, 14], [14, 12], [17, 15], [15, 13], [12, 13], [6, 12], [7, 13],
                           [6, 7], [6, 8], [7, 9], [8, 10], [9, 11], [2, 3], [1, 2], [1, 3],
                           [2, 4], [3, 5], [4, 6], [5, 7]]
    else:
        cat["skeleton"] = []
    return [cat]


def _coco_keypoints(person: dict, sk, look: Style | Domain, size: tuple[int, int],
                    rng: np.random.Generator) -> np.ndarray:
    """(K, 3) native keypoints; a domain with label noise moves each labelled point by COCO's
    measured annotator spread: E[d²] = σ² · area (cocodataset.org, keypoint evaluation)."""
    uni = np.concatenate([person["points"], person["vis"][:, None]], 1)
    kp = unified_to_native(uni, sk)  # keypoints unknown to unified (Halpe feet) stay 0
    if isinstance(look, Domain) and not person["labelled"]:
        kp[:, 2] = 0  # too small: COCO keeps the person's box but labels no keypoint
    if isinstance(look, Domain) and look.label_noise:
        spread = np.asarray(sk.sigmas)[:, None] * np.sqrt(max(person["area"], 1.0) / 2)
        kp[:, :2] += rng.normal(size=(len(kp), 2)) * spread
        kp[:, 0] = kp[:, 0].clip(0, size[0] - 1)
        kp[:, 1] = kp[:, 1].clip(0, size[1] - 1)
    kp[kp[:, 2] == 0, :2] = 0.0
    return kp


def _write_coco_like(root: Path, split: str, look: Style | Domain, skeleton_name: str,
                     persons: int, rng: np.random.Generator, bar: tqdm) -> Path:
    sk = SKELETONS[skeleton_name]
    images, anns = [], []
    for img, people in _scenes(rng, look, persons, bar):
        image_id = len(images) + 1
        name = f"{split}_{image_id:06d}.jpg"
        _write_jpeg(root / "images" / name, img, look)
        images.append({"id": image_id, "file_name": name, "width": img.shape[1],
                       "height": img.shape[0]})
        for person in people:
            kp = _coco_keypoints(person, sk, look, (img.shape[1], img.shape[0]), rng)
            n_kp = int((kp[:, 2] > 0).sum())
            unlabelled = isinstance(look, Domain) and not person["labelled"]
            if (n_kp == 0 and not unlabelled) or person["box"][2] <= 0:
                continue
            flat = []
            for x, y, v in kp:
                flat += [_r(x), _r(y), int(v)]
            anns.append({"id": len(anns) + 1, "image_id": image_id, "category_id": 1,
                         "iscrowd": 0, "num_keypoints": n_kp, "keypoints": flat,
                         "bbox": [_r(v) for v in person["box"]],
                         "area": _r(max(person["area"], 1.0))})
    path = root / f"{split}.json"
    data = {"info": {"description": f"uni synthetic {look.name}-style {split}"},
            "images": images, "annotations": anns,
            "categories": _coco_categories(skeleton_name)}
    path.write_text(json.dumps(data, separators=(",", ":")))
    return path


def _mpii_labels(kp: np.ndarray, vis: np.ndarray, person: dict, rng: np.random.Generator
                 ) -> tuple[np.ndarray, list[float], float]:
    """MPII's own conventions (samples/mpii): thorax at the shoulders' midpoint, the upper neck
    just above it; (center, scale) from the joints' extent → (joints, center, scale)."""
    kp = kp.copy()
    names = SKELETONS["mpii16"].canonical
    at = {n: i for i, n in enumerate(names)}
    shoulders = kp[[at["left_shoulder"], at["right_shoulder"]], :2].mean(0)
    top = person["points"][IDX["head_top"]]
    kp[at["thorax"], :2] = shoulders
    kp[at["upper_neck"], :2] = shoulders + rng.uniform(*MPII_NECK) * (top - shoulders)
    lab = kp[vis > 0, :2]
    lo, hi = lab.min(0), lab.max(0)
    scale = rng.uniform(*MPII_SIDE) * max(float((hi - lo).max()), 1.0) / 200.0
    center = [lo[0] + rng.uniform(*MPII_CENTER[0]) * (hi - lo)[0],
              lo[1] + rng.uniform(*MPII_CENTER[1]) * (hi - lo)[1]]
    return kp, center, scale


def _write_mpii(root: Path, split: str, look: Style | Domain, persons: int,
                rng: np.random.Generator, bar: tqdm) -> Path:
    sk = SKELETONS["mpii16"]
    records = []
    for i, (img, people) in enumerate(_scenes(rng, look, persons, bar)):
        name = f"{split}_{i + 1:06d}.jpg"
        _write_jpeg(root / "images" / name, img, look)
        for person in people:
            uni = np.concatenate([person["points"], person["vis"][:, None]], 1)
            kp = unified_to_native(uni, sk)
            vis = (kp[:, 2] > 0).astype(int)  # MPII labels occluded joints too
            if vis.sum() == 0 or person["box"][2] <= 0:
                continue
            if isinstance(look, Domain) and look.mpii_labels:
                kp, center, scale = _mpii_labels(kp, vis, person, rng)
            else:
                x, y, bw, bh = person["box"]
                scale = max(bw, bh) / 200.0
                center = [x + bw / 2, y + bh / 2]
            # Stored 1-based like MATLAB MPII; the centre sits 15·scale above the box centre
            # because readers (HRNet lineage) move it down by that much.
            center = [center[0] + 1.0, center[1] - 15.0 * scale + 1.0]
            joints = [[_r(px + 1.0), _r(py + 1.0)] if v else [-1.0, -1.0]
                      for (px, py, _), v in zip(kp, vis, strict=True)]
            records.append({"image": name, "center": [_r(c) for c in center],
                            "scale": round(scale, 4), "joints": joints,
                            "joints_vis": vis.tolist(),
                            "head_box": [_r(v + 1.0) for v in person["head_box"]]})
    path = root / f"{split}.json"
    path.write_text(json.dumps(records, separators=(",", ":")))
    return path


def looks(same_domain: bool = False, marks: str | None = None) -> dict[str, Style | Domain]:
    """Each dataset's look: its own domain, or the shared style; marks overrides the
    domains' marks ("none", "domain", "shared": the measurement in the docs)."""
    if same_domain:
        return dict(STYLES)
    if marks is not None and marks not in MARKS:
        raise UniError(f"--marks: one of {', '.join(MARKS)}, got {marks!r}")
    return with_marks(marks) if marks else dict(DOMAINS)


def generate(out_dir: Path, persons: int = DEFAULT_PERSONS, seed: int = 0,
             overwrite: bool = False, progress: bool = True, same_domain: bool = False,
             marks: str | None = None) -> dict[str, Path]:
    """Write the synthetic COCO / MPII / Halpe datasets under out_dir.

    persons: figures per dataset (COCO-style and MPII-style, split ~85/15 into train/val);
    Halpe val gets 15 % of it. same_domain: every dataset in the one shared style.
    Returns {"coco/train": annotation path, ...}.
    """
    if persons < 2:
        raise UniError(f"--persons: need at least 2, got {persons}")
    style = looks(same_domain, marks)
    out_dir = Path(out_dir)
    targets = [out_dir / f for f in ("coco", "mpii", "halpe")]
    existing = [t for t in targets if t.exists()]
    if existing and not overwrite:
        raise UniError(f"{existing[0]}: already exists (remove it or pass --overwrite)")
    check_output_path(out_dir)  # a path under a file: one line, not a traceback
    out_dir.mkdir(parents=True, exist_ok=True)
    sizes = _split_sizes(persons)
    halpe = max(1, int(round(persons * VAL_FRACTION)))
    total = 2 * persons + halpe
    paths = {}
    # Build in a temporary folder beside the output and move in at the end: no half-written data.
    with tempfile.TemporaryDirectory(prefix=".synth-", dir=out_dir) as tmp, \
            tqdm(total=total, desc="synth", unit="person", disable=not progress) as bar:
        tmp = Path(tmp)
        for kind in ("coco", "mpii", "halpe"):
            (tmp / kind / "images").mkdir(parents=True)
        jobs = [("coco", "train"), ("coco", "val"), ("mpii", "train"), ("mpii", "val"),
                ("halpe", "val")]
        for j, (kind, split) in enumerate(jobs):
            rng = np.random.default_rng([seed, j])  # each split independent of the others
            n = halpe if kind == "halpe" else sizes[split]
            if kind == "mpii":
                _write_mpii(tmp / kind, split, style[kind], n, rng, bar)
            else:
                sk = "coco17" if kind == "coco" else "halpe26"
                _write_coco_like(tmp / kind, split, style[kind], sk, n, rng, bar)
            paths[f"{kind}/{split}"] = out_dir / kind / f"{split}.json"
        for t in targets:
            if t.exists():
                shutil.rmtree(t)
            (tmp / t.name).rename(t)
    return paths
