"""Images → normalised person crops: the one place images are read, cropped and normalised."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from uniskel.core.errors import UniError
from uniskel.core.geometry import PADDING, bbox_to_center_size, crop_affine, warp_image

# RGB, ImageNet statistics in 0–255 units (docs/conventions.md "Crop and heatmap conventions").
DEFAULT_MEAN = (123.675, 116.28, 103.53)
DEFAULT_STD = (58.395, 57.12, 57.375)


def read_image(path: Path) -> np.ndarray:
    """(H, W, 3) uint8 RGB; UniError naming the file when it is missing or not an image."""
    data = np.fromfile(str(path), dtype=np.uint8) if Path(path).is_file() else None
    if data is None:
        raise UniError(f"{path}: image file not found")
    image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if image is None:
        raise UniError(f"{path}: not a readable image (corrupt or truncated)")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def crop_person(image: np.ndarray, bbox_xywh: np.ndarray, input_wh: tuple[int, int],
                padding: float = PADDING, rotation: float = 0.0, scale: float = 1.0,
                shift: tuple[float, float] = (0.0, 0.0), flip: bool = False
                ) -> tuple[np.ndarray, np.ndarray]:
    """Top-down crop of one person.

    Returns crop: (H, W, 3) uint8 and affine: (2, 3) image → crop. scale multiplies the crop box
    size, shift moves its centre by fractions of the box size (augmentation).
    """
    center, size = bbox_to_center_size(bbox_xywh, input_wh[0] / input_wh[1], padding)
    center = center + np.asarray(shift) * size
    affine = crop_affine(center, size * scale, input_wh, rotation, flip)
    return warp_image(image, affine, input_wh), affine


def normalize(crops: np.ndarray, mean=DEFAULT_MEAN, std=DEFAULT_STD, bgr: bool = False
              ) -> np.ndarray:
    """crops: (N, H, W, 3) uint8 RGB → (N, 3, H, W) float32 model input."""
    x = crops[..., ::-1] if bgr else crops
    # One cast-and-transpose copy, then in place: the same float32 arithmetic as
    # (x - mean) / std, in a third of the passes over the batch.
    x = np.ascontiguousarray(x.transpose(0, 3, 1, 2), dtype=np.float32)
    x -= np.asarray(mean, np.float32)[:, None, None]
    x /= np.asarray(std, np.float32)[:, None, None]
    return x
