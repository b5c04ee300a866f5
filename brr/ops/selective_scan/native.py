"""The native CPU kernels of the selective scan (C++, ``csrc/``), built by ``pip install`` with the package.

``csrc/scan.hpp`` holds the kernels: the recurrence of the spec run step by step in time, one batch row
per task with every head's (p, n) state in L1, fp32 arithmetic on fp32, fp16 or bf16 storage, and a
backward that runs the adjoint recurrence from the end on states recomputed from checkpoints. Two hosts
are compiled from it:

``_native`` (nanobind)
    ``forward`` / ``backward`` on raw CPU buffers (torch tensors or numpy arrays, no copies, no torch
    headers or ABI): the CPU kernel of ``brr::selective_scan`` and of the ONNX Runtime Python op.
``brr/ops/libbrr_openvino.so.1``
    The OpenVINO extension (``SelectiveScan`` operation and the ONNX frontend conversion of the custom
    node, with the other ops'), found by ``brr.ops.registry.openvino_extension()``.

When the package was installed without them (a source tree used without ``pip install``), every caller
falls back to the pure-PyTorch / numpy reference and ``require()`` says how to build them. Setting
``BRR_SELECTIVE_SCAN=reference`` makes the PyTorch op use the reference even when they are built.
"""

from __future__ import annotations

import os

try:
    from brr.ops.selective_scan import _native
except ImportError as error:  # a source tree that pip has not built
    _native = None
    _IMPORT_ERROR: ImportError | None = error
else:
    _IMPORT_ERROR = None

KERNEL_ENV = "BRR_SELECTIVE_SCAN"
BUILD_HINT = "build them with the package: pip install -e . (needs g++ and cmake >= 3.18)"


class NativeKernelMissing(ImportError):
    """The compiled kernels are not installed (or do not match the installed openvino)."""


def available() -> bool:
    return _native is not None


def enabled() -> bool:
    """Whether the PyTorch op runs the native kernel on CPU: built, and not switched off by the environment."""
    return _native is not None and os.environ.get(KERNEL_ENV, "native") != "reference"


def require():
    """The ``_native`` module, or a ``NativeKernelMissing`` that says why it is absent and how to build it."""
    if _native is None:
        raise NativeKernelMissing(f"brr's native selective-scan kernels are not built ({_IMPORT_ERROR}); {BUILD_HINT}")
    return _native


