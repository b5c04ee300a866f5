"""Selective scan (Mamba-2 SSD) as the custom op ``brr::selective_scan``.

Spec
----
Inputs (float32 unless noted; b batch, l length, h heads, p head dim, g groups, n state size):
  x (b, l, h, p); dt (b, l, h) raw step sizes; A (h,) negative decay rates; B, C (b, l, g, n) with
  h % g == 0; D (h,) skip weights or None; dt_bias (h,) or None; dt_softplus: bool; chunk_size: int > 0.
Output: y (b, l, h, p), the same dtype as x.
Semantics: dt' = softplus(dt + dt_bias) (when dt_softplus), then for each head the linear recurrence
  state_t = exp(dt'_t A) state_{t-1} + dt'_t x_t B_t^T,  y_t = state_t C_t + D x_t,  state_{-1} = 0.
The chunked SSD evaluation in ``reference.ssd_chunked`` is the reference; chunk_size changes only
the rounding, never the result.

Implementations: ``reference`` (PyTorch, CPU and CUDA; the mamba-ssm Triton kernel on CUDA when
installed), ``onnx`` (standard ONNX decomposition and the custom node), ``ort`` (ONNX Runtime
kernel), ``trt`` (TensorRT plugin).

Custom node (ops mode "plugin"): ``ai.onnx.contrib::SelectiveScan`` with inputs x, dt, A, B, C, D, dt_bias
(missing D / dt_bias exported as zeros), output y, attributes dt_softplus (int 0/1), chunk_size (int),
plugin_namespace "brr" and plugin_version "1" (TensorRT's lookup keys for the ``brr::SelectiveScan``
plugin). ONNX Runtime sessions need ``register_custom_ops_library(onnxruntime_extensions.get_library_path())``
and ``brr.ops.selective_scan.ort`` imported; details in ``onnx.py``, ``ort.py`` and ``trt.py``.
"""

from __future__ import annotations

import torch

from brr.ops.selective_scan.reference import ssd_chunked, ssd_recurrent

__all__ = ["selective_scan", "ssd_chunked", "ssd_recurrent"]


@torch.library.custom_op("brr::selective_scan", mutates_args=())
def _selective_scan_op(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None,
    dt_bias: torch.Tensor | None,
    dt_softplus: bool,
    chunk_size: int,
) -> torch.Tensor:
    return ssd_chunked(x, dt, A, B, C, D, dt_bias, dt_softplus, chunk_size).contiguous()


@_selective_scan_op.register_kernel("cuda")
def _selective_scan_cuda(x, dt, A, B, C, D, dt_bias, dt_softplus, chunk_size):
    try:
        from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined
    except ImportError:  # the pure-PyTorch path is always valid
        return ssd_chunked(x, dt, A, B, C, D, dt_bias, dt_softplus, chunk_size).contiguous()
    return mamba_chunk_scan_combined(
        x.contiguous(), dt.contiguous(), A, B.contiguous(), C.contiguous(), chunk_size,
        D=D, dt_bias=dt_bias, dt_softplus=dt_softplus,
    ).to(x.dtype)


@_selective_scan_op.register_fake
def _(x, dt, A, B, C, D, dt_bias, dt_softplus, chunk_size):
    return x.new_empty(x.shape)


def _setup_context(ctx, inputs, output):
    ctx.save_for_backward(*[t for t in inputs[:7] if t is not None])
    ctx.present = [t is not None for t in inputs[:7]]
    ctx.flags = inputs[7:]


def _backward(ctx, grad_y):
    # Recompute the differentiable reference and take its vector-Jacobian product: exact, and it
    # keeps the op opaque to tracers while training still works on any device.
    saved = iter(ctx.saved_tensors)
    tensors = [next(saved).detach().requires_grad_(True) if present else None for present in ctx.present]
    with torch.enable_grad():
        y = ssd_chunked(*tensors, *ctx.flags)
        wanted = [t for t in tensors if t is not None]
        grads = iter(torch.autograd.grad(y, wanted, grad_y, allow_unused=True))
    return (*[next(grads) if t is not None else None for t in tensors], None, None)


_selective_scan_op.register_autograd(_backward, setup_context=_setup_context)


def selective_scan(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    dt_bias: torch.Tensor | None = None,
    dt_softplus: bool = True,
    chunk_size: int = 64,
) -> torch.Tensor:
    """Run ``brr::selective_scan``; arguments as in mamba-ssm's ``mamba_chunk_scan_combined``."""
    return _selective_scan_op(x, dt, A, B, C, D, dt_bias, dt_softplus, chunk_size)
