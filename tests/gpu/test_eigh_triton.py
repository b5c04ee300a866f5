"""The Triton eigh kernel compiled for this GPU, against torch.linalg.eigh (cuSOLVER) and float64 LAPACK."""

import numpy as np
import pytest
import torch

from brr.ops.eigh.compare import eigenspace_projectors

triton_eigh = pytest.importorskip("brr.ops.eigh.triton", reason="needs triton", exc_type=ImportError)

N = 19


def _model_laplacians(generator: torch.Generator, count: int, n: int = N) -> torch.Tensor:
    """As the model builds them: top-3 symmetric weights per row, I - D^-1/2 A D^-1/2 + 1e-4 I."""
    w = torch.rand(count, n, n, generator=generator, dtype=torch.float64)
    w.diagonal(dim1=-2, dim2=-1).zero_()
    a = torch.where(w >= w.topk(3, dim=-1).values[..., -1:], w, 0.0)
    a = torch.maximum(a, a.mT)
    inv_sqrt_degree = a.sum(-1).rsqrt()
    scaled = inv_sqrt_degree[..., :, None] * a * inv_sqrt_degree[..., None, :]
    return (1 + 1e-4) * torch.eye(n, dtype=torch.float64) - scaled


def _inputs() -> torch.Tensor:
    """Random symmetric, clustered spectra (eigenvalues repeated 4 times), and the model's batch of
    Laplacians at batch 16 (192 held steps per window)."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(64, N, N, generator=generator, dtype=torch.float64)
    q, _ = torch.linalg.qr(torch.randn(64, N, N, generator=generator, dtype=torch.float64))
    repeated = torch.rand(64, 5, generator=generator, dtype=torch.float64).repeat_interleave(4, -1)[:, :N]
    clustered = q @ torch.diag_embed(torch.sort(repeated).values) @ q.mT
    return torch.cat([(x + x.mT) / 2, clustered, _model_laplacians(generator, 16 * 192)])


def _errors(a, values, vectors, reference) -> tuple[float, float, float]:
    """(eigenvalue error relative to the matrix norm, eigenspace-projector error, orthonormality error)
    against ``reference`` (values, vectors), clustered by the float64 LAPACK eigenvalues of ``a``."""
    lapack_values = torch.linalg.eigh(a.double().cpu())[0]
    ref_values, ref_vectors = (t.double().cpu() for t in reference)
    values, vectors = values.double().cpu(), vectors.double().cpu()
    norm = lapack_values.abs().amax(-1, keepdim=True).clamp_min(1e-30)
    projectors = eigenspace_projectors(lapack_values.numpy(), vectors.numpy(), 1e-3)
    ref_projectors = eigenspace_projectors(lapack_values.numpy(), ref_vectors.numpy(), 1e-3)
    gram = vectors.mT @ vectors
    value_error = ((values - ref_values).abs() / norm).max().item()
    orthonormality_error = (gram - torch.eye(a.shape[-1], dtype=torch.float64)).abs().max().item()
    return value_error, float(np.abs(projectors - ref_projectors).max()), orthonormality_error


def test_cuda_kernel_matches_cusolver_and_lapack():
    a = _inputs().float().cuda()
    values, vectors = triton_eigh.eigh_triton(a)
    assert values.dtype == vectors.dtype == torch.float32
    against_lapack = _errors(a, values, vectors, torch.linalg.eigh(a.double()))
    against_cusolver = _errors(a, values, vectors, torch.linalg.eigh(a))
    for value_error, projector_error, orthonormality_error in (against_lapack, against_cusolver):
        assert value_error <= 1e-4 and projector_error < 1e-4 and orthonormality_error < 2e-5


def test_cuda_kernel_keeps_batch_shape_and_float16():
    a = _model_laplacians(torch.Generator().manual_seed(1), 8).reshape(2, 4, N, N)
    values, vectors = triton_eigh.eigh_triton(a.half().cuda())
    assert values.shape == (2, 4, N) and vectors.shape == (2, 4, N, N) and values.dtype == torch.float16
    value_error, _, orthonormality_error = _errors(a, values, vectors, torch.linalg.eigh(a))
    assert value_error < 2e-3 and orthonormality_error < 5e-3


def test_cuda_kernel_is_captured_into_a_cuda_graph():
    """No host synchronisation (torch.linalg.eigh has one): the kernel can be replayed from a CUDA graph."""
    a = _model_laplacians(torch.Generator().manual_seed(2), 192).float().cuda()
    triton_eigh.eigh_triton(a)  # compiles outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        values, vectors = triton_eigh.eigh_triton(a)
    a.copy_(_model_laplacians(torch.Generator().manual_seed(3), 192).float())
    graph.replay()
    torch.cuda.synchronize()
    value_error, projector_error, _ = _errors(a, values, vectors, torch.linalg.eigh(a.double()))
    assert value_error <= 1e-4 and projector_error < 1e-4

