"""The deterministic weights and input both uni's tests and the MMPose fixture generator use
(tests/data/mmpose_ref/make_reference.py): numpy + torch only, never MMPose.

Every value is drawn from one numpy RandomState, key by key in the order given, so the same
[key, shape] list yields the same tensors on both sides.
"""

from __future__ import annotations

import math

import numpy as np
import torch

# Parameters that multiply: drawn around 1 so activations keep their scale.
_MULTIPLIERS = (".g", ".scale")


def _draw(rng: np.random.RandomState, key: str, shape: tuple[int, ...]) -> torch.Tensor:
    """One tensor of the recipe; the branch is chosen by the key's last name and the shape."""
    if key.endswith("num_batches_tracked"):
        return torch.zeros(shape, dtype=torch.int64)
    if key.endswith("running_var"):
        values = 0.5 + rng.rand(*shape)
    elif key.endswith(_MULTIPLIERS) or (key.endswith(".weight") and len(shape) == 1):
        values = 1.0 + 0.1 * rng.randn(*shape)  # norm weights, ScaleNorm g, Scale, GAU gamma
    elif key.endswith(".gamma"):
        # GAU q/k scales (2, s): the kernel relu(q·k/√s)² is unnormalised over the K tokens, so
        # gammas around 1 blow it up (outputs ~100); around 0.5 it stays O(1) yet matters.
        values = 0.5 + 0.1 * rng.randn(*shape)
    elif key.endswith(".weight"):
        fan_in = math.prod(shape[1:])  # conv (out, in, kh, kw) / linear (out, in)
        values = rng.randn(*shape) / math.sqrt(fan_in)
    else:
        values = 0.1 * rng.randn(*shape)  # biases, running_mean, GAU beta, anything else
    return torch.from_numpy(np.asarray(values, dtype=np.float32).reshape(shape))


def reference_state_dict(shapes: list[tuple[str, tuple[int, ...]]], seed: int = 0
                         ) -> dict[str, torch.Tensor]:
    """[(key, shape), …] → {key: tensor} drawn in that order from RandomState(seed)."""
    rng = np.random.RandomState(seed)
    return {key: _draw(rng, key, tuple(shape)) for key, shape in shapes}


def reference_input(input_wh: tuple[int, int], seed: int = 1) -> torch.Tensor:
    """A normalised-image-like crop: (1, 3, H, W) float32 standard normal from RandomState(seed)."""
    w, h = input_wh
    x = np.random.RandomState(seed).randn(1, 3, h, w).astype(np.float32)
    return torch.from_numpy(x)
