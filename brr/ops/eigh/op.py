"""``brr::eigh``, the PyTorch op (spec in ``brr/ops/eigh/__init__.py``): LAPACK forward, the masked
perturbation formula backward. Importing this module registers the op; ``brr.ops.eigh.eigh`` imports it on
first use.

On CUDA the forward stays ``torch.linalg.eigh`` (cuSOLVER), not the Triton kernel of ``triton.py``: the
PyTorch model is what ``brr-diff`` holds every engine to, and the TensorRT plugin runs that kernel, so the
PyTorch side keeps the independent LAPACK-grade reference (at the price of cuSOLVER's stream synchronisation).
"""

from __future__ import annotations

import torch

from brr.ops.eigh.reference import eigh_backward, eigh_reference


@torch.library.custom_op("brr::eigh", mutates_args=())
def _eigh_op(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    values, vectors = eigh_reference(a)
    return values.contiguous(), vectors.contiguous()


@_eigh_op.register_fake
def _(a):
    return a.new_empty(a.shape[:-1]), a.new_empty(a.shape)


def _setup_context(ctx, inputs, output):
    ctx.save_for_backward(*output)


def _backward(ctx, grad_values, grad_vectors):
    values, vectors = ctx.saved_tensors
    return eigh_backward(values, vectors, grad_values, grad_vectors)


_eigh_op.register_autograd(_backward, setup_context=_setup_context)


def eigh(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Run ``brr::eigh``: (eigenvalues ascending, eigenvectors as columns)."""
    return _eigh_op(a)
