"""Output marking: a copy of a graph whose outputs are chosen tensors, each readable as float32.

Polygraphy's ``ModifyOutputs`` does the marking; a tensor stored in fp16 or bf16 (the rounding engines
keep their activations so) is marked through a Cast to float32 named ``<tensor>::fp32``, because ONNX
Runtime's Python API cannot hand a bfloat16 array to numpy. ``read_marked`` gives the values back
under the tensors' own names.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
from polygraphy.backend.onnx import ModifyOutputs

AS_FLOAT32 = "::fp32"
_LOW_PRECISION = (ir.DataType.FLOAT16, ir.DataType.BFLOAT16)


def mark_outputs(model: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    """A copy of ``model`` with exactly ``names`` (deduplicated) as outputs, all float32 or their own type."""
    names = list(dict.fromkeys(names))
    graph_model = ir.from_proto(onnx.shape_inference.infer_shapes(model))
    values = {v.name: v for node in graph_model.graph for v in node.outputs}
    marked = []
    for name in names:
        value = values.get(name)
        if value is None or value.dtype not in _LOW_PRECISION:
            marked.append(name)
            continue
        cast = ir.node("Cast", [value], {"to": ir.DataType.FLOAT}, name=f"{name}{AS_FLOAT32}")
        cast.outputs[0].name, cast.outputs[0].dtype, cast.outputs[0].shape = cast.name, ir.DataType.FLOAT, value.shape
        value.producer().graph.insert_after(value.producer(), cast)
        marked.append(cast.name)
    return ModifyOutputs(ir.to_proto(graph_model), outputs=marked, copy=False)()


def read_marked(outputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The outputs of a marked run under the tensors' own names."""
    return {name.removesuffix(AS_FLOAT32): value for name, value in outputs.items()}
