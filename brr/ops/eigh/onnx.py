"""ONNX translations of ``brr::eigh`` for ``torch.onnx.export(..., custom_translation_table=...)``.

Mode ``standard`` (only ai.onnx opset-18 ops)
---------------------------------------------
Batched parallel cyclic Jacobi. The input (..., n, n) is flattened to (B, n, n) and symmetrised from
its lower triangle (the spec reads only that). One ``Loop`` runs ``JACOBI_SWEEPS * rounds``
iterations, ``rounds`` = n - 1 (n even) or n (n odd, one index sits out each round). Iteration i
plays round ``i mod rounds`` of a round-robin ("chess tournament") schedule: floor(n/2) disjoint
pairs (p, q), so all of that round's rotations commute and are applied at once, for every matrix of
the batch, with Gathers and element-wise ops (O(n^2) work per round, no MatMul). The schedule is a
constant int64 table built at export time from the static n. The loop carries one tensor
X = [A; V] of shape (B, 2n, n): A is rotated on rows and columns, the accumulated eigenvectors V on
columns only (the exporter's Loop can carry one value; one tensor also halves the Gathers).
The rotation per pair uses the numerically stable tangent, with d = a_qq - a_pp, o = 2 a_pq scaled
by r = max(|d|, |o|) (so no square can overflow or underflow to 0/0, also in fp16):
    t = sign(d) * o / (|d| + sqrt(d^2 + o^2)),  sign(0) = +1,  t = 0 when r == 0,
    c = 1 / sqrt(1 + t^2),  s = t c;  rows p, q <- (c row_p - s row_q, s row_p + c row_q), same
for columns. Afterwards eigenvalues are diag(A), sorted ascending with TopK(largest=0), and the
columns of V are gathered in that order. n must be static; batch dims may be dynamic.

Mode ``plugin`` (one custom node per call)
------------------------------------------
    domain ``ai.onnx.contrib`` (version 1), op_type ``SymmetricEigh``
    input  ``A``: float32 (..., n, n), symmetric; only the lower triangle is read
    outputs ``eigenvalues``: float32 (..., n) ascending; ``eigenvectors``: float32 (..., n, n),
            column k belongs to eigenvalue k
    attribute ``plugin_namespace`` = "brr" (string)
The domain is the one onnxruntime-extensions gives every Python custom op (``brr.ops.eigh.ort``
implements it). TensorRT's ONNX parser ignores the domain: it maps a node it has no importer for to
the plugin creator whose name equals the op_type and whose namespace equals the node's
``plugin_namespace`` attribute (version "1"), i.e. the ``brr::SymmetricEigh`` plugin of
``brr.ops.eigh.trt``.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import onnxscript
import torch
from onnxscript import opset18 as op

PLUGIN_DOMAIN = "ai.onnx.contrib"
PLUGIN_OP_TYPE = "SymmetricEigh"
PLUGIN_NAMESPACE = "brr"

# Cyclic Jacobi converges quadratically; on 19x19 normalised Laplacians the fp32 off-diagonal mass
# stops shrinking (rounding floor) after 6 sweeps, 8 leaves a margin for harder spectra (measured).
JACOBI_SWEEPS = 8


def round_robin_schedule(n: int) -> list[list[tuple[int, int]]]:
    """Rounds of disjoint index pairs (p < q) in which every pair of 0..n-1 meets exactly once.

    Circle method: index 0 stays, the others rotate one place per round; for odd n a virtual index
    n is added and whoever meets it sits the round out.
    """
    m = n + n % 2
    circle = list(range(m))
    rounds = []
    for _ in range(m - 1):
        pairs = [tuple(sorted((circle[i], circle[m - 1 - i]))) for i in range(m // 2)]
        rounds.append([(p, q) for p, q in pairs if q < n])
        circle = [circle[0], circle[-1], *circle[1:-1]]
    return rounds


def _round_tables(n: int, dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    """Per round, the constants the loop body gathers with: (index rows, partner matrices).

    Index row (k = n // 2 pairs): [flat indices of a_pp, a_qq, a_pq in a (2n * n) row of X (3k) |
    slot (n)]. "slot" picks, per column, its rotation coefficients from [c_0..c_k-1, c_0..c_k-1, 1]
    and [-s_0..-s_k-1, s_0..s_k-1, 0]: p takes (c, -s), q (c, +s), an index sitting out (1, 0).
    Partner matrix: the symmetric permutation S with (M S)[:, p] = M[:, q] and vice versa, so one
    flat GEMM fetches every column's partner at once (ORT's axis-2 Gather copies element by element).
    """
    rows, partners = [], []
    for pairs in round_robin_schedule(n):
        k = len(pairs)
        p = np.array([pq[0] for pq in pairs], dtype=np.int64)
        q = np.array([pq[1] for pq in pairs], dtype=np.int64)
        slot = np.full(n, 2 * k, dtype=np.int64)
        slot[p], slot[q] = np.arange(k), k + np.arange(k)
        rows.append(np.concatenate([p * n + p, q * n + q, p * n + q, slot]))
        swap = np.arange(n)
        swap[p], swap[q] = q, p
        partners.append(np.eye(n, dtype=dtype)[swap])
    return np.stack(rows), np.stack(partners)


def _jacobi_round_body(n: int, dtype: ir.DataType, prefix: str) -> ir.Graph:
    """Loop body ``(i, cond, X) -> (cond, X')``: one round of simultaneous rotations on X = [A; V].

    With P the round's rotation (P_pp = P_qq = c, P_pq = s, P_qp = -s per pair): Y = X P rotates
    the columns of A and V; then, A being symmetric, (A P)^T P = P^T A P rotates A's rows as a
    column operation too, so both steps are the same GEMM-and-scale and nothing is wasted on V.
    Every value is named ``prefix...``: the exporter would otherwise name them ``val_<k>`` like the
    main graph's values, and a subgraph name shadowing an outer one is invalid ONNX.
    """
    k = n // 2
    np_dtype = dtype.numpy()
    index_rows, partner_matrices = _round_tables(n, np_dtype)
    tape = ir.tape.Tape()

    def const(value) -> ir.Value:
        return tape.op("Constant", [], attributes={"value": ir.tensor(value)})

    def i64(*values) -> ir.Value:
        return const(np.array(values, dtype=np.int64))

    one = const(np.array(1, dtype=np_dtype))
    zero = const(np.array(0, dtype=np_dtype))

    i = ir.Value(name=f"{prefix}iter", type=ir.TensorType(ir.DataType.INT64), shape=ir.Shape([]))
    cond = ir.Value(name=f"{prefix}cond", type=ir.TensorType(ir.DataType.BOOL), shape=ir.Shape([]))
    x = ir.Value(name=f"{prefix}x", type=ir.TensorType(dtype), shape=ir.Shape([None, 2 * n, n]))

    round_index = tape.op("Mod", [i, const(np.array(len(index_rows), dtype=np.int64))])
    row = tape.op("Gather", [const(index_rows), round_index], attributes={"axis": 0})
    entries, slot = tape.op_multi_out("Split", [row, i64(3 * k, n)], attributes={"axis": 0}, num_outputs=2)
    partner = tape.op("Gather", [const(partner_matrices), round_index], attributes={"axis": 0})

    flat = tape.op("Reshape", [x, i64(-1, 2 * n * n)])
    pair_entries = tape.op("Gather", [flat, entries], attributes={"axis": 1})
    a_pp, a_qq, a_pq = tape.op_multi_out(
        "Split", [pair_entries], attributes={"axis": 1, "num_outputs": 3}, num_outputs=3
    )
    d = tape.op("Sub", [a_qq, a_pp])
    o = tape.op("Add", [a_pq, a_pq])
    abs_d = tape.op("Abs", [d])
    # Scaling by r makes max(|d|, |o|) exactly 1, so the denominator below is >= 1 unless r == 0,
    # where the rotation must be the identity (t = 0/1): no 0/0 for zero or already-diagonal pairs.
    r = tape.op("Max", [abs_d, tape.op("Abs", [o])])
    r_safe = tape.op("Where", [tape.op("Greater", [r, zero]), r, one])
    d_n = tape.op("Div", [d, r_safe])
    o_n = tape.op("Div", [o, r_safe])
    hyp = tape.op("Sqrt", [tape.op("Add", [tape.op("Mul", [d_n, d_n]), tape.op("Mul", [o_n, o_n])])])
    den = tape.op("Max", [tape.op("Add", [tape.op("Abs", [d_n]), hyp]), one])
    signed_o = tape.op("Where", [tape.op("GreaterOrEqual", [d, zero]), o_n, tape.op("Neg", [o_n])])
    t = tape.op("Div", [signed_o, den])
    c = tape.op("Reciprocal", [tape.op("Sqrt", [tape.op("Add", [tape.op("Mul", [t, t]), one])])])
    s = tape.op("Mul", [t, c])

    pad_last = i64(0, 0, 0, 1)
    c_table = tape.op("Pad", [tape.op("Concat", [c, c], attributes={"axis": 1}), pad_last, one])
    s_table = tape.op(
        "Pad", [tape.op("Concat", [tape.op("Neg", [s]), s], attributes={"axis": 1}), pad_last, zero]
    )
    coef_c, coef_s = (
        tape.op("Unsqueeze", [tape.op("Gather", [table, slot], attributes={"axis": 1}), i64(1)])
        for table in (c_table, s_table)
    )

    def rotate_columns(value):
        swapped = tape.op("MatMul", [value, partner])
        return tape.op("Add", [tape.op("Mul", [value, coef_c]), tape.op("Mul", [swapped, coef_s])])

    a_cols, v_next = tape.op_multi_out(
        "Split", [rotate_columns(x)], attributes={"axis": 1, "num_outputs": 2}, num_outputs=2
    )
    a_next = rotate_columns(tape.op("Transpose", [a_cols], attributes={"perm": [0, 2, 1]}))
    x_next = tape.op("Concat", [a_next, v_next], attributes={"axis": 1})
    cond_next = tape.op("Identity", [cond])
    for index, node in enumerate(tape.nodes):
        for out_index, value in enumerate(node.outputs):
            value.name = f"{prefix}{index}_{out_index}"
    return ir.Graph(
        inputs=[i, cond, x], outputs=[cond_next, x_next], nodes=tape.nodes, name="jacobi_round"
    )


def _static_size(a) -> int:
    n = a.shape[-1]
    if not isinstance(n, int):
        raise ValueError(f"brr::eigh standard translation needs a static matrix size, got {a.shape}")
    return n


def _eigh_standard(a):
    """Standard-op Jacobi eigendecomposition (see the module docstring)."""
    n = _static_size(a)
    np_dtype = a.dtype.numpy()
    batch_shape = op.Shape(a, start=0, end=-2)
    a3 = op.Reshape(a, op.Constant(value=ir.tensor(np.array([-1, n, n], dtype=np.int64))))
    eye = np.eye(n, dtype=np_dtype)
    strict_lower = op.Mul(a3, op.Constant(value=ir.tensor(np.tril(np.ones((n, n), np_dtype), -1))))
    sym = op.Add(
        op.Add(strict_lower, op.Transpose(strict_lower, perm=[0, 2, 1])),
        op.Mul(a3, op.Constant(value=ir.tensor(eye))),
    )
    eye_batch = op.Expand(op.Constant(value=ir.tensor(eye)), op.Shape(sym))
    x = op.Concat(sym, eye_batch, axis=1)
    if n > 1:
        rounds = len(round_robin_schedule(n))
        trip_count = op.Constant(value=ir.tensor(np.array(JACOBI_SWEEPS * rounds, dtype=np.int64)))
        keep_going = op.Constant(value=ir.tensor(np.array(True)))
        # The untyped Op (op["Loop"]) with every input by keyword: torch's recorder maps positional
        # args onto a variadic input that is not first (Loop's v_initial) by taking all of them.
        body = _jacobi_round_body(n, a.dtype, prefix=f"{a.name}_jacobi_")
        x = op["Loop"](M=trip_count, cond=keep_going, v_initial=x, body=body)
    rotated, vectors = op.Split(x, axis=1, num_outputs=2)
    diagonal = op.Constant(value=ir.tensor(np.arange(n, dtype=np.int64) * (n + 1)))
    values = op.Gather(op.Reshape(rotated, op.Constant(value=ir.tensor(np.array([-1, n * n], np.int64)))),
                       diagonal, axis=1)
    k = op.Constant(value=ir.tensor(np.array([n], dtype=np.int64)))
    sorted_values, order = op.TopK(values, k, axis=-1, largest=0, sorted=1)
    column_order = op.Expand(op.Unsqueeze(order, op.Constant(value_ints=[1])), op.Shape(vectors))
    sorted_vectors = op.GatherElements(vectors, column_order, axis=2)
    n_tail = op.Constant(value=ir.tensor(np.array([n], dtype=np.int64)))
    out_values = op.Reshape(sorted_values, op.Concat(batch_shape, n_tail, axis=0))
    out_vectors = op.Reshape(sorted_vectors, op.Concat(batch_shape, n_tail, n_tail, axis=0))
    return out_values, out_vectors


def _plugin_schema() -> onnx.defs.OpSchema:
    tensor = "T"
    return onnx.defs.OpSchema(
        PLUGIN_OP_TYPE,
        PLUGIN_DOMAIN,
        1,
        inputs=[onnx.defs.OpSchema.FormalParameter("A", tensor)],
        outputs=[
            onnx.defs.OpSchema.FormalParameter("eigenvalues", tensor),
            onnx.defs.OpSchema.FormalParameter("eigenvectors", tensor),
        ],
        type_constraints=[(tensor, ["tensor(float)"], "float32 matrices")],
        attributes=[onnx.defs.OpSchema.Attribute("plugin_namespace", onnx.defs.OpSchema.AttrType.STRING)],
    )


# The schema lives on this Op object only (not in onnx's global registry): it tells the exporter's
# recorder that the node has two outputs.
_plugin_op = onnxscript.values.Op(
    onnxscript.values.Opset(PLUGIN_DOMAIN, 1), PLUGIN_OP_TYPE, op_schema=_plugin_schema()
)


def _eigh_plugin(a):
    """One ``ai.onnx.contrib::SymmetricEigh`` node."""
    values, vectors = _plugin_op(a, plugin_namespace=PLUGIN_NAMESPACE)
    return values, vectors


def translations(mode: str) -> dict:
    """``{torch.ops.brr.eigh.default: translation}`` for ``mode`` in ``registry.OPS_MODES``."""
    if mode == "standard":
        return {torch.ops.brr.eigh.default: _eigh_standard}
    if mode == "plugin":
        return {torch.ops.brr.eigh.default: _eigh_plugin}
    raise ValueError(f"brr::eigh has no ONNX translation for mode {mode!r}")
