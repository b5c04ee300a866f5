"""Graph network on the B*T small graphs, as dense batched matrix products (no loop over graphs).

SSGConv (Zhu & Koniusz 2021; ``torch_geometric.nn.SSGConv``):
  A_hat = A with a weight-1 self loop on every node that has none,
  P = D_hat^-1/2 A_hat D_hat^-1/2,
  out = Linear(alpha x + (1 - alpha)/K * sum_{k=1..K} P^k x).
Layer 1 maps [node features, positional encoding] -> D; later layers D -> D with a residual;
LayerNorm after each layer.
"""

from __future__ import annotations

import torch
from torch import nn

from brr.model.config import DetectorConfig


def propagation_matrix(adjacency: torch.Tensor) -> torch.Tensor:
    """(N, n, n) non-negative weighted adjacency -> normalised propagation matrix with self loops."""
    diagonal = torch.diagonal(adjacency, dim1=-2, dim2=-1)
    missing_loops = (diagonal == 0).to(adjacency.dtype)
    a_hat = adjacency + torch.diag_embed(missing_loops)
    # Messages flow along A[j, i] from j to i, and gcn_norm counts in-degrees (column sums): P is
    # built on A_hat^T so that P @ x is what SSGConv propagates, also for a non-symmetric A.
    incoming = a_hat.transpose(-1, -2)
    inv_sqrt = incoming.sum(-1).rsqrt()  # every node has a self loop, so degrees are >= its weight
    return inv_sqrt.unsqueeze(-1) * incoming * inv_sqrt.unsqueeze(-2)


class DenseSSGConv(nn.Module):
    def __init__(self, in_features: int, out_features: int, alpha: float, hops: int):
        super().__init__()
        self.alpha = alpha
        self.hops = hops
        self.lin = nn.Linear(in_features, out_features)

    def forward(self, x: torch.Tensor, propagation: torch.Tensor) -> torch.Tensor:
        out = self.alpha * x
        h = x
        for _ in range(self.hops):
            h = propagation @ h
            out = out + (1.0 - self.alpha) / self.hops * h
        return self.lin(out)


class GraphNetwork(nn.Module):
    def __init__(self, cfg: DetectorConfig):
        super().__init__()
        d = cfg.electrode_dim
        widths = [d + cfg.k_eigenvectors] + [d] * (cfg.gnn_layers - 1)
        self.convs = nn.ModuleList(DenseSSGConv(w, d, cfg.ssgconv_alpha, cfg.ssgconv_hops) for w in widths)
        self.norms = nn.ModuleList(nn.LayerNorm(d) for _ in widths)

    def forward(self, nodes: torch.Tensor, pe: torch.Tensor, adjacency: torch.Tensor) -> torch.Tensor:
        """nodes (B, 19, T, D), pe (B, T, 19, k), adjacency (B, T, 19, 19) -> (B, 19, T, D)."""
        b, n, t, d = nodes.shape
        propagation = propagation_matrix(adjacency.reshape(b * t, n, n))
        h = torch.cat([nodes.transpose(1, 2), pe], dim=-1).reshape(b * t, n, -1)
        for i, (conv, norm) in enumerate(zip(self.convs, self.norms)):
            h = norm(conv(h, propagation) if i == 0 else h + conv(h, propagation))
        return h.reshape(b, t, n, d).transpose(1, 2)
