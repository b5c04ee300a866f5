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

Implementations: ``op`` (the PyTorch op ``brr::eigh``), ``reference`` (torch.linalg.eigh / LAPACK),
``onnx`` (standard-op Jacobi decomposition and the custom node), ``ort`` (ONNX Runtime kernel), ``triton``
(a Triton Jacobi kernel, one program per matrix, n <= 64, float32 or float16 I/O with float32 arithmetic),
``trt`` (TensorRT plugin: that kernel's PTX ahead of time, torch.linalg.eigh as the JIT fallback).

Custom node (``plugin`` export mode, one per call): domain ``ai.onnx.contrib`` version 1, op_type
``SymmetricEigh``, input A float32 (..., n, n), outputs eigenvalues (..., n) and eigenvectors
(..., n, n) as above, string attribute ``plugin_namespace="brr"``. ONNX Runtime runs it after
``import brr.ops.eigh.ort`` in sessions that load ``onnxruntime_extensions.get_library_path()``;
TensorRT's ONNX parser maps it to the plugin ``brr::SymmetricEigh`` once
``brr.ops.eigh.trt.register_plugin()`` has run. ``compare.eigenspace_projectors`` compares results.
"""

from __future__ import annotations

import importlib

# The custom node's contract, shared by onnx.py, ort.py and trt.py; free of PyTorch and onnxscript so that
# serving an engine needs neither.
PLUGIN_DOMAIN = "ai.onnx.contrib"
PLUGIN_OP_TYPE = "SymmetricEigh"
PLUGIN_NAMESPACE = "brr"

# PyTorch-side names, imported on first use (``from brr.ops.eigh import eigh``).
_LAZY = {"eigh": "op", "eigh_reference": "reference", "eigh_backward": "reference"}

__all__ = ["PLUGIN_DOMAIN", "PLUGIN_NAMESPACE", "PLUGIN_OP_TYPE", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
