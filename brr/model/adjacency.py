"""Adjacency assembly: edge weights (B, 171, T) -> one 19x19 graph per step, (B, T, 19, 19).

Per step: the symmetric matrix of the 171 weights (zero diagonal); keep each row's top-k entries;
zero entries <= threshold; symmetrise (A + A^T) / 2; put 1 on the diagonal of every node whose
row sum is below the threshold (isolated node), so that no node is left without an edge.
"""

from __future__ import annotations

import torch
from torch import nn

from brr.model.config import DetectorConfig
from brr.montage import pair_indices


def pair_scatter_matrix(n: int) -> torch.Tensor:
    """(n(n-1)/2, n*n) 0/1 matrix that places pair weights at (i, j) and (j, i): a matmul, not a scatter."""
    pairs = pair_indices() if n == 19 else [(i, j) for i in range(n) for j in range(i + 1, n)]
    scatter = torch.zeros(len(pairs), n * n)
    for e, (i, j) in enumerate(pairs):
        scatter[e, i * n + j] = 1.0
        scatter[e, j * n + i] = 1.0
    return scatter


def top_k_mask(a: torch.Tensor, k: int) -> torch.Tensor:
    """1 where an entry is among its row's k largest, else 0."""
    _, index = a.topk(k, dim=-1)
    return torch.zeros_like(a).scatter(-1, index, 1.0)


class AdjacencyAssembly(nn.Module):
    def __init__(self, cfg: DetectorConfig):
        super().__init__()
        self.n = cfg.n_channels
        self.top_k = cfg.edge_top_k
        self.threshold = cfg.edge_threshold
        self.register_buffer("scatter", pair_scatter_matrix(self.n), persistent=False)

    def forward(self, weights: torch.Tensor) -> torch.Tensor:
        b, _, t = weights.shape
        dense = (weights.transpose(1, 2) @ self.scatter).reshape(b, t, self.n, self.n)
        kept = dense * top_k_mask(dense, self.top_k)
        kept = torch.where(kept > self.threshold, kept, torch.zeros_like(kept))
        symmetric = 0.5 * (kept + kept.transpose(-1, -2))
        isolated = (symmetric.sum(-1) < self.threshold).to(symmetric.dtype)
        return symmetric + torch.diag_embed(isolated)
