"""Symmetric eigendecomposition as the custom op ``brr::eigh``.

Spec
----
Input: a (..., n, n) float32, symmetric (only the lower triangle is read).
Outputs: eigenvalues (..., n) in ascending order; eigenvectors (..., n, n), column k belonging to
eigenvalue k, orthonormal. Eigenvectors are defined up to sign, and within a repeated eigenvalue up
to any rotation of its eigenspace: implementations are compared by eigenvalues and by eigenspace
projectors, never by raw vectors.
Gradient: the standard first-order perturbation formula with degenerate gaps masked
(``reference.eigh_backward``).

Implementations: ``reference`` (torch.linalg.eigh / LAPACK), ``onnx`` (standard-op Jacobi
decomposition and the custom node), ``ort`` (ONNX Runtime kernel), ``trt`` (TensorRT plugin).

Custom node (``plugin`` export mode, one per call): domain ``ai.onnx.contrib`` version 1, op_type
``SymmetricEigh``, input A float32 (..., n, n), outputs eigenvalues (..., n) and eigenvectors
(..., n, n) as above, string attribute ``plugin_namespace="brr"``. ONNX Runtime runs it after
``import brr.ops.eigh.ort`` in sessions that load ``onnxruntime_extensions.get_library_path()``;
TensorRT's ONNX parser maps it to the plugin ``brr::SymmetricEigh`` once
``brr.ops.eigh.trt.register_plugin()`` has run. ``compare.eigenspace_projectors`` compares results.
"""

from __future__ import annotations

import torch

from brr.ops.eigh.reference import eigh_backward, eigh_reference

__all__ = ["eigh", "eigh_reference"]


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
