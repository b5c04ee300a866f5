"""ONNX Runtime CPU kernel of ``ai.onnx.contrib::SymmetricEigh`` (see ``brr.ops.eigh.onnx``).

Importing this module registers the kernel as an onnxruntime-extensions Python custom op; it runs
``numpy.linalg.eigh`` (LAPACK, lower triangle) on the whole batch. Sessions only find it when made
with the extensions library::

    so = onnxruntime.SessionOptions()
    so.register_custom_ops_library(onnxruntime_extensions.get_library_path())
    session = onnxruntime.InferenceSession(path, so, providers=["CPUExecutionProvider"])
"""

from __future__ import annotations

import numpy as np
from onnxruntime_extensions import PyCustomOpDef, onnx_op

from brr.ops.eigh import PLUGIN_OP_TYPE


@onnx_op(
    op_type=PLUGIN_OP_TYPE,
    inputs=[PyCustomOpDef.dt_float],
    outputs=[PyCustomOpDef.dt_float, PyCustomOpDef.dt_float],
    # Declared so the kernel accepts the node's TensorRT routing attribute; it plays no part here.
    attrs={"plugin_namespace": PyCustomOpDef.dt_string},
)
def symmetric_eigh(a: np.ndarray, plugin_namespace: str) -> tuple[np.ndarray, np.ndarray]:
    values, vectors = np.linalg.eigh(np.asarray(a, dtype=np.float32))
    return values.astype(np.float32), vectors.astype(np.float32)
