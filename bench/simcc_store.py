"""What a SimCC teacher loses on its way through the store to a SimCC student's KD target.

    .venv/bin/python bench/simcc_store.py [--n 40] [--reps 10] [--seed 0]   (~1 minute)

A synthetic RTMPose teacher at 256x192 (split 2): per keypoint, raw logits
ℓ = A · exp(-(b - μ)² / 2σ²) with μ the true sub-pixel bin (not rounded), σ = simcc_sigma
(4.9, 5.66) bins. MMPose's KLDiscretLoss drives softmax(10·ℓ) → softmax(10·label), i.e.
ℓ → label + const, so A = 1 is a confident keypoint (its decoded score ≈ 1); "wide" doubles σ,
"low" halves A (score 0.5). The teacher's own KD target for a view is DWPose's softmax(β·ℓ) of
the logits it gives on that view's crop; uni's target from a probability vector p is
softmax(β·log p), which for p = softmax(ℓ) is the same thing, so every gap below is the store's.

Options, each through the project's own code (pipeline.teachers, stores.encode, student.data,
student.losses):
- 2-D input/4 (today's store): softmax → simcc_to_grid → outer product, uint8 + zstd,
  teacher_targets warp, teacher_marginals; "β after the warp" sharpens the warped marginals
  (uni before the fix), "sharpen first" raises the map to the power β before the warp (what
  student.data does for SimCC students now).
- 2-D input/2: the same on a 96x128 grid (store and student-side grid).
- 1-D: p_x (K, 384), p_y (K, 512) stored uint8 + zstd; at training time either the
  outer product on an input/2 or input/1 grid then the same warp + marginals, or "1-D exact":
  each student axis is a·X + b·Y + t of the teacher's independent X, Y, so its distribution is
  the convolution of the two 1-D marginals resampled (CDF, as simcc_to_grid does); with no
  rotation b = 0 and this is a plain 1-D warp.
- float, no store: "1-D exact" on unquantised p: what any cache gives at best (the teacher never
  saw the augmented crop: σ scales with the view, a rotated separable map is not a rotated
  teacher output).
Views: identity (the stage-one crop) and RTMPose's augmentation (sample_rtmpose_view, stage-1
ranges, flip off), split into views without and with rotation.
Metrics per keypoint: 2-D argmax shift (input px) of the target against the teacher's own, and
KL(own ‖ round trip) summed over x and y at β = 10 over the bins the teacher saw, as simcc_kd
reduces it; bytes per instance (K = 17, zstd-1 chunks + float32 scales); CPU ms per sample
(K = 17) to build the targets from the dequantised row (decompression not included).
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

import numpy as np
import torch
from scipy.signal import fftconvolve

from uniskel.core.geometry import (
    PADDING,
    apply,
    bbox_to_center_size,
    compose,
    crop_affine,
    crop_to_heatmap,
    invert,
)
from uniskel.core.simcc import SIMCC_SPLIT, num_bins, simcc_sigma
from uniskel.core.skeletons import get_skeleton
from uniskel.pipeline.teachers import Teacher, TeacherInfo, simcc_to_grid
from uniskel.stores import encode
from uniskel.student.augment import RTMPoseAugment, body_halves, sample_rtmpose_view
from uniskel.student.data import teacher_targets
from uniskel.student.losses import _LOG_FLOOR, _axis_kd, teacher_marginals

INPUT_WH = (192, 256)
SPLIT = SIMCC_SPLIT
BETA = 10.0
K = 17
SKEL = get_skeleton("coco17")
BBOX = np.array([100.0, 50.0, 120.0, 200.0])  # any person box: the teacher crop is its crop
MARGIN = 16.0  # keypoints this far inside both crops (3σ of the wide variant is 8.5 px)
# σ factor, logit amplitude. "logits x10": the brief's literal reading (softmax(ℓ) itself as sharp
# as the training target), for contrast; RTMPose's decoded scores (its max logits, ~0-1) say A ≈ 1.
VARIANTS = {"confident": (1.0, 1.0), "wide": (2.0, 1.0), "low": (1.0, 0.5),
            "logits x10": (1.0, 10.0)}


def logits(pos: np.ndarray, bins: int, sigma: float, amp: float) -> np.ndarray:
    """pos: (...,) crop px → (..., bins) float32 logits amp·Gaussian centred at pos·split."""
    b = np.arange(bins, dtype=np.float64)
    mu = pos[..., None] * SPLIT
    return (amp * np.exp(-((b - mu) ** 2) / (2 * sigma**2))).astype(np.float32)


def stub_teacher(grid_wh: tuple[int, int]) -> Teacher:
    """A Teacher whose _to_heatmaps is the real one (softmax, simcc_to_grid, outer product),
    on a grid of grid_wh, without an ONNX model behind it."""
    t = Teacher.__new__(Teacher)
    t.info = TeacherInfo(name="synthetic", skeleton="coco17", head="simcc", input_wh=INPUT_WH,
                         activation="softmax")
    t.heatmap_wh = grid_wh
    return t


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _cdf(p: np.ndarray) -> np.ndarray:
    return np.concatenate([np.zeros(p.shape[:-1] + (1,)), np.cumsum(p, -1, dtype=np.float64)], -1)


def _interp_rows(cdf: np.ndarray, xp: np.ndarray, x: np.ndarray) -> np.ndarray:
    """np.interp of every row of cdf (R, len(xp)) at x (same x for all rows), clamped."""
    x = np.clip(x, xp[0], xp[-1])
    i = np.clip(np.searchsorted(xp, x, side="right") - 1, 0, len(xp) - 2)
    f = (x - xp[i]) / (xp[i + 1] - xp[i])
    return cdf[:, i] * (1 - f) + cdf[:, i + 1] * f


def scaled(p: np.ndarray, a: float, d: float) -> tuple[int, np.ndarray]:
    """Distribution of a·X on cells j·d (crop px), X the crop px of bins p (R, B) →
    (first j, masses (R, J))."""
    if abs(a) < 1e-9:
        return 0, np.ones((len(p), 1))
    bins = p.shape[-1]
    ends = a * (np.array([-0.5, bins - 0.5]) / SPLIT)
    j0 = int(np.floor(ends.min() / d - 0.5))
    j1 = int(np.ceil(ends.max() / d + 0.5))
    edges = (np.arange(j0, j1 + 2) - 0.5) * d  # cell edges, crop px of a·X
    u = edges / a * SPLIT  # the same edges in X's bin units
    order = np.argsort(u)
    at = np.empty((len(p), len(u)))
    at[:, order] = _interp_rows(_cdf(p), np.arange(bins + 1) - 0.5, u[order])
    return j0, np.abs(np.diff(at, axis=-1))


def exact_axis(px: np.ndarray, py: np.ndarray, row: np.ndarray, bins: int) -> np.ndarray:
    """Student axis c = row·[x, y, 1] of independent X ~ px (R, Wb), Y ~ py (R, Hb) → its
    mass per student bin (R, bins): convolution of the resampled marginals."""
    d = 1.0 / SPLIT
    jx, qx = scaled(px, row[0], d)
    jy, qy = scaled(py, row[1], d)
    q = np.maximum(fftconvolve(qx, qy, axes=-1), 0.0) if qy.shape[1] > 1 or qx.shape[1] > 1 \
        else qx * qy
    edges = (np.arange(jx + jy, jx + jy + q.shape[1] + 1) - 0.5) * d + row[2]
    want = (np.arange(bins + 1) - 0.5) / SPLIT
    return np.diff(_interp_rows(_cdf(q), edges, want), axis=-1)


def exact_marginals(px: np.ndarray, py: np.ndarray, m: np.ndarray) -> tuple[np.ndarray, ...]:
    """1-D store → SimCC targets in the student crop; m: teacher crop → student crop (2, 3)."""
    wb, hb = num_bins(INPUT_WH[0], SPLIT), num_bins(INPUT_WH[1], SPLIT)
    return exact_axis(px, py, m[0], wb), exact_axis(px, py, m[1], hb)


def grid_marginals(maps: np.ndarray, a_tc: np.ndarray, a_sc: list[np.ndarray],
                   grid_wh: tuple[int, int]) -> tuple[torch.Tensor, ...]:
    """(N, K, h, w) maps on the teacher crop's grid → teacher_marginals in each student view."""
    to_grid = crop_to_heatmap(INPUT_WH, grid_wh)
    a_store = compose(to_grid, a_tc)
    tgt, spa = zip(*[teacher_targets(maps[i], a_store, SKEL, compose(to_grid, a_sc[i]), False,
                                     grid_wh, SKEL)[:2] for i in range(len(maps))], strict=True)
    return teacher_marginals(torch.from_numpy(np.stack(tgt)), torch.from_numpy(np.stack(spa)),
                             INPUT_WH, SPLIT)


def compare(p_x, p_y, seen_x, seen_y, own_x, own_y, valid, direct: bool = False
            ) -> tuple[np.ndarray, np.ndarray]:
    """Round-trip probabilities vs the teacher's own logits in the view → per valid keypoint
    (argmax shift px, KL summed over x and y). The target is softmax(β·log p) (simcc_kd), or p
    itself when direct (p was sharpened before the warp)."""
    kl = 0
    shift2 = 0
    for p, seen, own in ((p_x, seen_x, own_x), (p_y, seen_y, own_y)):
        p = torch.as_tensor(p, dtype=torch.float32)
        own = torch.as_tensor(own)
        seen = torch.as_tensor(seen)
        log_p = torch.log(p.clamp(min=_LOG_FLOOR)) / (BETA if direct else 1.0)
        kl = kl + _axis_kd(log_p, BETA * own, seen, BETA)  # _axis_kd takes target logits
        mask = ~seen.expand_as(p)
        a_rt = p.masked_fill(mask, -1).argmax(-1)
        a_own = own.masked_fill(mask, -1e9).argmax(-1)
        shift2 = shift2 + ((a_rt - a_own).float() / SPLIT) ** 2
    return shift2.sqrt().numpy()[valid], kl.numpy()[valid]


def draw_views(rng: np.random.Generator, n: int, kind: str, a_tc: np.ndarray,
               center: np.ndarray, size: np.ndarray) -> list[np.ndarray]:
    """n image → student crop affines: the teacher's crop, or RTMPose views (no flip) without
    or with rotation."""
    if kind == "identity":
        return [a_tc] * n
    aug = RTMPoseAugment()
    upper, lower = body_halves(SKEL)
    dummy = np.zeros((K, 3))  # no visible keypoints: no half-body box
    out = []
    while len(out) < n:
        v = replace(sample_rtmpose_view(rng, aug, dummy, BBOX, upper, lower,
                                        INPUT_WH[0] / INPUT_WH[1]), flip=False)
        if (v.rotation != 0.0) != (kind == "aug, rotated"):
            continue
        out.append(crop_affine(center + np.asarray(v.shift) * size, size * v.scale, INPUT_WH,
                               v.rotation))
    return out


def sharpen_maps(maps: np.ndarray) -> np.ndarray:
    """(N, K, h, w) stored maps → (map / peak)^β: the 2-D form of softmax(β·log p)."""
    peak = maps.max(axis=(2, 3), keepdims=True)
    return (maps / np.maximum(peak, 1e-30)) ** BETA


def sharpen_1d(p: np.ndarray) -> np.ndarray:
    """(R, B) probabilities → softmax(β·log p) per row."""
    return _softmax(BETA * np.log(np.maximum(p, _LOG_FLOOR)))


def bytes_per_instance(maps: np.ndarray) -> float:
    """Mean chunk bytes per row through the store's encoder + its float32 scales."""
    rows = encode.encode_rows(maps)
    return float(np.mean([len(c) for c in rows.chunks])) + 4 * maps.shape[1]


def timed(fn, reps: int) -> float:
    """Median ms per call of fn() over reps calls (after one warm-up); the median, as other
    processes share the cores."""
    fn()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times)) * 1e3


def run_case(rng, n: int, view: str, sigma_f: float, amp: float, reps: int) -> list[tuple]:
    """One (variant, view kind) → rows (option, mean shift, p95 shift, mean KL, p95 KL, bytes,
    ms)."""
    torch.set_num_threads(1)
    wb, hb = num_bins(INPUT_WH[0], SPLIT), num_bins(INPUT_WH[1], SPLIT)
    sx, sy = (s * sigma_f for s in simcc_sigma(INPUT_WH))
    center, size = bbox_to_center_size(BBOX, INPUT_WH[0] / INPUT_WH[1], PADDING)
    a_tc = crop_affine(center, size, INPUT_WH)  # stage one's crop of the instance
    a_sc = draw_views(rng, n, view, a_tc, center, size)
    lo, hi = MARGIN, np.array(INPUT_WH) - 1 - MARGIN
    kp_tc = rng.uniform(lo, hi, (n, K, 2))  # teacher crop px, sub-pixel
    kp_img = apply(invert(a_tc), kp_tc)
    kp_sc = np.stack([apply(a_sc[i], kp_img[i]) for i in range(n)])  # student crop px
    valid = ((kp_sc >= lo) & (kp_sc <= hi)).all(-1)  # (n, K)
    lx_t, ly_t = logits(kp_tc[..., 0], wb, sx, amp), logits(kp_tc[..., 1], hb, sy, amp)
    own_x, own_y = logits(kp_sc[..., 0], wb, sx, amp), logits(kp_sc[..., 1], hb, sy, amp)
    m = [compose(a_sc[i], invert(a_tc)) for i in range(n)]  # teacher crop → student crop
    rows = []

    # 2-D maps through the store (today: input/4, sharpened first).
    seen_ref = None
    for name, grid in (("2-D input/4 (today)", (48, 64)), ("2-D input/2", (96, 128))):
        maps = stub_teacher(grid)._to_heatmaps([lx_t, ly_t])  # (n, K, h, w)
        deq = encode.dequantize(*encode.quantize(maps))
        p_x, p_y, s_x, s_y = grid_marginals(deq, a_tc, a_sc, grid)
        if seen_ref is None:
            seen_ref = (s_x, s_y)
        ms = timed(lambda deq=deq, grid=grid: grid_marginals(deq[:1], a_tc, a_sc[:1], grid), reps)
        rows.append((name + ", β after the warp",
                     *compare(p_x, p_y, s_x, s_y, own_x, own_y, valid),
                     bytes_per_instance(maps[:50]), ms))
        # The same stored map sharpened (power β) before the warp, marginals used as is.
        sharp = sharpen_maps(deq)
        p_x, p_y, s_x, s_y = grid_marginals(sharp, a_tc, a_sc, grid)
        ms = timed(lambda deq=deq, grid=grid: grid_marginals(sharpen_maps(deq[:1]), a_tc,
                                                             a_sc[:1], grid), reps)
        rows.append((name + ", sharpen first", *compare(p_x, p_y, s_x, s_y, own_x, own_y, valid,
                                                        True), rows[-1][3], ms))

    # 1-D marginals through the store.
    px, py = _softmax(lx_t), _softmax(ly_t)  # teachers._to_heatmaps' activation
    q1 = [encode.quantize(p[:, :, None, :]) for p in (px, py)]
    bx, by = (encode.dequantize(q, s)[:, :, 0] for q, s in q1)  # (n, K, Wb), (n, K, Hb)
    b1 = sum(bytes_per_instance(p[:50, :, None, :]) for p in (px, py))

    for name, xs, ys, nbytes, direct in (
            ("1-D exact", bx, by, b1, False), ("float, no store", px, py, 0.0, False),
            ("1-D exact, sharpen first", bx, by, b1, True),
            ("float, no store, sharpen first", px, py, 0.0, True)):

        def build(i, xs=xs, ys=ys, direct=direct):
            if direct:  # each axis's own KD target, softmax(β·log p), then transported
                return exact_marginals(sharpen_1d(xs[i]), sharpen_1d(ys[i]), m[i])
            return exact_marginals(xs[i], ys[i], m[i])

        pr = [build(i) for i in range(n)]
        p_x, p_y = np.stack([a for a, _ in pr]), np.stack([b for _, b in pr])
        ms = timed(lambda build=build: build(0), reps)
        rows.append((name, *compare(p_x, p_y, *seen_ref, own_x, own_y, valid, direct), nbytes,
                     ms))
    if view == "aug, rotated":
        for name, grid in (("1-D → 2-D input/2", (96, 128)), ("1-D → 2-D input/1", (192, 256))):
            stride = INPUT_WH[0] / grid[0]

            def build(sl, grid=grid, stride=stride):
                gx = simcc_to_grid(bx[sl], SPLIT, stride, grid[0])
                gy = simcc_to_grid(by[sl], SPLIT, stride, grid[1])
                return grid_marginals(gy[..., :, None] * gx[..., None, :], a_tc,
                                      a_sc[sl], grid)

            p_x, p_y, s_x, s_y = build(slice(0, n))
            ms = timed(lambda build=build: build(slice(0, 1)), reps)
            rows.append((name + ", β after the warp",
                         *compare(p_x, p_y, s_x, s_y, own_x, own_y, valid), b1, ms))
    return rows


def shift_scale(sigma_f: float, amp: float) -> list[tuple[float, float]]:
    """KL(own(μ) ‖ own(μ + δ)) for a student whose distribution is the teacher's moved by δ px
    along x: what a KL figure is worth in pixels."""
    wb = num_bins(INPUT_WH[0], SPLIT)
    sx = simcc_sigma(INPUT_WH)[0] * sigma_f
    out = []
    for delta in (0.25, 0.5, 1.0, 2.0, 4.0):
        own = torch.from_numpy(logits(np.array([96.3]), wb, sx, amp))[None]
        moved = torch.from_numpy(logits(np.array([96.3 + delta]), wb, sx, amp))[None]
        seen = torch.ones(1, 1, wb, dtype=torch.bool)
        out.append((delta, float(_axis_kd(moved, BETA * own, seen, BETA))))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=40, help="instances (×17 keypoints) per case")
    ap.add_argument("--reps", type=int, default=10, help="timing repetitions")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    print(f"# SimCC teacher round trip, {INPUT_WH[1]}x{INPUT_WH[0]}, split {SPLIT}, β {BETA}, "
          f"{args.n} instances × {K} keypoints per case\n")
    for var, (sf, amp) in VARIANTS.items():
        scale = ", ".join(f"{d:g} px → {v:.3f}" for d, v in shift_scale(sf, amp))
        print(f"## {var}: σ × {sf:g}, logit peak {amp:g}\n\nKL of a target moved by δ along x: "
              f"{scale}\n")
        print("| view | option | argmax shift mean / p95 (px) | KL mean / p95 | bytes/inst "
              "| build ms/sample |")
        print("|---|---|---|---|---|---|")
        for view in ("identity", "aug, no rotation", "aug, rotated"):
            for name, shift, kl, nbytes, ms in run_case(rng, args.n, view, sf, amp, args.reps):
                b = f"{nbytes:,.0f}" if nbytes else "-"
                print(f"| {view} | {name} | {shift.mean():.2f} / {np.percentile(shift, 95):.2f} "
                      f"| {kl.mean():.4f} / {np.percentile(kl, 95):.4f} | {b} | {ms:.2f} |",
                      flush=True)
        print()


if __name__ == "__main__":
    main()
