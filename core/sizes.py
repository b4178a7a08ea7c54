"""Image sizes as uni's command lines and config files write them: H×W, as papers do
(`256x192`: 256 high, 192 wide). Apart from core/geometry.py so that parsing options needs no
OpenCV (`uni --help` imports this, not cv2)."""

from __future__ import annotations


def parse_input_size(text: str) -> tuple[int, int]:
    """'256x192' → (w, h) = (192, 256). The command line writes sizes H×W, as papers do;
    the code holds them as (w, h), like OpenCV."""
    try:
        h, w = (int(v) for v in str(text).lower().replace("×", "x").split("x"))
    except ValueError:
        raise ValueError(f"expected HxW such as 256x192, got {text!r}") from None
    if min(w, h) < 1:
        raise ValueError(f"expected a positive HxW such as 256x192, got {text!r}")
    return w, h
