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
"""

from __future__ import annotations

import torch

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


def kd_weight_at(weight: float, decay: str, progress: float) -> float:
    """A teacher's KD weight at training progress 0…1: constant, or linear down to 0 at the end."""
    if decay == "linear":
        return weight * max(0.0, 1.0 - progress)
    return weight


def total_loss(pred: torch.Tensor, batch: dict[str, torch.Tensor], teachers: list[str],
               gt_weight: float, kd_weights: dict[str, float], kd_decays: dict[str, str],
               kd_loss: str = "kl", beta: float = 10.0, progress: float = 0.0
               ) -> tuple[torch.Tensor, dict[str, float]]:
    """pred: (N, U, h, w) student heatmaps (U: the run's unified skeleton); batch from
    student.data.collate.

    Returns the total loss and the unweighted terms for logging ({"gt": …, "kd/NAME": …}).
    """
    gt = heatmap_mse(pred, batch["gt_heatmaps"], batch["gt_weights"])
    total = gt_weight * gt
    terms = {"gt": float(gt.detach())}
    for i, name in enumerate(teachers):
        target = batch["kd_targets"][:, i]
        spatial, weights = batch["kd_masks"][:, i], batch["kd_weights"][:, i]
        if kd_loss == "kl":
            kd = heatmap_kl(pred, target, weights, spatial, beta)
        else:
            kd = heatmap_mse(pred, target, weights, spatial)
        total = total + kd_weight_at(kd_weights[name], kd_decays[name], progress) * kd
        terms[f"kd/{name}"] = float(kd.detach())
    terms["total"] = float(total.detach())
    return total, terms
