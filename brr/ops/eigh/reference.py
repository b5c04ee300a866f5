"""PyTorch reference of the symmetric eigendecomposition and its gradient."""

from __future__ import annotations

import torch

# Eigenvalue gaps below this are treated as a degenerate eigenspace in the gradient: any basis of
# such a space is correct, so the gradient that would rotate within it is set to zero, not inf.
DEGENERATE_GAP = 1e-6


def eigh_reference(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(..., n, n) symmetric -> eigenvalues (..., n) ascending, eigenvectors (..., n, n) as columns.

    Only the lower triangle is read, as LAPACK does.
    """
    return torch.linalg.eigh(a)


def eigh_backward(
    eigenvalues: torch.Tensor, eigenvectors: torch.Tensor, grad_values: torch.Tensor | None,
    grad_vectors: torch.Tensor | None,
) -> torch.Tensor:
    """Gradient w.r.t. the symmetric input, with degenerate gaps masked (see DEGENERATE_GAP)."""
    v = eigenvectors
    inner = torch.zeros_like(v)
    if grad_vectors is not None:
        gap = eigenvalues.unsqueeze(-2) - eigenvalues.unsqueeze(-1)  # gap[i, j] = l_j - l_i
        safe = gap.abs() > DEGENERATE_GAP
        inv_gap = torch.where(safe, 1.0 / torch.where(safe, gap, torch.ones_like(gap)), torch.zeros_like(gap))
        inner = inv_gap * (v.mT @ grad_vectors)
    if grad_values is not None:
        inner = inner + torch.diag_embed(grad_values)
    grad = v @ inner @ v.mT
    return 0.5 * (grad + grad.mT)
