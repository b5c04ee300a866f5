"""Focal loss on per-sample logits (Lin et al. 2017), masked to the valid samples of each window.

FL = -alpha_t (1 - p_t)^gamma log(p_t), with p_t the probability of the true class and
alpha_t = alpha for seizure samples, 1 - alpha for background. log(p_t) comes from
``binary_cross_entropy_with_logits`` so large logits do not overflow.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def focal_loss(logits: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor,
               alpha: float = 0.75, gamma: float = 2.0) -> torch.Tensor:
    """Mean focal loss over the samples where ``valid`` is True; logits, targets, valid are (B, n)."""
    total, count = focal_loss_terms(logits, targets, valid, alpha, gamma)
    return total / count.clamp_min(1.0)


def focal_loss_terms(logits: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor,
                     alpha: float = 0.75, gamma: float = 2.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of the focal loss over the valid samples, their count): what processes that each hold part of
    a batch add up, so that the mean over the whole batch is the same however it is split."""
    logits = logits.float()
    targets = targets.float()
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_true = torch.exp(-ce)
    alpha_t = alpha * targets + (1.0 - alpha) * (1.0 - targets)
    loss = alpha_t * (1.0 - p_true).pow(gamma) * ce
    weights = valid.to(loss.dtype)
    return (loss * weights).sum(), weights.sum()
