"""Laplacian positional encoding: (B, T, 19, 19) adjacency -> (B, T, 19, k) node encodings.

L = I - D^-1/2 A D^-1/2 (degrees clamped at ``degree_clamp``) + ``laplacian_shift`` * I; the
eigenvectors of its k smallest eigenvalues (``brr.ops.eigh``), each column's sign fixed so that its
sum is >= 0. Dynamic: computed every ``semi_dynamic_interval`` steps and held in between. Static:
the same from the fixed 10-20 neighbour graph (``brr.montage.NEIGHBOUR_PAIRS``), computed once.
"""

from __future__ import annotations

import torch
from torch import nn

from brr.model import guards
from brr.model.config import DetectorConfig
from brr.montage import CHANNELS, NEIGHBOUR_PAIRS
from brr.ops.eigh import eigh


def normalised_laplacian(adjacency: torch.Tensor, degree_clamp: float, shift: float) -> torch.Tensor:
    n = adjacency.shape[-1]
    inv_sqrt_degree = adjacency.sum(-1).clamp_min(degree_clamp).rsqrt()
    eye = torch.eye(n, dtype=adjacency.dtype, device=adjacency.device)
    scaled = inv_sqrt_degree.unsqueeze(-1) * adjacency * inv_sqrt_degree.unsqueeze(-2)
    return (1.0 + shift) * eye - scaled


def fix_signs(vectors: torch.Tensor) -> torch.Tensor:
    """Flip each column so that its entries sum to >= 0: a deterministic choice among +-v."""
    sign = torch.where(vectors.sum(-2, keepdim=True) >= 0, 1.0, -1.0).to(vectors.dtype)
    return vectors * sign


def laplacian_eigenvectors(adjacency: torch.Tensor, k: int, degree_clamp: float, shift: float) -> torch.Tensor:
    _, vectors = eigh(normalised_laplacian(adjacency, degree_clamp, shift))
    return fix_signs(vectors[..., :k])


def montage_adjacency() -> torch.Tensor:
    index = {name: i for i, name in enumerate(CHANNELS)}
    a = torch.zeros(len(CHANNELS), len(CHANNELS), dtype=torch.float64)
    for u, v in NEIGHBOUR_PAIRS:
        a[index[u], index[v]] = a[index[v], index[u]] = 1.0
    return a


class LaplacianPE(nn.Module):
    def __init__(self, cfg: DetectorConfig):
        super().__init__()
        self.dynamic = cfg.use_dynamic_pe
        self.k = cfg.k_eigenvectors
        self.interval = cfg.semi_dynamic_interval
        self.degree_clamp = cfg.degree_clamp
        self.shift = cfg.laplacian_shift
        self.guarded = cfg.guards
        # Computed in float64 by LAPACK once, so the static encoding is exactly reproducible.
        values, vectors = torch.linalg.eigh(normalised_laplacian(montage_adjacency(), cfg.degree_clamp, cfg.laplacian_shift))
        self.register_buffer("static_pe", fix_signs(vectors[:, : self.k]).float(), persistent=False)

    def forward(self, adjacency: torch.Tensor) -> torch.Tensor:
        b, t, n, _ = adjacency.shape
        if not self.dynamic:
            return self.static_pe.expand(b, t, n, self.k)
        held = t // self.interval
        pe = laplacian_eigenvectors(adjacency[:, :: self.interval], self.k, self.degree_clamp, self.shift)
        pe = pe.unsqueeze(2).expand(b, held, self.interval, n, self.k).reshape(b, t, n, self.k)
        return guards.finite(pe, 1.0, self.guarded)
