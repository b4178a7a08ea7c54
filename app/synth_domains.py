"""Each synthetic dataset's own domain: how its images look, who is in them, how they are framed.

The figures, their constants and their sources are in docs/conventions.md, "Synthetic datasets";
tests/test_synth_stats.py checks the drawn data against that page. `uni synth --same-domain`
draws every dataset in the shared style instead (app.synth_draw.shared_scene).
"""

from __future__ import annotations

import colorsys
from dataclasses import dataclass, replace

import cv2
import numpy as np

from uniskel.app.synth_draw import (
    IDX,
    SHIFT,
    background,
    clothes,
    colour,
    dot_colour,
    fx,
    occlude,
    people_of,
    pose,
)
from uniskel.core.skeletons import UNIFIED_NAMES


@dataclass(frozen=True)
class Domain:
    """One dataset's scenes. Fractions are of the image height unless said otherwise."""

    name: str
    aspect: tuple[float, float]  # image width / height, min and max (samples/: measured)
    long_side: int  # pixels: half the real images' 640 / 1280 keeps the demo on a CPU
    people: tuple[int, int]  # labelled persons per image, min and max
    small_people: float  # chance of one more person too small to label (COCO: no keypoints)
    height: tuple[float, float]  # a labelled figure's height (feet to head top)
    small_height: tuple[float, float]
    pelvis_y: tuple[float, float]  # the pelvis row
    backdrop: str  # "objects" (everyday scenes) or "room" (activity videos)
    saturation: tuple[float, float]  # clothes
    value: tuple[float, float]
    limbs: str  # "round" (thick lines) or "tapered" (quads narrowing towards the hand / foot)
    blur: tuple[float, float]  # Gaussian sigma in pixels over the whole frame
    jpeg_quality: int
    marks: str  # "none", "domain" (own dot palette) or "shared" (the shared style's dots)
    hue_turn: float  # "domain" marks: the shared style's dot colours turned by this much hue
    label_noise: bool  # annotator noise of std sigma · sqrt(area) (COCO's OKS sigmas)
    mpii_labels: bool  # MPII's thorax / upper neck convention, center and scale framing


COCO = Domain(
    name="coco", aspect=(1.45, 1.65), long_side=320, people=(1, 5), small_people=0.5,
    height=(0.3, 0.9), small_height=(0.08, 0.2), pelvis_y=(0.35, 0.95), backdrop="objects",
    saturation=(0.55, 1.0), value=(0.55, 1.0), limbs="round", blur=(0.0, 0.0),
    jpeg_quality=90, marks="none", hue_turn=0.0, label_noise=True, mpii_labels=False)
MPII = Domain(
    name="mpii", aspect=(16 / 9, 16 / 9), long_side=320, people=(1, 2), small_people=0.0,
    height=(0.65, 0.95), small_height=(0.0, 0.0), pelvis_y=(0.5, 0.62), backdrop="room",
    saturation=(0.1, 0.45), value=(0.25, 0.7), limbs="tapered", blur=(0.6, 1.4),
    jpeg_quality=60, marks="none", hue_turn=0.5, label_noise=False, mpii_labels=True)
# The real Halpe validation set annotates COCO val2017 images: Halpe is drawn as COCO is.
DOMAINS = {"coco": COCO, "mpii": MPII, "halpe": replace(COCO, name="halpe")}
MARKS = ("none", "domain", "shared")


def with_marks(marks: str) -> dict[str, Domain]:
    """DOMAINS with every dataset's marks set to `marks` (the measurement in the docs)."""
    return {k: replace(d, marks=marks) for k, d in DOMAINS.items()}


def mark_colour(name: str, d: Domain) -> tuple[int, int, int]:
    """The mark on unified keypoint `name` in domain d: the shared style's dot, hue turned."""
    r, g, b = (c / 255 for c in dot_colour(name))
    hue, sat, val = colorsys.rgb_to_hsv(r, g, b)
    r, g, b = colorsys.hsv_to_rgb((hue + d.hue_turn) % 1.0, sat, val)
    return int(r * 255), int(g * 255), int(b * 255)


def _backdrop(rng: np.random.Generator, d: Domain, w: int, h: int) -> np.ndarray:
    """Everyday scenes: the shared style's textures with common objects strewn over them.
    Activity videos: a room, wall above a floor, a few upright pieces of furniture, muted."""
    if d.backdrop == "objects":
        img = background(rng, w, h)
        for _ in range(int(rng.integers(3, 9))):
            c = colour(rng, (0.4, 1.0), (0.3, 1.0))
            x, y = int(rng.integers(0, w)), int(rng.integers(0, h))
            sx, sy = int(rng.integers(6, w // 5)), int(rng.integers(6, h // 4))
            if rng.uniform() < 0.5:
                cv2.rectangle(img, (x, y), (x + sx, y + sy), c, -1)
            else:
                cv2.ellipse(img, (x, y), (sx, sy), float(rng.uniform(0, 180)), 0, 360, c, -1,
                            cv2.LINE_AA)
        return img
    horizon = int(rng.uniform(0.45, 0.8) * h)
    img = np.empty((h, w, 3), np.float32)
    for rows, shade in ((slice(0, horizon), 1.0), (slice(horizon, h), 0.7)):
        img[rows] = np.array(colour(rng, (0.05, 0.35), (0.3, 0.8)), np.float32) * shade
    ys = np.arange(h, dtype=np.float32)[:, None, None] / h
    img *= 0.8 + 0.4 * ys  # light falling from above
    for _ in range(int(rng.integers(1, 4))):
        x0 = int(rng.integers(0, w))
        x1 = x0 + int(rng.integers(10, w // 4))
        y0 = int(rng.uniform(0.1, 0.6) * h)
        img[y0:horizon + int(rng.integers(0, h // 6)), x0:x1] = colour(rng, (0.05, 0.4),
                                                                      (0.2, 0.7))
    img += rng.normal(0, rng.uniform(2, 8), (h, w, 1))
    return np.clip(img, 0, 255).astype(np.uint8)


def _draw_body(img: np.ndarray, owner: np.ndarray, tag: int, body: dict, look: dict,
               d: Domain) -> None:
    """One figure: limbs in the domain's rendering, then what any real body shows (a face with
    eyes, nose and ears, hands, shoes), then the domain's marks if it has any."""
    pts = body["points"]
    t = max(2.0, body["limb"])

    def both(fn, c, *args, **kw) -> None:
        fn(img, *args, c, lineType=cv2.LINE_AA, shift=SHIFT, **kw)
        fn(owner, *args, tag, lineType=cv2.LINE_8, shift=SHIFT, **kw)

    def limb(a: str, b: str, c, width: float) -> None:
        p, q = pts[IDX[a]], pts[IDX[b]]
        if d.limbs == "round":
            both(cv2.line, c, fx(p), fx(q), thickness=max(2, int(round(width))))
            return
        u = q - p
        n = np.array([-u[1], u[0]]) / max(float(np.hypot(*u)), 1e-6)
        quad = np.array([fx(p + n * width / 2), fx(q + n * width * 0.35),
                         fx(q - n * width * 0.35), fx(p - n * width / 2)], np.int32)
        both(cv2.fillConvexPoly, c, quad)

    def disc(centre: np.ndarray, radius: float, c) -> None:
        both(cv2.circle, c, fx(centre), max(8, int(round(radius * 16))), thickness=-1)

    shoe = tuple(int(v * 0.35) for v in look["pants"])
    for side, sgn in (("left", 1.0), ("right", -1.0)):  # legs behind the torso
        limb(f"{side}_hip", f"{side}_knee", look["pants"], t + 1)
        limb(f"{side}_knee", f"{side}_ankle", look["pants"], t)
        ankle = pts[IDX[f"{side}_ankle"]]
        toe = ankle + np.array([sgn * 0.9 * t, 0.35 * t])  # feet point outwards, a little down
        both(cv2.line, shoe, fx(ankle), fx(toe), thickness=max(2, int(round(t * 0.8))))
    quad = np.array([fx(pts[IDX[n]]) for n in
                     ("left_shoulder", "right_shoulder", "right_hip", "left_hip")], np.int32)
    both(cv2.fillPoly, look["shirt"], [quad])
    limb("thorax", "upper_neck", look["skin"], max(2.0, t * 0.8))
    limb("left_hip", "right_hip", look["pants"], t)
    for side in ("left", "right"):
        limb(f"{side}_shoulder", f"{side}_elbow", look["shirt"], t)
        limb(f"{side}_elbow", f"{side}_wrist", look["sleeve"], max(2.0, t - 1))
        wrist, elbow = pts[IDX[f"{side}_wrist"]], pts[IDX[f"{side}_elbow"]]
        fore = (wrist - elbow) / max(float(np.hypot(*(wrist - elbow))), 1e-6)
        disc(wrist + fore * 0.45 * t, 0.6 * t, look["skin"])  # the hand beyond the wrist
    r = body["head_r"]
    for side in ("left", "right"):  # ears behind the head's outline
        disc(pts[IDX[f"{side}_ear"]], 0.3 * r, tuple(int(v * 0.8) for v in look["skin"]))
    disc(body["head"], r, look["skin"])
    hair = tuple(int(v) for v in look["hair"])
    both(cv2.ellipse, hair, fx(body["head"]), (int(r * 16), int(r * 16)),
         float(np.degrees(np.arctan2(*(pts[IDX["head_top"]] - body["head"])[::-1]))),
         -75, 75, thickness=-1)
    for name in ("left_eye", "right_eye"):
        disc(pts[IDX[name]], 0.16 * r, (25, 20, 20))
    disc(pts[IDX["nose"]], 0.14 * r, tuple(int(v * 0.6) for v in look["skin"]))
    if d.marks == "none":
        return
    radius = body["dot"]
    for k, name in enumerate(UNIFIED_NAMES):
        rk = radius if name not in ("left_eye", "right_eye", "nose") else radius * 0.8
        c = dot_colour(name) if d.marks == "shared" else mark_colour(name, d)
        disc(pts[k], rk, c)


def domain_scene(rng: np.random.Generator, d: Domain, n_people: int
                 ) -> tuple[np.ndarray, list[dict]]:
    """One image of domain d with n_people labelled figures (and maybe one too small to label);
    each person dict gets points, vis, box, area, head_box and labelled."""
    w = d.long_side
    h = int(round(w / rng.uniform(*d.aspect)))
    img = _backdrop(rng, d, w, h)
    owner = np.zeros((h, w), np.int32)  # 0 background, k+1 person k, -1 occluder
    bodies = []
    for k in range(n_people + int(rng.uniform() < d.small_people)):
        small = k >= n_people
        height = rng.uniform(*(d.small_height if small else d.height)) * h
        pelvis = np.array([rng.uniform(0.05, 0.95) * (w - 1),
                           rng.uniform(*((0.3, 0.8) if small else d.pelvis_y)) * (h - 1)])
        bodies.append(dict(pose(rng, height, pelvis), labelled=not small))
    bodies.sort(key=lambda b: b["head_r"])  # small (far) people first, larger ones occlude
    for k, body in enumerate(bodies):
        look = clothes(rng, d.saturation, d.value)
        look["hair"] = np.array(colour(rng, (0.3, 0.8), (0.05, 0.45)))
        _draw_body(img, owner, k + 1, body, look, d)
    occlude(rng, img, owner)
    if d.blur[1] > 0:  # video frames: defocus and motion
        img = cv2.GaussianBlur(img, (0, 0), float(rng.uniform(*d.blur)))
    people = people_of(bodies, owner)
    for person, body in zip(people, bodies, strict=True):
        person["labelled"] = body["labelled"]
    return img, people
