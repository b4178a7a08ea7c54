"""Student networks: normalised crops (N, 3, H, W) → unified heatmaps (N, U, H/4, W/4), one
channel per keypoint of the run's unified skeleton (U = 21 for the default, unified21); and
`build_model`, which also builds the RTMPose students (student/rtmpose.py: SimCC outputs).

One plain design in three widths. A stride-4 stem, inverted-residual (MobileNetV2-style,
depthwise) stages down to stride 32, then a light FPN-style decoder back up to stride 4 (each
level: upsample the coarser map, add a 1×1 projection of the skip, one depthwise block), and a
1×1 head. Depthwise convolutions keep the FLOPs small so training stays usable on a CPU.
Any input size divisible by 4 works (the decoder upsamples to the skip's exact size).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from uniskel.core.errors import UniError
from uniskel.core.skeletons import UNIFIED
from uniskel.student.rtmpose import RTMPOSE_ARCHS, build_rtmpose

# name → (stem width, widths of the stride 8 / 16 / 32 stages, blocks per stage, expansion,
#         decoder width). Parameter counts are checked in tests/test_student_models.py.
MODELS: dict[str, tuple[int, tuple[int, int, int], tuple[int, int, int], int, int]] = {
    "tiny": (24, (48, 96, 192), (2, 3, 3), 4, 64),
    "small": (32, (64, 160, 352), (3, 4, 3), 6, 128),
    "base": (48, (96, 256, 512), (3, 6, 4), 6, 192),
}


def _conv_bn(cin: int, cout: int, k: int = 1, stride: int = 1, groups: int = 1,
             act: bool = True) -> nn.Sequential:
    layers = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
              nn.BatchNorm2d(cout)]
    if act:
        layers.append(nn.ReLU6(inplace=True))
    return nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    """1×1 expand → 3×3 depthwise (stride s) → 1×1 project; residual when shapes allow."""

    def __init__(self, cin: int, cout: int, stride: int, expansion: int):
        super().__init__()
        mid = cin * expansion
        self.body = nn.Sequential(
            _conv_bn(cin, mid), _conv_bn(mid, mid, 3, stride, groups=mid),
            _conv_bn(mid, cout, act=False))
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.body(x)
        return x + y if self.residual else y


class Student(nn.Module):
    def __init__(self, stem: int, widths: tuple[int, int, int], depths: tuple[int, int, int],
                 expansion: int, decoder: int, num_keypoints: int = UNIFIED.num_keypoints):
        super().__init__()
        self.stem = nn.Sequential(  # stride 4
            _conv_bn(3, stem, 3, 2), _conv_bn(stem, stem, 3, 1, groups=stem),
            _conv_bn(stem, stem), InvertedResidual(stem, stem, 2, expansion))
        self.stages = nn.ModuleList()
        cin = stem
        for width, depth in zip(widths, depths, strict=True):
            blocks = [InvertedResidual(cin, width, 2, expansion)]
            blocks += [InvertedResidual(width, width, 1, expansion) for _ in range(depth - 1)]
            self.stages.append(nn.Sequential(*blocks))
            cin = width
        # Laterals for strides 32, 16, 8, 4 (coarsest first).
        self.laterals = nn.ModuleList(
            _conv_bn(c, decoder, act=False) for c in (widths[2], widths[1], widths[0], stem))
        self.smooth = nn.ModuleList(InvertedResidual(decoder, decoder, 1, 2) for _ in range(3))
        self.head = nn.Conv2d(decoder, num_keypoints, 1)
        # Start near all-zero heatmaps (as MMPose heads do), not at random full-scale maps.
        nn.init.normal_(self.head.weight, std=0.001)
        nn.init.zeros_(self.head.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = [self.stem(x)]
        for stage in self.stages:
            feats.append(stage(feats[-1]))
        y = self.laterals[0](feats[3])
        for lateral, smooth, skip in zip(self.laterals[1:], self.smooth,
                                         (feats[2], feats[1], feats[0]), strict=True):
            y = F.interpolate(y, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            y = smooth(y + lateral(skip))
        return self.head(y)


def model_head(name: str) -> str:
    """'heatmap' for uni's heatmap nets, 'simcc' for RTMPose students."""
    return "simcc" if name in RTMPOSE_ARCHS else "heatmap"


def build_model(name: str, num_keypoints: int = UNIFIED.num_keypoints,
                input_wh: tuple[int, int] = (192, 256)) -> nn.Module:
    """A fresh student by name with `num_keypoints` outputs (the run's unified skeleton's; 21
    by default): a heatmap net tiny (≈1M parameters), small (≈5M), base (≈16M) — any input
    divisible by 4 — or an RTMPose rtmpose-t / -s / -m (student/rtmpose.py), whose SimCC head
    is built for `input_wh` (w, h)."""
    if name in RTMPOSE_ARCHS:
        return build_rtmpose(name, num_keypoints, tuple(input_wh))
    if name not in MODELS:
        raise UniError(f"unknown model {name!r}; known: {', '.join([*MODELS, *RTMPOSE_ARCHS])}")
    return Student(*MODELS[name], num_keypoints=num_keypoints)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
