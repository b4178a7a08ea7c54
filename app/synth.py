"""Synthetic pose datasets in the real file formats: stick people on textured backgrounds.

Every person is an articulated figure of the 21-keypoint unified skeleton (random limb lengths,
joint angles, lean, scale, thickness, clothing) drawn with cv2, with a coloured dot on each
keypoint so a CNN can find all 21 from pixels. Persons face the camera, so their left side is on
the image right, as for a frontal person in COCO / MPII.

Writes, under OUT:
- ``coco/{train,val}.json``: COCO keypoints (17), boxes and areas from the drawn pixels;
- ``mpii/{train,val}.json``: MMPose's MPII list (16 joints, center, scale, head_box), 1-based;
- ``halpe/val.json``: Halpe-26, COCO-style, feet unlabeled;
- JPEGs under ``OUT/<format>/images/``.
COCO-style and MPII-style scenes differ like the real datasets (COCO: more, smaller people and
saturated clothes; MPII: fewer, larger people and muted clothes) but share the body model.
The same seed gives byte-identical files.
"""

from __future__ import annotations

import colorsys
import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from uniskel.core.errors import UniError
from uniskel.core.files import check_output_path
from uniskel.core.skeletons import SKELETONS, UNIFIED_NAMES, unified_to_native

DEFAULT_PERSONS = 600  # per dataset (COCO-style and MPII-style); Halpe val gets 15 % of it
VAL_FRACTION = 0.15
JPEG_QUALITY = 90
_SHIFT = 4  # cv2 sub-pixel bits: drawn coordinates keep 1/16 px precision
_IDX = {n: i for i, n in enumerate(UNIFIED_NAMES)}


@dataclass(frozen=True)
class Style:
    """How one dataset's scenes look: image size, people per image, person height, palette."""

    name: str
    image_size: tuple[int, int]  # min, max side in pixels
    people: tuple[int, int]  # min, max persons per image
    height: tuple[float, float]  # min, max person height (feet to head top) in pixels
    saturation: tuple[float, float]
    value: tuple[float, float]


STYLES = {
    "coco": Style("coco", (256, 320), (1, 4), (60.0, 250.0), (0.55, 1.0), (0.55, 1.0)),
    "mpii": Style("mpii", (288, 320), (1, 2), (150.0, 290.0), (0.1, 0.45), (0.25, 0.7)),
    "halpe": Style("halpe", (256, 320), (1, 4), (80.0, 270.0), (0.1, 1.0), (0.25, 1.0)),
}

# Dot colours (RGB) per keypoint kind: left and right share one so that a horizontal flip with
# left/right label swap (training augmentation, flip test) stays consistent with the pixels.
_DOT = {
    "nose": (230, 30, 30), "eye": (20, 60, 230), "ear": (150, 60, 20), "shoulder": (255, 200, 0),
    "elbow": (0, 200, 200), "wrist": (230, 0, 230), "hip": (255, 120, 0), "knee": (0, 170, 60),
    "ankle": (120, 0, 200), "pelvis": (255, 255, 255), "thorax": (40, 40, 40),
    "upper_neck": (140, 255, 140), "head_top": (255, 255, 90),
}


def dot_colour(name: str) -> tuple[int, int, int]:
    """RGB colour of the dot drawn on unified keypoint `name`."""
    return _DOT[name.split("_", 1)[1] if name.startswith(("left_", "right_")) else name]


def _colour(rng: np.random.Generator, sat: tuple[float, float],
            val: tuple[float, float]) -> tuple[int, int, int]:
    r, g, b = colorsys.hsv_to_rgb(rng.uniform(), rng.uniform(*sat), rng.uniform(*val))
    return int(r * 255), int(g * 255), int(b * 255)


def _background(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    """(h, w, 3) uint8: smooth noise, a gradient, stripes or a checkerboard, plus grain."""
    kind = rng.integers(4)
    c0, c1 = (rng.uniform(0, 255, 3) for _ in range(2))
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    if kind == 0:  # smooth noise: a coarse random grid upsampled
        g = rng.uniform(0, 255, (int(rng.integers(3, 12)), int(rng.integers(3, 12)), 3))
        img = cv2.resize(g.astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC)
    else:
        t = np.deg2rad(rng.uniform(0, 180))
        u = (xs * np.cos(t) + ys * np.sin(t)) / max(w, h)
        if kind == 1:
            a = (u - u.min()) / max(float(u.max() - u.min()), 1e-6)
        elif kind == 2:
            a = 0.5 + 0.5 * np.sin(u * rng.uniform(8, 60))
        else:
            p = rng.uniform(10, 40)
            a = ((xs // p + ys // p) % 2).astype(np.float32)
        img = c0 * (1 - a[..., None]) + c1 * a[..., None]
    img = img + rng.normal(0, rng.uniform(2, 12), (h, w, 1))
    return np.clip(img, 0, 255).astype(np.uint8)


def _rot(v: np.ndarray, deg: float) -> np.ndarray:
    t = np.deg2rad(deg)
    return np.array([v[0] * np.cos(t) - v[1] * np.sin(t), v[0] * np.sin(t) + v[1] * np.cos(t)])


def _limb(rng: np.random.Generator, root: np.ndarray, up: np.ndarray, sgn: float,
          bend: tuple[float, float], turn: tuple[float, float], upper: tuple[float, float],
          lower: tuple[float, float], shrink: float) -> tuple[np.ndarray, np.ndarray]:
    """A random two-segment limb from root → (middle joint, end joint).

    Angles are measured from "down the body", positive = away from the midline (sgn: +1 for the
    person's left, -1 for the right); shrink is the shortest length factor (foreshortening).
    """
    a1 = rng.uniform(*bend)
    a2 = a1 + rng.uniform(*turn)
    seg1 = _rot(-up, -sgn * a1) * rng.uniform(*upper) * rng.uniform(shrink, 1.0)
    seg2 = _rot(-up, -sgn * a2) * rng.uniform(*lower) * rng.uniform(shrink, 1.0)
    return root + seg1, root + seg1 + seg2


def _pose(rng: np.random.Generator, height: float, pelvis: np.ndarray) -> dict:
    """A random frontal body: (21, 2) unified keypoints in image pixels plus drawing sizes."""
    lean = np.deg2rad(rng.normal(0, 10))
    up = np.array([np.sin(lean), -np.cos(lean)])
    right = np.array([np.cos(lean), np.sin(lean)])  # image-right = the person's left
    # Body proportions are fractions of the height (feet to head top); pelvis at the origin.
    torso, neck, head_r = rng.uniform(0.27, 0.32), rng.uniform(0.04, 0.06), rng.uniform(0.055, 0.07)
    sw, hw = rng.uniform(0.09, 0.13), rng.uniform(0.06, 0.09)
    p = np.zeros((21, 2))
    p[_IDX["thorax"]] = up * torso
    n_dir = _rot(up, rng.normal(0, 8))
    p[_IDX["upper_neck"]] = p[_IDX["thorax"]] + n_dir * neck
    head = p[_IDX["upper_neck"]] + n_dir * head_r
    p[_IDX["head_top"]] = head + n_dir * head_r
    m = np.array([-n_dir[1], n_dir[0]])  # head's image-right axis
    yaw = rng.uniform(-0.4, 0.4)
    p[_IDX["nose"]] = head + m * (0.5 * yaw * head_r) - n_dir * (0.2 * head_r)
    for side, sgn in (("left", 1.0), ("right", -1.0)):
        p[_IDX[f"{side}_eye"]] = head + m * ((0.4 * sgn + 0.35 * yaw) * head_r) \
            + n_dir * (0.2 * head_r)
        p[_IDX[f"{side}_ear"]] = head + m * ((0.95 * sgn + 0.15 * yaw) * head_r)
        shoulder = p[_IDX["thorax"]] + right * (sgn * sw) - up * 0.015
        hip = right * (sgn * hw)
        p[_IDX[f"{side}_shoulder"]], p[_IDX[f"{side}_hip"]] = shoulder, hip
        p[_IDX[f"{side}_elbow"]], p[_IDX[f"{side}_wrist"]] = _limb(
            rng, shoulder, up, sgn, (-25, 165), (-150, 40), (0.14, 0.18), (0.12, 0.16), 0.75)
        p[_IDX[f"{side}_knee"]], p[_IDX[f"{side}_ankle"]] = _limb(
            rng, hip, up, sgn, (-12, 45), (-35, 25), (0.22, 0.26), (0.21, 0.25), 0.8)
    return {"points": pelvis + p * height, "head": pelvis + head * height,
            "head_r": head_r * height, "limb": max(2.0, rng.uniform(0.03, 0.055) * height),
            "dot": max(1.5, 0.014 * height)}


def _fx(pt: np.ndarray) -> tuple[int, int]:
    return int(round(pt[0] * (1 << _SHIFT))), int(round(pt[1] * (1 << _SHIFT)))


def _draw_person(img: np.ndarray, owner: np.ndarray, tag: int, body: dict,
                 look: dict) -> None:
    """Draw one figure on img (RGB) and stamp `tag` into owner wherever it drew."""
    pts = body["points"]
    t = int(round(body["limb"]))

    def both(fn, colour, *args, **kw) -> None:
        fn(img, *args, colour, lineType=cv2.LINE_AA, shift=_SHIFT, **kw)
        fn(owner, *args, tag, lineType=cv2.LINE_8, shift=_SHIFT, **kw)

    def line(a: str, b: str, colour, width: int) -> None:
        both(cv2.line, colour, _fx(pts[_IDX[a]]), _fx(pts[_IDX[b]]), thickness=width)

    for side in ("left", "right"):  # legs behind the torso
        line(f"{side}_hip", f"{side}_knee", look["pants"], t + 1)
        line(f"{side}_knee", f"{side}_ankle", look["pants"], t)
    quad = np.array([_fx(pts[_IDX[n]]) for n in
                     ("left_shoulder", "right_shoulder", "right_hip", "left_hip")], np.int32)
    both(cv2.fillPoly, look["shirt"], [quad])
    line("thorax", "upper_neck", look["skin"], max(2, int(t * 0.8)))
    line("left_hip", "right_hip", look["pants"], t)
    for side in ("left", "right"):
        line(f"{side}_shoulder", f"{side}_elbow", look["shirt"], t)
        line(f"{side}_elbow", f"{side}_wrist", look["sleeve"], max(2, t - 1))
    both(cv2.circle, look["skin"], _fx(body["head"]), int(round(body["head_r"] * 16)),
         thickness=-1)
    r = int(round(body["dot"] * 16))
    for k, name in enumerate(UNIFIED_NAMES):
        rk = r if name not in ("left_eye", "right_eye", "nose") else max(16, int(r * 0.8))
        both(cv2.circle, dot_colour(name), _fx(pts[k]), rk, thickness=-1)


def _scene(rng: np.random.Generator, style: Style, n_people: int) -> tuple[np.ndarray, list[dict]]:
    """One image with n_people figures; each person dict gets points, vis (21,) 0/1/2, box."""
    w, h = (int(v) for v in rng.integers(style.image_size[0], style.image_size[1] + 1, 2))
    img = _background(rng, w, h)
    owner = np.zeros((h, w), np.int32)  # 0 background, k+1 person k, -1 occluder
    bodies = []
    for _ in range(n_people):
        height = float(np.exp(rng.uniform(*np.log(style.height))))
        # The pelvis stays inside the image; limbs and heads may leave it (truncation).
        pelvis = np.array([rng.uniform(0.05, 0.95) * (w - 1),
                           rng.uniform(0.3, 0.9) * (h - 1)])
        bodies.append(_pose(rng, height, pelvis))
    bodies.sort(key=lambda b: b["head_r"])  # small (far) people first, larger ones occlude
    for k, body in enumerate(bodies):
        skin = _colour(rng, (0.2, 0.6), (0.35, 0.95))
        skin = (max(skin), int(np.mean(skin)), min(skin))  # warm skin-like tones
        shirt = _colour(rng, style.saturation, style.value)
        look = {"skin": skin, "shirt": shirt, "pants": _colour(rng, style.saturation, style.value),
                "sleeve": shirt if rng.uniform() < 0.5 else skin}
        _draw_person(img, owner, k + 1, body, look)
    if rng.uniform() < 0.3:  # an occluder in front of everything
        c = tuple(int(v) for v in rng.integers(0, 256, 3))
        x0, y0 = int(rng.integers(0, w)), int(rng.integers(0, h))
        x1, y1 = x0 + int(rng.integers(15, w // 3)), y0 + int(rng.integers(15, h // 3))
        cv2.rectangle(img, (x0, y0), (x1, y1), c, -1)
        cv2.rectangle(owner, (x0, y0), (x1, y1), -1, -1)
    areas = np.bincount(owner.clip(0).ravel(), minlength=len(bodies) + 1)
    people = []
    for k, body in enumerate(bodies):
        pts = body["points"]
        inside = (pts[:, 0] >= 0) & (pts[:, 0] <= w - 1) & (pts[:, 1] >= 0) & (pts[:, 1] <= h - 1)
        xi = np.clip(np.round(pts[:, 0]).astype(int), 0, w - 1)
        yi = np.clip(np.round(pts[:, 1]).astype(int), 0, h - 1)
        seen = owner[yi, xi] == k + 1
        vis = np.where(inside, np.where(seen, 2, 1), 0)
        ys, xs = np.nonzero(owner == k + 1)
        if len(xs):
            box = [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1),
                   float(ys.max() - ys.min() + 1)]
        else:
            box = [0.0, 0.0, 0.0, 0.0]
        r = body["head_r"]
        head = body["head"]
        # MPII-like head box: the head square grown a little towards the neck.
        head_box = [head[0] - 1.1 * r, head[1] - 1.1 * r, head[0] + 1.1 * r, head[1] + 1.3 * r]
        people.append({"points": pts, "vis": vis, "box": box, "area": float(areas[k + 1]),
                       "head_box": head_box})
    return img, people


def _r(x: float) -> float:
    return round(float(x), 2)


def _split_sizes(persons: int) -> dict[str, int]:
    val = max(1, int(round(persons * VAL_FRACTION)))
    return {"train": max(1, persons - val), "val": val}


def _scenes(rng: np.random.Generator, style: Style, persons: int, bar: tqdm):
    """Yield (image, people) until `persons` figures are drawn."""
    left = persons
    while left > 0:
        n = min(left, int(rng.integers(style.people[0], style.people[1] + 1)))
        left -= n
        bar.update(n)
        yield _scene(rng, style, n)


def _write_jpeg(path: Path, img: np.ndarray) -> None:
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(img, cv2.COLOR_RGB2BGR),
                           [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
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


def _write_coco_like(root: Path, split: str, style: Style, skeleton_name: str, persons: int,
                     rng: np.random.Generator, bar: tqdm) -> Path:
    sk = SKELETONS[skeleton_name]
    images, anns = [], []
    for img, people in _scenes(rng, style, persons, bar):
        image_id = len(images) + 1
        name = f"{split}_{image_id:06d}.jpg"
        _write_jpeg(root / "images" / name, img)
        images.append({"id": image_id, "file_name": name, "width": img.shape[1],
                       "height": img.shape[0]})
        for person in people:
            uni = np.concatenate([person["points"], person["vis"][:, None]], 1)
            kp = unified_to_native(uni, sk)  # keypoints unknown to unified (Halpe feet) stay 0
            kp[kp[:, 2] == 0, :2] = 0.0
            n_kp = int((kp[:, 2] > 0).sum())
            if n_kp == 0 or person["box"][2] <= 0:
                continue
            flat = []
            for x, y, v in kp:
                flat += [_r(x), _r(y), int(v)]
            anns.append({"id": len(anns) + 1, "image_id": image_id, "category_id": 1,
                         "iscrowd": 0, "num_keypoints": n_kp, "keypoints": flat,
                         "bbox": [_r(v) for v in person["box"]],
                         "area": _r(max(person["area"], 1.0))})
    path = root / f"{split}.json"
    data = {"info": {"description": f"uni synthetic {style.name}-style {split}"},
            "images": images, "annotations": anns,
            "categories": _coco_categories(skeleton_name)}
    path.write_text(json.dumps(data, separators=(",", ":")))
    return path


def _write_mpii(root: Path, split: str, style: Style, persons: int,
                rng: np.random.Generator, bar: tqdm) -> Path:
    sk = SKELETONS["mpii16"]
    records = []
    for i, (img, people) in enumerate(_scenes(rng, style, persons, bar)):
        name = f"{split}_{i + 1:06d}.jpg"
        _write_jpeg(root / "images" / name, img)
        for person in people:
            uni = np.concatenate([person["points"], person["vis"][:, None]], 1)
            kp = unified_to_native(uni, sk)
            vis = (kp[:, 2] > 0).astype(int)  # MPII labels occluded joints too
            if vis.sum() == 0 or person["box"][2] <= 0:
                continue
            x, y, bw, bh = person["box"]
            scale = max(bw, bh) / 200.0
            # Stored 1-based like MATLAB MPII; the centre sits 15·scale above the box centre
            # because readers (HRNet lineage) move it down by that much.
            center = [x + bw / 2 + 1.0, y + bh / 2 - 15.0 * scale + 1.0]
            joints = [[_r(px + 1.0), _r(py + 1.0)] if v else [-1.0, -1.0]
                      for (px, py, _), v in zip(kp, vis, strict=True)]
            records.append({"image": name, "center": [_r(c) for c in center],
                            "scale": round(scale, 4), "joints": joints,
                            "joints_vis": vis.tolist(),
                            "head_box": [_r(v + 1.0) for v in person["head_box"]]})
    path = root / f"{split}.json"
    path.write_text(json.dumps(records, separators=(",", ":")))
    return path


def generate(out_dir: Path, persons: int = DEFAULT_PERSONS, seed: int = 0,
             overwrite: bool = False, progress: bool = True) -> dict[str, Path]:
    """Write the synthetic COCO / MPII / Halpe datasets under out_dir.

    persons: figures per dataset (COCO-style and MPII-style, split ~85/15 into train/val);
    Halpe val gets 15 % of it. Returns {"coco/train": annotation path, ...}.
    """
    if persons < 2:
        raise UniError(f"--persons: need at least 2, got {persons}")
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
                _write_mpii(tmp / kind, split, STYLES[kind], n, rng, bar)
            else:
                sk = "coco17" if kind == "coco" else "halpe26"
                _write_coco_like(tmp / kind, split, STYLES[kind], sk, n, rng, bar)
            paths[f"{kind}/{split}"] = out_dir / kind / f"{split}.json"
        for t in targets:
            if t.exists():
                shutil.rmtree(t)
            (tmp / t.name).rename(t)
    return paths
