"""Stage-two losses: masked ground-truth MSE plus one distillation term per cached teacher.

total = gt_weight · GT + Σ_t kd_weight(t, progress) · KD_t

- GT: squared L2 distance between student and Gaussian target heatmaps, summed over the pixels
  of a keypoint and averaged over the keypoints the dataset labels (weight 0 elsewhere).
- KD "kl" (default): the paper's KL divergence on temperature-sharpened distributions, moved
  from 1-D SimCC vectors to 2-D heatmaps as a spatial softmax over the pixels the teacher saw:
  p = softmax(β · teacher), q = softmax(β · student), KL(p ‖ q) per keypoint. Teacher maps
  arrive peak-normalised (see student.data), i.e. on the same 0…1 scale as the student's
  heatmaps and the GT Gaussians, so β = 10 (the paper's value) means the same here as there:
  a pixel at half the peak height gets e^-5 ≈ 0.7 % of the peak's probability, which keeps the
  distribution on the peak and off the flat background; a perfect student of a σ = 2 Gaussian
  target is also a perfect student of its distribution, so GT and KD never pull apart.
- KD "mse": the GT loss against the peak-normalised teacher maps, inside the same mask.
Each KD term averages over the (keypoint, sample) pairs the teacher covers, weighted by how
much of the teacher's peak survives the crop (student.data's kd_weights).

SimCC students (RTMPose: pred is a (simcc_x, simcc_y) pair) use MMPose's losses instead:
- GT: simcc_kl, MMPose's KLDiscretLoss(beta=10, label_softmax=True, label_beta=10) on
  core.simcc labels. Like MMPose it sums over the batch and divides by K only.
- KD "kl": simcc_kd, the paper's KD on each axis: target softmax(β·log p) = p^β / Σ p^β of the
  teacher's marginal p — the marginal of its β-sharpened map, warped (student.data) and
  resampled onto the bins — against the student's log_softmax(β·pred),
  reduced as the paper's code reduces it (DWPose's KDLoss: full KL, mean over samples and
  keypoints), so the paper's weights weigh GT and KD as its code did. "mse" is refused.
"""

from __future__ import annotations

import numpy as np
import torch

from uniskel.core.errors import UniError
from uniskel.core.simcc import SIMCC_SPLIT, bins_on_heatmap, num_bins

_MASKED_LOGIT = -1e4  # finite, so an all-masked row gives no NaN (its weight is 0 anyway)


def heatmap_mse(pred: torch.Tensor, target: torch.Tensor, weights: torch.Tensor,
                spatial: torch.Tensor | None = None) -> torch.Tensor:
    """pred, target: (N, K, h, w); weights: (N, K); spatial: (N, 1, h, w) or None → scalar."""
    diff = (pred.float() - target.float()) ** 2
    if spatial is not None:
        diff = diff * spatial.float()
    per_kp = diff.sum((2, 3))  # (N, K)
    return (per_kp * weights).sum() / weights.sum().clamp(min=1.0)


def heatmap_kl(pred: torch.Tensor, target: torch.Tensor, weights: torch.Tensor,
               spatial: torch.Tensor, beta: float = 10.0) -> torch.Tensor:
    """KL(softmax(β·target) ‖ softmax(β·pred)) over the pixels where spatial > 0 → scalar.

    pred, target: (N, K, h, w); weights: (N, K); spatial: (N, 1, h, w).
    """
    n, k, h, w = pred.shape
    inside = (spatial > 0).expand(n, k, h, w).reshape(n, k, h * w)
    s = torch.where(inside, beta * pred.float().reshape(n, k, -1), _MASKED_LOGIT)
    t = torch.where(inside, beta * target.float().reshape(n, k, -1), _MASKED_LOGIT)
    log_q = torch.log_softmax(s, -1)
    log_p = torch.log_softmax(t, -1)
    kl = (log_p.exp() * (log_p - log_q)).sum(-1)  # (N, K)
    return (kl * weights).sum() / weights.sum().clamp(min=1.0)


def simcc_kl(pred_x: torch.Tensor, pred_y: torch.Tensor, gt_x: torch.Tensor, gt_y: torch.Tensor,
             weights: torch.Tensor, beta: float = 10.0, label_beta: float = 10.0) -> torch.Tensor:
    """MMPose's KLDiscretLoss(beta, label_softmax=True, label_beta, use_target_weight) → scalar.

    pred_x, gt_x: (N, K, Wb); pred_y, gt_y: (N, K, Hb); weights: (N, K). Per row
    mean over bins of KL(softmax(label_beta·gt) ‖ log_softmax(beta·pred)), × weight, summed
    over rows, batch and both axes, ÷ K (mmpose/models/losses/classification_loss.py).
    """
    k = pred_x.shape[1]
    w = weights.float().reshape(-1)
    loss = pred_x.new_zeros((), dtype=torch.float32)
    for pred, gt in ((pred_x, gt_x), (pred_y, gt_y)):
        log_pt = torch.log_softmax(beta * pred.float().reshape(-1, pred.shape[-1]), 1)
        labels = torch.softmax(label_beta * gt.float().reshape(-1, gt.shape[-1]), 1)
        per_row = torch.nn.functional.kl_div(log_pt, labels, reduction="none").mean(1)
        loss = loss + (per_row * w).sum()
    return loss / k


def _marginal_on_bins(marginal: torch.Tensor, pos: np.ndarray) -> torch.Tensor:
    """marginal: (..., g) values at grid px 0…g-1 → (..., B) linearly interpolated at the
    fractional grid positions pos (B,), clamped to the edge pixels (they reach half a pixel
    beyond their centres)."""
    g = marginal.shape[-1]
    p = torch.as_tensor(np.clip(pos, 0.0, g - 1.0), dtype=torch.float32,
                        device=marginal.device)
    lo = p.floor().long().clamp(max=g - 1)
    hi = (lo + 1).clamp(max=g - 1)
    frac = p - lo.float()
    return marginal[..., lo] * (1 - frac) + marginal[..., hi] * frac


def _nearest(pos: np.ndarray, g: int, device: torch.device) -> torch.Tensor:
    """Fractional grid positions (B,) → index (B,) of the nearest grid pixel."""
    return torch.as_tensor(np.clip(np.floor(pos + 0.5), 0, g - 1).astype(np.int64),
                           device=device)


def _axis_kd(pred: torch.Tensor, log_target: torch.Tensor, seen: torch.Tensor,
             beta: float) -> torch.Tensor:
    """One axis: pred (N, K, B) logits, log_target (N, K, B) the target's logits, seen (N, 1, B)
    bool → (N, K) KL(softmax(log_target) ‖ softmax(β·pred)), both over the seen bins only."""
    n, k, b = pred.shape
    inside = seen.expand(n, k, b)
    t = torch.where(inside, log_target, _MASKED_LOGIT)
    s = torch.where(inside, beta * pred.float(), _MASKED_LOGIT)
    log_t = torch.log_softmax(t, -1)
    log_s = torch.log_softmax(s, -1)
    # xlogy-style: a zero-probability bin contributes exactly 0 (KLDivLoss's convention).
    return torch.where(inside, log_t.exp() * (log_t - log_s), 0.0).sum(-1)  # (N, K)


_LOG_FLOOR = 1e-20  # p below this counts as this: log p stays finite and far above masked bins


def teacher_marginals(teacher_maps: torch.Tensor, spatial: torch.Tensor,
                      input_wh: tuple[int, int], split: float = SIMCC_SPLIT
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Cached teacher maps (N, K, h, w) on the input/4 grid, spatial (N, 1, h, w) → SimCC
    targets: p_x (N, K, Wb), p_y (N, K, Hb) probabilities (each row sums to 1, or is 0), and
    seen_x (N, 1, Wb), seen_y (N, 1, Hb) bool: bins whose nearest grid column / row the teacher
    saw. Marginals are sums over the other axis of the seen pixels, linearly interpolated at the
    bins' grid positions (core.simcc.bins_on_heatmap)."""
    n, k, h, w = teacher_maps.shape
    gx, gy = bins_on_heatmap(input_wh, (w, h), split)
    seen = spatial[:, 0] > 0  # (N, h, w)
    # Only what the teacher saw (its warped maps are 0 elsewhere anyway).
    maps = teacher_maps.float().clamp(min=0) * seen[:, None]
    out = []
    for marginal, pos, seen_line, g in ((maps.sum(2), gx, seen.any(1), w),  # (N, K, w), (N, w)
                                        (maps.sum(3), gy, seen.any(2), h)):  # (N, K, h), (N, h)
        on_bins = _marginal_on_bins(marginal, pos)  # (N, K, B)
        p = on_bins / on_bins.sum(-1, keepdim=True).clamp(min=1e-12)
        out.append((p, seen_line[:, _nearest(pos, g, seen_line.device)][:, None]))
    (p_x, seen_x), (p_y, seen_y) = out
    return p_x, p_y, seen_x, seen_y


def simcc_kd(pred_x: torch.Tensor, pred_y: torch.Tensor, teacher_maps: torch.Tensor,
             spatial: torch.Tensor, weights: torch.Tensor, input_wh: tuple[int, int],
             split: float = SIMCC_SPLIT, beta: float = 10.0) -> torch.Tensor:
    """The paper's KD for a SimCC student from a cached 2-D teacher map → scalar.

    pred_x: (N, K, Wb), pred_y: (N, K, Hb) logits; teacher_maps: (N, K, h, w) the teacher's
    peak-normalised map raised to the power β before it was warped onto the student's input/4
    grid (student.data, kd_power); spatial: (N, 1, h, w) 1 where the teacher saw; weights:
    (N, K). The paper's target per axis is softmax(β·log p) = p^β / Σ p^β of the teacher's own
    marginal p; the teacher's map is the outer product of its marginals, so its β-th power is
    the outer product of those targets, and its marginal (teacher_marginals) is the target —
    also under rotation, where sharpening after the warp would marginalise the teacher's flat
    floor instead of its peak (bench/simcc_store.py). KL(target ‖ log_softmax(β·pred)) over the
    bins the teacher saw; the two axes' sum averaged over the (sample, keypoint) pairs by
    weight — the reduction of the paper's KDLoss (DWPose's, mmpose/models/losses/
    logit_dis_loss.py: KL summed over bins, x + y, mean over samples and keypoints), with uni's
    coverage weights as heatmap_kl has them.
    """
    wb, hb = pred_x.shape[-1], pred_y.shape[-1]
    if (wb, hb) != (num_bins(input_wh[0], split), num_bins(input_wh[1], split)):
        raise ValueError(f"SimCC outputs of {wb}, {hb} bins do not fit input {input_wh} at "
                         f"split {split}")
    p_x, p_y, seen_x, seen_y = teacher_marginals(teacher_maps, spatial, input_wh, split)
    kl = sum(_axis_kd(pred, torch.log(p.clamp(min=_LOG_FLOOR)), seen, beta)
             for pred, p, seen in ((pred_x, p_x, seen_x), (pred_y, p_y, seen_y)))  # (N, K)
    w = weights.float()
    return (kl * w).sum() / w.sum().clamp(min=1.0)


def gt_loss(pred: torch.Tensor | tuple[torch.Tensor, torch.Tensor],
            batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The GT term for either kind of student: heatmap_mse, or simcc_kl for a (x, y) pair."""
    if isinstance(pred, (tuple, list)):
        return simcc_kl(pred[0], pred[1], batch["gt_simcc_x"], batch["gt_simcc_y"],
                        batch["gt_weights"])
    return heatmap_mse(pred, batch["gt_heatmaps"], batch["gt_weights"])


def validation_terms(pred: torch.Tensor | tuple[torch.Tensor, torch.Tensor],
                     batch: dict[str, torch.Tensor]) -> tuple[float, float]:
    """(weighted sum, weight) of the GT loss over a batch: their totals' ratio is the validation
    loss per labelled keypoint, for either kind of student (heatmap: as train.py computed it)."""
    w = float(batch["gt_weights"].float().sum())
    loss = float(gt_loss(pred, batch))
    if isinstance(pred, (tuple, list)):  # simcc_kl is already a sum over rows, ÷ K
        return loss * pred[0].shape[1], w
    n = max(w, 1.0)
    return loss * n, n


def kd_weight_at(weight: float, decay: str, progress: float) -> float:
    """A teacher's KD weight at training progress 0…1: constant, or linear down to 0 at the end."""
    if decay == "linear":
        return weight * max(0.0, 1.0 - progress)
    return weight


def total_loss(pred: torch.Tensor | tuple[torch.Tensor, torch.Tensor],
               batch: dict[str, torch.Tensor], teachers: list[str],
               gt_weight: float, kd_weights: dict[str, float], kd_decays: dict[str, str],
               kd_loss: str = "kl", beta: float = 10.0, progress: float = 0.0,
               input_wh: tuple[int, int] | None = None
               ) -> tuple[torch.Tensor, dict[str, float]]:
    """pred: (N, U, h, w) student heatmaps (U: the run's unified skeleton), or a SimCC
    student's (simcc_x (N, U, Wb), simcc_y (N, U, Hb)); batch from student.data.collate.
    input_wh: the SimCC student's input (w, h); None = its bins ÷ SIMCC_SPLIT.

    Returns the total loss and the unweighted terms for logging ({"gt": …, "kd/NAME": …}).
    """
    simcc = isinstance(pred, (tuple, list))
    if simcc and teachers and kd_loss != "kl":
        raise UniError(f"kd_loss {kd_loss!r}: a SimCC (RTMPose) student distils with 'kl' only")
    if simcc and input_wh is None:
        input_wh = (round(pred[0].shape[-1] / SIMCC_SPLIT), round(pred[1].shape[-1] / SIMCC_SPLIT))
    gt = gt_loss(pred, batch)
    total = gt_weight * gt
    terms = {"gt": float(gt.detach())}
    for i, name in enumerate(teachers):
        target = batch["kd_targets"][:, i]
        spatial, weights = batch["kd_masks"][:, i], batch["kd_weights"][:, i]
        if simcc:
            kd = simcc_kd(pred[0], pred[1], target, spatial, weights, input_wh, SIMCC_SPLIT, beta)
        elif kd_loss == "kl":
            kd = heatmap_kl(pred, target, weights, spatial, beta)
        else:
            kd = heatmap_mse(pred, target, weights, spatial)
        total = total + kd_weight_at(kd_weights[name], kd_decays[name], progress) * kd
        terms[f"kd/{name}"] = float(kd.detach())
    terms["total"] = float(total.detach())
    return total, terms
