"""AdamW parameter groups and the warm-up + cosine learning-rate schedule."""

from __future__ import annotations

import math

import torch
from torch import nn

# Weight-norm magnitudes (``parametrizations.weight.original0``) are per-channel gains, like norm
# weights: decaying them would shrink every filter of the TCN towards zero.
_GAIN_SUFFIXES = ("parametrizations.weight.original0",)


def decays(name: str, param: nn.Parameter) -> bool:
    """Weight decay applies to weight matrices and conv kernels only.

    Excluded: biases and norm weights (1-D), weight-norm gains, and parameters flagged
    ``_no_weight_decay`` (the Mamba-2 ``A_log``, ``D`` and ``dt_bias``, as in mamba-ssm).
    """
    if getattr(param, "_no_weight_decay", False) or param.ndim < 2:
        return False
    return not name.endswith(_GAIN_SUFFIXES)


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two AdamW groups, in ``named_parameters`` order: decayed weights, then everything else."""
    decayed, plain = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (decayed if decays(name, param) else plain).append(param)
    return [{"params": decayed, "weight_decay": weight_decay}, {"params": plain, "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, lr: float, weight_decay: float) -> torch.optim.AdamW:
    return torch.optim.AdamW(parameter_groups(model, weight_decay), lr=lr)


def learning_rate(step: int, base_lr: float, warmup_steps: int, total_steps: int, min_lr_ratio: float) -> float:
    """Linear warm-up from base_lr/warmup to base_lr, then cosine decay to base_lr * min_lr_ratio."""
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return base_lr * (min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress)))
