"""Edge stream: electrode features (B, 19, T, D) -> non-negative edge weights (B, 171, T).

For each step, the similarity of every electrode pair i<j (row-major, ``brr.montage.pair_indices``):
  cosine       s_ij = <f_i, f_j> / (|f_i| |f_j|)
  correlation  the same on features centred over D (Pearson correlation).
Each of the 171 similarity series is lifted 1 -> lift_dim (Linear, no bias), run through a
bidirectional Mamba-2 stack (B*171 sequences), projected lift_dim -> 1 (Linear) and passed through
Softplus. ``edge_mamba.layers = 0`` skips the stack (the pointwise lift/projection remain).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from brr.model import guards
from brr.model.config import DetectorConfig
from brr.model.mamba2 import BidirectionalMamba2Stack
from brr.montage import pair_indices


def pair_similarity(features: torch.Tensor, metric: str, guarded: bool) -> torch.Tensor:
    """(B, 19, T, D) -> (B, 171, T) similarity of each electrode pair at each step."""
    b, n, t, _ = features.shape
    f = features.transpose(1, 2)  # (B, T, 19, D)
    if metric == "correlation":
        f = f - f.mean(-1, keepdim=True)
    gram = f @ f.transpose(-1, -2)  # (B, T, 19, 19)
    # The squared norm is the fp16 hazard: it overflows once features reach a few hundred.
    norm = torch.sqrt((f * f).sum(-1))
    denominator = norm.unsqueeze(-1) * norm.unsqueeze(-2)
    if guarded:
        denominator = denominator.clamp_min(guards.NORM_EPSILON)
    similarity = (gram / denominator).reshape(b, t, n * n)
    flat_pairs = torch.tensor([i * n + j for i, j in pair_indices()], device=features.device)
    similarity = similarity.index_select(-1, flat_pairs).transpose(1, 2)
    return guards.clamp(similarity, guards.SIMILARITY_LIMIT, guarded)


class EdgeStream(nn.Module):
    def __init__(self, cfg: DetectorConfig):
        super().__init__()
        self.metric = cfg.edge_metric
        self.guarded = cfg.guards
        self.lift = nn.Linear(1, cfg.edge_lift_dim, bias=False)
        self.mamba = BidirectionalMamba2Stack(cfg.edge_mamba)
        self.project = nn.Linear(cfg.edge_lift_dim, 1)

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (similarity, edge weights), both (B, 171, T)."""
        similarity = pair_similarity(features, self.metric, self.guarded)
        b, e, t = similarity.shape
        lifted = guards.clamp(self.lift(similarity.reshape(b * e, t, 1)), guards.LIFT_LIMIT, self.guarded)
        if len(self.mamba):
            lifted = self.mamba(guards.clamp(lifted, guards.MAMBA_INPUT_LIMIT, self.guarded))
        raw = guards.clamp(self.project(lifted), guards.EDGE_OUTPUT_LIMIT, self.guarded)
        weights = guards.finite(F.softplus(raw), guards.EDGE_OUTPUT_LIMIT, self.guarded)
        return similarity, weights.reshape(b, e, t)
