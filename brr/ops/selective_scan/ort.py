"""ONNX Runtime CPU kernel of the ``ai.onnx.contrib::SelectiveScan`` node (see ``onnx.py``).

Importing this module registers the kernel as an onnxruntime-extensions Python op (``@onnx_op``).
Python ops are served by the onnxruntime-extensions custom-op library, under its domain
``ai.onnx.contrib`` (``onnxruntime_extensions.default_opset_domain()``), so a session only finds the
kernel when it was created with that library loaded::

    so = onnxruntime.SessionOptions()
    so.register_custom_ops_library(onnxruntime_extensions.get_library_path())
    session = onnxruntime.InferenceSession(path, so, providers=["CPUExecutionProvider"])

The kernel is declared for float32 inputs and output: keep the node in float32 when converting a plugin
graph to float16 (e.g. ``op_block_list=["SelectiveScan"]``). It is still a Python op: ONNX Runtime calls
back into Python for every node, and the onnxruntime wheel ships no C API headers to compile a native
custom-op library against. Inside, the compute is the native C++ kernel (``native.py``) on the numpy
buffers when it is built, else ``ssd_chunked_numpy``, the chunked SSD of ``reference.ssd_chunked``
vectorised with numpy. For a compiled CPU path use the OpenVINO engine of the plugin-mode export.
"""

from __future__ import annotations

import numpy as np
from onnxruntime_extensions import PyCustomOpDef, onnx_op

from brr.machine import cpu_threads
from brr.ops.selective_scan import INPUT_NAMES, OP_TYPE, native, parse_attributes


def _segment_decay(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(..., T) -> segment sums s[i, j] = a[j+1..i] (0 for j >= i) and exp(s) masked to j <= i."""
    size = a.shape[-1]
    sums = np.cumsum(np.where(np.tri(size, k=-1, dtype=bool), a[..., :, None], 0), axis=-2, dtype=a.dtype)
    return sums, np.where(np.tri(size, dtype=bool), np.exp(sums), 0).astype(a.dtype)


def ssd_chunked_numpy(
    x: np.ndarray,
    dt: np.ndarray,
    A: np.ndarray,
    B: np.ndarray,
    C: np.ndarray,
    D: np.ndarray,
    dt_bias: np.ndarray,
    dt_softplus: bool,
    chunk_size: int,
) -> np.ndarray:
    """``reference.ssd_chunked`` in numpy, laid out (b, g, r, c, T, ...) with heads h = g * r."""
    b, length, h, p = x.shape
    g, n = B.shape[2], B.shape[3]
    r, t = h // g, chunk_size
    dt = dt + dt_bias
    if dt_softplus:
        dt = np.logaddexp(dt.dtype.type(0), dt)
    pad = -length % t
    c = (length + pad) // t

    def chunked(v: np.ndarray) -> np.ndarray:  # zero tail (dt = 0: no decay, no input), then (b, c, T, ...)
        v = np.pad(v, [(0, 0), (0, pad)] + [(0, 0)] * (v.ndim - 2))
        return v.reshape(b, c, t, *v.shape[2:])

    xs = chunked(x * dt[..., None]).reshape(b, c, t, g, r, p).transpose(0, 3, 4, 1, 2, 5)
    a = chunked(dt * A).reshape(b, c, t, g, r).transpose(0, 3, 4, 1, 2)
    Bc = chunked(B).transpose(0, 3, 1, 2, 4)[:, :, None]  # (b, g, 1, c, T, n), shared by a group's heads
    Cc = chunked(C).transpose(0, 3, 1, 2, 4)[:, :, None]

    sums, decay = _segment_decay(a)
    y = (Cc @ Bc.swapaxes(-1, -2) * decay) @ xs  # within-chunk part
    # Each chunk's final state from a zero start; the last segment-sum row is the decay to the chunk end.
    states = (xs * np.exp(sums[..., -1, :])[..., None]).swapaxes(-1, -2) @ Bc  # (b, g, r, c, p, n)
    totals = np.pad(a.sum(axis=-1), [(0, 0)] * 3 + [(1, 0)])
    carried = _segment_decay(totals)[1][..., :-1, 1:] @ states.reshape(b, g, r, c, p * n)
    y += (Cc @ carried.reshape(b, g, r, c, p, n).swapaxes(-1, -2)) * np.exp(np.cumsum(a, axis=-1))[..., None]
    y = y.transpose(0, 3, 4, 1, 2, 5).reshape(b, c * t, h, p)[:, :length]
    return y + x * D[:, None]


@onnx_op(
    op_type=OP_TYPE,
    inputs=[PyCustomOpDef.dt_float] * len(INPUT_NAMES),
    outputs=[PyCustomOpDef.dt_float],
    attrs={"dt_softplus": PyCustomOpDef.dt_int64, "chunk_size": PyCustomOpDef.dt_int64},
)
def selective_scan_kernel(x, dt, A, B, C, D, dt_bias, dt_softplus, chunk_size):
    softplus, chunk = parse_attributes(dt_softplus, chunk_size)
    if not native.available():
        return ssd_chunked_numpy(x, dt, A, B, C, D, dt_bias, softplus, chunk).astype(np.float32, copy=False)
    operands = [np.ascontiguousarray(v, dtype=np.float32) for v in (x, dt, A, B, C, D, dt_bias)]
    y = np.empty_like(operands[0])
    native.require().forward(*operands, y, softplus, cpu_threads())
    return y
