"""Models → their unified skeleton's keypoints per person box (`uni predict`, evaluate's start).

A MODEL is a student (run directory or .pt checkpoint) or a described ONNX model (an exported
student or any teacher). Both become a `Predictor`: person crops → keypoints in crop pixels in
the order of its unified skeleton (a student's: the one it was trained with, from its
checkpoint; a teacher's: unified21, or its own when that holds all of unified21) plus the mask
of those keypoints the model knows; a teacher's missing keypoints get score 0 at (0, 0).

Top-down on given boxes: crop (core.crops, the model's padding), run with the flip test, decode
to crop pixels, map them back through the inverse of image → crop.
- Heatmap models: flip test = merged maps (core.heatmaps.merge_flipped), peaks decoded
  (core.heatmaps), heatmap px → crop px by the inverse of geometry.crop_to_heatmap; keypoint
  score = heatmap peak value.
- SimCC models (RTMPose students, SimCC ONNX models): MMPose's way (RTMCCHead.predict): flip
  test = mean of the plain and core.simcc.flip_simcc'd mirrored logits, core.simcc.decode_simcc;
  keypoint score = the smaller of the two raw maxima (MMPose's score: raw logits, not
  probabilities, for ONNX models whatever their declared activation). MMPose rescores RTMPose
  with the same keypoint threshold, so KEYPOINT_SCORE_THRESHOLD applies to these as it does.
Instance score (MMPose "bbox_keypoint" rescoring): box score × mean of the keypoint scores
above KEYPOINT_SCORE_THRESHOLD among the keypoints the model knows (0 when none is).

`uni predict` boxes: a COCO detection results JSON (evaluation/coco_results.py); an image matches
the image_id equal to the number formed by the digits of its file name (COCO style:
000000000785.jpg → 785). Without --boxes the whole image is one box. Its predictions.json is
COCO keypoint results in the model's unified order (evaluation/coco_results.py).
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from uniskel.core.crops import DEFAULT_MEAN, DEFAULT_STD, crop_person, normalize, read_image
from uniskel.core.draw import draw_box, draw_skeleton, save_rgb
from uniskel.core.errors import UniError
from uniskel.core.geometry import PADDING, apply, crop_to_heatmap, invert
from uniskel.core.heatmaps import decode_heatmaps, merge_flipped
from uniskel.core.simcc import decode_simcc, flip_simcc
from uniskel.core.skeletons import UNIFIED, Skeleton, native_to_unified
from uniskel.evaluation.coco_results import read_detections, result_record, write_results
from uniskel.pipeline.devices import parse_device
from uniskel.pipeline.teachers import Teacher
from uniskel.student.checkpoint import load_student, run_name, student_unified

KEYPOINT_SCORE_THRESHOLD = 0.2  # MMPose's keypoint_score_thr for instance rescoring


def heatmap_keypoints(heatmaps: np.ndarray, input_wh: tuple[int, int]
                      ) -> tuple[np.ndarray, np.ndarray]:
    """heatmaps (N, K, h, w) of (w, h) crops → coords (N, K, 2) float64 crop px, scores (N, K)."""
    coords, scores = decode_heatmaps(heatmaps)  # heatmap px
    to_crop = invert(crop_to_heatmap(input_wh, (heatmaps.shape[3], heatmaps.shape[2])))
    return apply(to_crop, coords), scores


def simcc_keypoints(plain: tuple[np.ndarray, np.ndarray],
                    flipped: tuple[np.ndarray, np.ndarray] | None, flip_index: np.ndarray,
                    split: float) -> tuple[np.ndarray, np.ndarray]:
    """SimCC outputs (simcc_x (N, K, Wb), simcc_y (N, K, Hb)) of the crops and, for the flip
    test, of their mirrors → coords (N, K, 2) crop px, scores (N, K) (RTMCCHead.predict)."""
    x, y = plain
    if flipped is not None:
        fx, fy = flip_simcc(flipped[0], flipped[1], flip_index)
        x, y = (x + fx) * 0.5, (y + fy) * 0.5
    return decode_simcc(x, y, split)


class Predictor:
    """crops (N, H, W, 3) uint8 RGB → keypoints in crop pixels in `unified`'s order.

    name, input_wh (w, h), padding (crop box = person box × padding), unified (its U keypoints),
    known: (U,) bool. A heatmap predictor need only define `heatmaps`.
    """

    name: str
    input_wh: tuple[int, int]
    padding: float = PADDING
    unified: Skeleton = UNIFIED
    known: np.ndarray

    def heatmaps(self, crops: np.ndarray, flip_test: bool = True) -> np.ndarray:
        """→ (N, U, h, w) float32 (heatmap models only)."""
        raise NotImplementedError

    def keypoints(self, crops: np.ndarray, flip_test: bool = True
                  ) -> tuple[np.ndarray, np.ndarray]:
        """→ coords (N, U, 2) crop px, scores (N, U)."""
        return heatmap_keypoints(self.heatmaps(crops, flip_test), self.input_wh)


class StudentPredictor(Predictor):
    """A torch student: inputs normalised with the defaults (RGB, ImageNet mean / std;
    docs/conventions.md "Crop and heatmap conventions")."""

    def __init__(self, model: torch.nn.Module, name: str, input_wh: tuple[int, int],
                 device: str | None = None, unified: Skeleton = UNIFIED):
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = model.eval().to(self.device)
        self.name, self.input_wh = name, (int(input_wh[0]), int(input_wh[1]))
        self.unified = unified
        self.known = np.ones(unified.num_keypoints, dtype=bool)

    def _outputs(self, crops: np.ndarray, flip_test: bool) -> list:
        """The model's outputs for the crops and (flip test) their mirrors: heatmaps (N, K, h, w)
        or SimCC pairs, as float32 numpy."""
        x = torch.from_numpy(normalize(crops, DEFAULT_MEAN, DEFAULT_STD)).to(self.device)
        outs = []
        with torch.inference_mode():
            for inp in (x, x.flip(-1)) if flip_test else (x,):
                out = self.model(inp)
                outs.append(tuple(o.float().cpu().numpy() for o in out)
                            if isinstance(out, (tuple, list)) else out.float().cpu().numpy())
        return outs

    def _merged(self, outs: list) -> np.ndarray:
        """Heatmap outputs (plain, and mirrored for the flip test) → (N, K, h, w) maps."""
        # Negatives clipped, as Teacher does for activation "none": the exported ONNX
        # student then decodes exactly like this one.
        maps = [np.maximum(o, 0.0) for o in outs]
        if len(maps) == 1:
            return maps[0]
        return merge_flipped(maps[0], maps[1], self.unified.flip_index)

    def heatmaps(self, crops: np.ndarray, flip_test: bool = True) -> np.ndarray:
        outs = self._outputs(crops, flip_test)
        if isinstance(outs[0], tuple):
            raise TypeError(f"{self.name} is a SimCC student: it has no heatmaps")
        return self._merged(outs)

    def keypoints(self, crops: np.ndarray, flip_test: bool = True
                  ) -> tuple[np.ndarray, np.ndarray]:
        outs = self._outputs(crops, flip_test)
        if not isinstance(outs[0], tuple):
            return heatmap_keypoints(self._merged(outs), self.input_wh)
        split = outs[0][0].shape[-1] / self.input_wh[0]  # bins per crop pixel (RTMPose: 2)
        return simcc_keypoints(outs[0], outs[1] if flip_test else None,
                               self.unified.flip_index, split)


class OnnxPredictor(Predictor):
    """A described ONNX model (pipeline.teachers.Teacher), native channels moved to unified21,
    or kept when its skeleton holds all of unified21 (an exported student of a larger one)."""

    def __init__(self, path: Path, device: str = "auto"):
        self.teacher = Teacher(path, device=device)
        info = self.teacher.info
        self.skeleton = self.teacher.skeleton
        self.name, self.input_wh, self.padding = info.name, tuple(info.input_wh), info.padding
        self.unified = self.skeleton if self.skeleton.mask(UNIFIED).all() else UNIFIED
        self.known = self.skeleton.mask(self.unified)

    def heatmaps(self, crops: np.ndarray, flip_test: bool = True) -> np.ndarray:
        hm = self.teacher.predict(crops, flip_test=flip_test)  # (N, K, h, w) native order
        n, k, h, w = hm.shape
        return native_to_unified(hm.reshape(n, k, h * w), self.skeleton, self.unified).reshape(
            n, self.unified.num_keypoints, h, w)

    def keypoints(self, crops: np.ndarray, flip_test: bool = True
                  ) -> tuple[np.ndarray, np.ndarray]:
        if self.teacher.info.head != "simcc":
            return super().keypoints(crops, flip_test)
        n = len(crops)
        x, y = self.teacher.simcc_outputs(
            np.concatenate([crops, crops[:, :, ::-1]]) if flip_test else crops)
        coords, scores = simcc_keypoints(
            (x[:n], y[:n]), (x[n:], y[n:]) if flip_test else None, self.skeleton.flip_index,
            self.teacher.info.simcc_split)  # native order
        kp = native_to_unified(np.concatenate([coords, scores[..., None]], -1), self.skeleton,
                               self.unified)
        return kp[..., :2], kp[..., 2]


def torch_device(device: str) -> str | None:
    """--device (pipeline.devices) → a torch device, None for auto; a one-line UniError for
    cuda where torch cannot use it (never a silent CPU run)."""
    device = parse_device(device)
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UniError(f"--device {device}: torch sees no usable GPU here; use --device cpu or "
                       "auto to run on the CPU")
    if device.startswith("cuda:") and int(device[5:]) >= torch.cuda.device_count():
        raise UniError(f"--device {device}: torch sees {torch.cuda.device_count()} GPU(s)")
    return None if device == "auto" else device


def load_predictor(path: Path, device: str | None = None) -> Predictor:
    """MODEL (run directory, .pt checkpoint or described .onnx) → Predictor, on device
    (pipeline.devices: auto | cpu | cuda | cuda:N; None = auto)."""
    path = Path(path)
    if path.suffix.lower() == ".onnx":
        return OnnxPredictor(path, device or "auto")
    model, cfg = load_student(path)
    return StudentPredictor(model, run_name(path), tuple(cfg["input_wh"]),
                            torch_device(device or "auto"), student_unified(path))


def instance_score(keypoints: np.ndarray, known: np.ndarray, box_score: float = 1.0,
                   threshold: float = KEYPOINT_SCORE_THRESHOLD) -> float:
    """keypoints: (K, 3) [x, y, score] → box_score × mean of known (K,) scores above threshold
    (MMPose's "bbox_keypoint" rescoring; 0 when none is above)."""
    s = keypoints[known, 2]
    s = s[s > threshold]
    return float(box_score * s.mean()) if s.size else 0.0


def predict_boxes(predictor: Predictor, items: list[tuple[Path, np.ndarray]],
                  flip_test: bool = True, batch_size: int = 32, progress: bool = True
                  ) -> np.ndarray:
    """items: (image path, person box (4,) x, y, w, h) → keypoints (N, U, 3) [x, y, score].

    Image coordinates; unknown keypoints are (0, 0, 0). Each image is read once.
    """
    if batch_size < 1:
        raise UniError(f"--batch-size must be at least 1, got {batch_size}")
    out = np.zeros((len(items), len(predictor.known), 3), dtype=np.float64)
    order = sorted(range(len(items)), key=lambda i: str(items[i][0]))  # stable: by image
    w, h = predictor.input_wh
    bar = tqdm(total=len(items), unit="person", desc=f"predict {predictor.name}",
               file=sys.stderr, disable=not progress, dynamic_ncols=True)
    image_path, image = None, None
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        crops, affines = [], []
        for i in idx:
            path, bbox = items[i]
            if path != image_path:
                image_path, image = path, read_image(path)
            crop, affine = crop_person(image, np.asarray(bbox, np.float64), (w, h),
                                       predictor.padding)
            crops.append(crop)
            affines.append(affine)
        coords, scores = predictor.keypoints(np.stack(crops), flip_test)  # crop px (B, U, 2)
        for j, i in enumerate(idx):
            out[i, :, :2] = apply(invert(affines[j]), coords[j])  # crop px → image px
            out[i, :, 2] = scores[j]
        bar.update(len(idx))
    bar.close()
    out[:, ~predictor.known] = 0.0
    return out


# --------------------------------------------------------------------------- uni predict


def image_id_from_name(path: Path) -> int | None:
    """COCO style: the digits of the file name as a number (000000000785.jpg → 785)."""
    digits = re.sub(r"\D", "", Path(path).stem)
    return int(digits) if digits else None


def predict_images(model: Path, images: Iterable[Path], out_dir: Path,
                   boxes: Path | None = None, score_threshold: float = 0.3,
                   draw_threshold: float = 0.3, flip_test: bool = True, batch_size: int = 32,
                   progress: bool = True, device: str = "auto") -> list[Path]:
    """Draw the skeleton of every person on each image → DIR/<image>.png, and
    DIR/predictions.json: COCO keypoint results in the model's unified order, with 'image',
    'bbox' and 'box_score' (evaluation/coco_results.py)."""
    images = [Path(p) for p in images]
    stems = [p.stem for p in images]
    dup = next((s for s in stems if stems.count(s) > 1), None)
    if dup is not None:
        raise UniError(f"two images would both be written as {dup}.png; rename one")
    for p in images:
        if not p.is_file():
            raise UniError(f"{p}: image file not found")
    dets = read_detections(boxes, score_threshold) if boxes else None
    predictor = load_predictor(model, device)
    items, owners = [], []  # owners: (image index, box score)
    for k, p in enumerate(images):
        if dets is None:
            height, width = read_image(p).shape[:2]
            found = [(np.array([0.0, 0.0, width, height]), 1.0)]
        else:
            image_id = image_id_from_name(p)
            found = dets.get(image_id, []) if image_id is not None else []
            if not found:
                print(f"uni: {p}: no person box (image id {image_id})", file=sys.stderr)
        for bbox, score in found:
            items.append((p, bbox))
            owners.append((k, score))
    kps = predict_boxes(predictor, items, flip_test, batch_size, progress)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    records: list[dict] = []
    written = []
    for k, p in enumerate(images):
        canvas = read_image(p)
        for n, ((owner, box_score), (_, bbox)) in enumerate(zip(owners, items, strict=True)):
            if owner != k:
                continue
            kp = kps[n]
            draw_box(canvas, bbox, copy=False)
            draw_skeleton(canvas, kp, threshold=draw_threshold, skeleton=predictor.unified,
                          copy=False)
            name = predictor.unified.name
            records.append(result_record(
                image_id_from_name(p), kp, instance_score(kp, predictor.known, box_score),
                name, name, image=p.name, box=[round(float(v), 2) for v in bbox],
                box_score=float(box_score)))
        path = out_dir / f"{p.stem}.png"
        save_rgb(path, canvas)
        written.append(path)
    return written + [write_results(out_dir / "predictions.json", records)]
