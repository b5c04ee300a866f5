"""ONNX translations of ``brr::selective_scan`` for the dynamo exporter's ``custom_translation_table``.

Both translations are plain Python functions that the exporter runs in onnxscript's tracing mode: tensor
arguments arrive as ``ir.Value`` (static dims as ``int``, dynamic ones symbolic), a missing ``D`` or
``dt_bias`` arrives as ``None`` and ``dt_softplus`` / ``chunk_size`` arrive as Python ``bool`` / ``int``,
so the Python branches below run at export time and only ONNX nodes end up in the graph.

``standard`` mode
    The chunked SSD of ``reference.ssd_chunked`` spelled with opset-18 ops only (MatMul, CumSum, Exp,
    Where, Pad, Reshape, Transpose, Softplus, ...): no Loop/Scan, no custom domain. Batch and length may
    be dynamic; the zero padding to a multiple of ``chunk_size`` is computed in the graph. Heads, head
    dim, groups and state size must be static (they are weights' sizes). Masked entries of the
    segment sums are produced with ``Where(mask, Exp(s), 0)`` instead of ``Exp(-inf)``, and the sums
    themselves are masked cumulative sums (never differences of cumsums), so the graph stays finite and
    accurate after float16 conversion: no ``inf - inf``, no ``-inf * 0``, no ``exp(large)``.

``plugin`` mode
    One custom node per call::

        domain   ai.onnx.contrib            (the domain onnxruntime-extensions registers Python ops in)
        op_type  SelectiveScan
        inputs   x (b, l, h, p), dt (b, l, h), A (h,), B (b, l, g, n), C (b, l, g, n), D (h,), dt_bias (h,)
                 all of one float type (float32 or float16); all seven are always present: a missing
                 D or dt_bias is exported as zeros of A's shape, which computes the same result
        output   y (b, l, h, p), x's type and shape
        attrs    dt_softplus: int (0 or 1), chunk_size: int (> 0),
                 plugin_namespace: "brr", plugin_version: "1"

    ONNX Runtime runs it with the Python kernel of ``brr.ops.selective_scan.ort``; TensorRT's ONNX parser
    imports any op type it has no importer for as the plugin whose name is ``op_type`` and whose
    namespace/version are the node's ``plugin_namespace``/``plugin_version`` attributes (the node's
    domain is ignored), i.e. the ``brr::SelectiveScan`` plugin of ``brr.ops.selective_scan.trt``.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxscript
import torch
from onnxscript import ir
from onnxscript import opset18 as op

from brr.ops.selective_scan import DOMAIN, INPUT_NAMES, OP_TYPE, PLUGIN_NAMESPACE, PLUGIN_VERSION, parse_attributes
from brr.ops.selective_scan import op as selective_scan_op  # noqa: F401  (registers brr::selective_scan)

_INT = onnx.defs.OpSchema.AttrType.INT
_STRING = onnx.defs.OpSchema.AttrType.STRING

# onnxscript only emits nodes for ops it has a schema for; the custom op has none in onnx's registry.
_SCHEMA = onnx.defs.OpSchema(
    OP_TYPE,
    DOMAIN,
    1,
    "Mamba-2 selective scan (chunked SSD); see brr.ops.selective_scan.",
    inputs=[onnx.defs.OpSchema.FormalParameter(name, "T") for name in INPUT_NAMES],
    outputs=[onnx.defs.OpSchema.FormalParameter("y", "T")],
    type_constraints=[("T", ["tensor(float)", "tensor(float16)"], "float tensors")],
    attributes=[
        onnx.defs.OpSchema.Attribute("dt_softplus", _INT, required=True),
        onnx.defs.OpSchema.Attribute("chunk_size", _INT, required=True),
        onnx.defs.OpSchema.Attribute("plugin_namespace", _STRING, required=True),
        onnx.defs.OpSchema.Attribute("plugin_version", _STRING, required=True),
    ],
)
_selective_scan_node = onnxscript.values.Op(onnxscript.values.Opset(DOMAIN, 1), OP_TYPE, _SCHEMA)


def _static_dim(value: ir.Value, axis: int, what: str) -> int:
    dim = value.shape[axis]
    if not isinstance(dim, int):
        raise ValueError(f"selective_scan export needs a static {what}, got {dim!r} in {value.shape}")
    return dim


def _ints(values: list[int] | int) -> ir.Value:
    """An int64 constant: 1-D from a list, 0-D (a scalar, as Range/CumSum/Gather want) from an int."""
    return op.Constant(value=ir.tensor(np.asarray(values, dtype=np.int64)))


def _pad_time(value: ir.Value, pad: ir.Value, rank: int) -> ir.Value:
    """Zero-pad axis 1 of a rank-``rank`` tensor at its end by ``pad`` (a 1-element int64 tensor).

    Ranks are passed in because traced intermediate values carry no shape.
    """
    pads = op.Concat(_ints([0] * (rank + 1)), pad, _ints([0] * (rank - 2)), axis=0)
    return op.Pad(value, pads)


def _decay_matrix(a: ir.Value, size: ir.Value) -> tuple[ir.Value, ir.Value]:
    """Segment sums of a (..., T) and their exponential, both (..., T, T); ``size`` is T as a 1-D tensor.

    sums[..., i, j] = a[j+1] + ... + a[i] for j < i and 0 elsewhere: a cumulative sum of the strictly
    lower-masked rows, so no cancellation; decay = exp(sums) on and below the diagonal, 0 above.
    """
    index = op.Range(_ints(0), op.Squeeze(size), _ints(1))
    rows, cols = op.Unsqueeze(index, _ints([1])), op.Unsqueeze(index, _ints([0]))
    zero = op.CastLike(0.0, a)
    sums = op.CumSum(op.Where(op.Greater(rows, cols), op.Unsqueeze(a, _ints([-1])), zero), _ints(-2))
    return sums, op.Where(op.GreaterOrEqual(rows, cols), op.Exp(sums), zero)


def _transpose_last(value: ir.Value, rank: int) -> ir.Value:
    return op.Transpose(value, perm=[*range(rank - 2), rank - 1, rank - 2])


def selective_scan_standard(
    x, dt, A, B, C, D=None, dt_bias=None, dt_softplus: bool = True, chunk_size: int = 64
):
    """``reference.ssd_chunked`` in standard ONNX; tensors are laid out (b, g, r, c, T, ...) with h = g*r."""
    h = _static_dim(x, 2, "number of heads")
    p = _static_dim(x, 3, "head dim")
    g = _static_dim(B, 2, "number of groups")
    n = _static_dim(B, 3, "state size")
    if h % g:
        raise ValueError(f"heads ({h}) must be a multiple of groups ({g})")
    r = h // g
    dt_softplus, t = parse_attributes(int(dt_softplus), chunk_size)

    if dt_bias is not None:
        dt = op.Add(dt, dt_bias)
    if dt_softplus:
        dt = op.Softplus(dt)

    length = op.Shape(x, start=1, end=2)
    pad = op.Mod(op.Sub(_ints([t]), op.Mod(length, _ints([t]))), _ints([t]))
    xs = op.Mul(x, op.Unsqueeze(dt, _ints([-1])))
    a = op.Mul(dt, A)  # (b, l, h), <= 0; the padded tail has a = 0 and xs = 0, so it changes nothing

    # Split time into (chunk c, position T) and heads into (group g, head-in-group r).
    xs = op.Transpose(op.Reshape(_pad_time(xs, pad, 4), _ints([0, -1, t, g, r, p])), perm=[0, 3, 4, 1, 2, 5])
    a = op.Transpose(op.Reshape(_pad_time(a, pad, 3), _ints([0, -1, t, g, r])), perm=[0, 3, 4, 1, 2])

    def per_group(v):  # (b, l, g, n) -> (b, g, 1, c, T, n): shared by the r heads of a group
        v = op.Reshape(_pad_time(v, pad, 4), _ints([0, -1, t, g, n]))
        return op.Unsqueeze(op.Transpose(v, perm=[0, 3, 1, 2, 4]), _ints([2]))

    Bc, Cc = per_group(B), per_group(C)
    a_cumsum = op.CumSum(a, _ints(-1))  # (b, g, r, c, T)

    # 1. Within-chunk outputs: (C B^T * decay) @ xs.
    sums, decay = _decay_matrix(a, _ints([t]))
    scores = op.Mul(op.MatMul(Cc, _transpose_last(Bc, 6)), decay)  # (b, g, r, c, T, T)
    y_diag = op.MatMul(scores, xs)  # (b, g, r, c, T, p)

    # 2. State left by each chunk from a zero start; the last row of the segment sums is the decay
    #    from each position to the chunk end (no cumsum difference, so no cancellation in fp16).
    to_end = op.Exp(op.Gather(sums, _ints(t - 1), axis=-2))  # (b, g, r, c, T)
    states = op.MatMul(_transpose_last(op.Mul(xs, op.Unsqueeze(to_end, _ints([-1]))), 6), Bc)  # (.., c, p, n)

    # 3. Carry states across chunks: the state entering chunk z sums chunk j < z's state decayed through
    #    chunks j+1..z-1, i.e. rows 0..c-1 / columns 1..c of the decay matrix of [0, totals].
    totals = op.Pad(op.Gather(a_cumsum, _ints(t - 1), axis=-1), _ints([0, 0, 0, 1, 0, 0, 0, 0]))
    _, chunk_decay = _decay_matrix(totals, op.Shape(totals, start=-1))  # (b, g, r, c+1, c+1)
    chunk_decay = op.Slice(chunk_decay, _ints([0, 1]), _ints([-1, np.iinfo(np.int64).max]), _ints([-2, -1]))
    carried = op.MatMul(chunk_decay, op.Reshape(states, _ints([0, 0, 0, 0, p * n])))
    carried = op.Reshape(carried, _ints([0, 0, 0, 0, p, n]))

    # 4. Carried state read out at each position, decayed from the chunk start.
    y_off = op.Mul(op.MatMul(Cc, _transpose_last(carried, 6)), op.Unsqueeze(op.Exp(a_cumsum), _ints([-1])))

    y = op.Transpose(op.Add(y_diag, y_off), perm=[0, 3, 4, 1, 2, 5])  # (b, c, T, g, r, p)
    y = op.Slice(op.Reshape(y, _ints([0, -1, h, p])), _ints([0]), length, _ints([1]))
    if D is not None:
        y = op.Add(y, op.Mul(x, op.Unsqueeze(D, _ints([-1]))))
    return y


def selective_scan_plugin(
    x, dt, A, B, C, D=None, dt_bias=None, dt_softplus: bool = True, chunk_size: int = 64
):
    """One ``ai.onnx.contrib::SelectiveScan`` node (see the module docstring)."""
    dt_softplus, chunk_size = parse_attributes(int(dt_softplus), chunk_size)
    zeros = None
    if D is None or dt_bias is None:
        # D = 0 and dt_bias = 0 are exactly the missing terms, and keep the node's arity fixed.
        zeros = op.CastLike(op.ConstantOfShape(op.Shape(A)), A)
    return _selective_scan_node(
        x, dt, A, B, C,
        zeros if D is None else D,
        zeros if dt_bias is None else dt_bias,
        dt_softplus=int(dt_softplus),
        chunk_size=chunk_size,
        plugin_namespace=PLUGIN_NAMESPACE,
        plugin_version=PLUGIN_VERSION,
    )


def translations(mode: str) -> dict:
    """``{torch.ops.brr.selective_scan.default: translation}`` for ``mode`` "standard" or "plugin"."""
    functions = {"standard": selective_scan_standard, "plugin": selective_scan_plugin}
    if mode not in functions:
        raise ValueError(f"mode must be one of {tuple(functions)}, got {mode!r}")
    return {torch.ops.brr.selective_scan.default: functions[mode]}
