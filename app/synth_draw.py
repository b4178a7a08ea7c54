"""Drawing the synthetic people: the body model, the shared style (`uni synth --same-domain`)
and the pieces the datasets' own domains (app.synth_domains) reuse.

Every person is an articulated figure of the 21-keypoint unified skeleton (random limb lengths,
joint angles, lean, scale, thickness, clothing) drawn with cv2. Persons face the camera, so their
left side is on the image right, as for a frontal person in COCO / MPII. In the shared style a
coloured dot on each keypoint names it, alike in every dataset.
"""

from __future__ import annotations

import colorsys
from dataclasses import dataclass

import cv2
import numpy as np

from uniskel.core.skeletons import UNIFIED_NAMES

SHIFT = 4  # cv2 sub-pixel bits: drawn coordinates keep 1/16 px precision
IDX = {n: i for i, n in enumerate(UNIFIED_NAMES)}


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


def colour(rng: np.random.Generator, sat: tuple[float, float],
            val: tuple[float, float]) -> tuple[int, int, int]:
    r, g, b = colorsys.hsv_to_rgb(rng.uniform(), rng.uniform(*sat), rng.uniform(*val))
    return int(r * 255), int(g * 255), int(b * 255)


def background(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
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


def pose(rng: np.random.Generator, height: float, pelvis: np.ndarray) -> dict:
    """A random frontal body: (21, 2) unified keypoints in image pixels plus drawing sizes."""
    lean = np.deg2rad(rng.normal(0, 10))
    up = np.array([np.sin(lean), -np.cos(lean)])
    right = np.array([np.cos(lean), np.sin(lean)])  # image-right = the person's left
    # Body proportions are fractions of the height (feet to head top); pelvis at the origin.
    torso, neck, head_r = rng.uniform(0.27, 0.32), rng.uniform(0.04, 0.06), rng.uniform(0.055, 0.07)
    sw, hw = rng.uniform(0.09, 0.13), rng.uniform(0.06, 0.09)
    p = np.zeros((21, 2))
    p[IDX["thorax"]] = up * torso
    n_dir = _rot(up, rng.normal(0, 8))
    p[IDX["upper_neck"]] = p[IDX["thorax"]] + n_dir * neck
    head = p[IDX["upper_neck"]] + n_dir * head_r
    p[IDX["head_top"]] = head + n_dir * head_r
    m = np.array([-n_dir[1], n_dir[0]])  # head's image-right axis
    yaw = rng.uniform(-0.4, 0.4)
    p[IDX["nose"]] = head + m * (0.5 * yaw * head_r) - n_dir * (0.2 * head_r)
    for side, sgn in (("left", 1.0), ("right", -1.0)):
        p[IDX[f"{side}_eye"]] = head + m * ((0.4 * sgn + 0.35 * yaw) * head_r) \
            + n_dir * (0.2 * head_r)
        p[IDX[f"{side}_ear"]] = head + m * ((0.95 * sgn + 0.15 * yaw) * head_r)
        shoulder = p[IDX["thorax"]] + right * (sgn * sw) - up * 0.015
        hip = right * (sgn * hw)
        p[IDX[f"{side}_shoulder"]], p[IDX[f"{side}_hip"]] = shoulder, hip
        p[IDX[f"{side}_elbow"]], p[IDX[f"{side}_wrist"]] = _limb(
            rng, shoulder, up, sgn, (-25, 165), (-150, 40), (0.14, 0.18), (0.12, 0.16), 0.75)
        p[IDX[f"{side}_knee"]], p[IDX[f"{side}_ankle"]] = _limb(
            rng, hip, up, sgn, (-12, 45), (-35, 25), (0.22, 0.26), (0.21, 0.25), 0.8)
    return {"points": pelvis + p * height, "head": pelvis + head * height,
            "head_r": head_r * height, "limb": max(2.0, rng.uniform(0.03, 0.055) * height),
            "dot": max(1.5, 0.014 * height)}


def fx(pt: np.ndarray) -> tuple[int, int]:
    return int(round(pt[0] * (1 << SHIFT))), int(round(pt[1] * (1 << SHIFT)))


def draw_person(img: np.ndarray, owner: np.ndarray, tag: int, body: dict,
                 look: dict) -> None:
    """Draw one figure on img (RGB) and stamp `tag` into owner wherever it drew."""
    pts = body["points"]
    t = int(round(body["limb"]))

    def both(fn, colour, *args, **kw) -> None:
        fn(img, *args, colour, lineType=cv2.LINE_AA, shift=SHIFT, **kw)
        fn(owner, *args, tag, lineType=cv2.LINE_8, shift=SHIFT, **kw)

    def line(a: str, b: str, colour, width: int) -> None:
        both(cv2.line, colour, fx(pts[IDX[a]]), fx(pts[IDX[b]]), thickness=width)

    for side in ("left", "right"):  # legs behind the torso
        line(f"{side}_hip", f"{side}_knee", look["pants"], t + 1)
        line(f"{side}_knee", f"{side}_ankle", look["pants"], t)
    quad = np.array([fx(pts[IDX[n]]) for n in
                     ("left_shoulder", "right_shoulder", "right_hip", "left_hip")], np.int32)
    both(cv2.fillPoly, look["shirt"], [quad])
    line("thorax", "upper_neck", look["skin"], max(2, int(t * 0.8)))
    line("left_hip", "right_hip", look["pants"], t)
    for side in ("left", "right"):
        line(f"{side}_shoulder", f"{side}_elbow", look["shirt"], t)
        line(f"{side}_elbow", f"{side}_wrist", look["sleeve"], max(2, t - 1))
    both(cv2.circle, look["skin"], fx(body["head"]), int(round(body["head_r"] * 16)),
         thickness=-1)
    r = int(round(body["dot"] * 16))
    for k, name in enumerate(UNIFIED_NAMES):
        rk = r if name not in ("left_eye", "right_eye", "nose") else max(16, int(r * 0.8))
        both(cv2.circle, dot_colour(name), fx(pts[k]), rk, thickness=-1)


def shared_scene(rng: np.random.Generator, style: Style, n_people: int
                 ) -> tuple[np.ndarray, list[dict]]:
    """One image with n_people figures; each person dict gets points, vis (21,) 0/1/2, box."""
    w, h = (int(v) for v in rng.integers(style.image_size[0], style.image_size[1] + 1, 2))
    img = background(rng, w, h)
    owner = np.zeros((h, w), np.int32)  # 0 background, k+1 person k, -1 occluder
    bodies = []
    for _ in range(n_people):
        height = float(np.exp(rng.uniform(*np.log(style.height))))
        # The pelvis stays inside the image; limbs and heads may leave it (truncation).
        pelvis = np.array([rng.uniform(0.05, 0.95) * (w - 1),
                           rng.uniform(0.3, 0.9) * (h - 1)])
        bodies.append(pose(rng, height, pelvis))
    bodies.sort(key=lambda b: b["head_r"])  # small (far) people first, larger ones occlude
    for k, body in enumerate(bodies):
        draw_person(img, owner, k + 1, body, clothes(rng, style.saturation, style.value))
    occlude(rng, img, owner)
    return img, people_of(bodies, owner)


def clothes(rng: np.random.Generator, saturation: tuple[float, float],
            value: tuple[float, float]) -> dict:
    """One person's skin, shirt, pants and sleeve colours."""
    skin = colour(rng, (0.2, 0.6), (0.35, 0.95))
    skin = (max(skin), int(np.mean(skin)), min(skin))  # warm skin-like tones
    shirt = colour(rng, saturation, value)
    return {"skin": skin, "shirt": shirt, "pants": colour(rng, saturation, value),
            "sleeve": shirt if rng.uniform() < 0.5 else skin}


def occlude(rng: np.random.Generator, img: np.ndarray, owner: np.ndarray) -> None:
    """A 30 % chance of a block in front of everything (owner -1 under it)."""
    if rng.uniform() < 0.3:
        h, w = owner.shape
        c = tuple(int(v) for v in rng.integers(0, 256, 3))
        x0, y0 = int(rng.integers(0, w)), int(rng.integers(0, h))
        x1, y1 = x0 + int(rng.integers(15, w // 3)), y0 + int(rng.integers(15, h // 3))
        cv2.rectangle(img, (x0, y0), (x1, y1), c, -1)
        cv2.rectangle(owner, (x0, y0), (x1, y1), -1, -1)


def people_of(bodies: list[dict], owner: np.ndarray) -> list[dict]:
    """Each drawn body → points, vis (21,) 0 outside / 1 hidden / 2 seen, box and area from its
    visible pixels in owner, MPII-like head box."""
    h, w = owner.shape
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
    return people
