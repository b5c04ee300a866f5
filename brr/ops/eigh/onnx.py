"""ONNX translations of ``brr::eigh`` for ``torch.onnx.export(..., custom_translation_table=...)``.

Mode ``standard`` (only ai.onnx opset-18 ops)
---------------------------------------------
Batched parallel cyclic Jacobi. The input (..., n, n) is flattened to (B, n, n) and symmetrised from
its lower triangle (the spec reads only that). One ``Loop`` runs ``JACOBI_SWEEPS * rounds``
iterations, ``rounds`` = n - 1 (n even) or n (n odd: one index sits out each round). Iteration i
plays round ``i mod rounds`` of a round-robin ("chess tournament") schedule of floor(n/2) disjoint
pairs (p, q); a round's rotations commute, so all of them, for every matrix of the batch, are applied
at once: a row Gather plus two scales for the rows, a GEMM with a constant permutation plus two
scales for the columns (53 nodes per iteration, no per-pair loop). The schedule is constant tables
built at export time from the static n. The loop carries one tensor X = [A, V^T] of shape
(B, 2, n, n) (the exporter's recorder gives a Loop one output): a round is A <- P^T A P and
V^T <- P^T V^T, so the rows of both halves rotate together and the columns of A alone.
The rotation per pair uses the numerically stable tangent, with d = a_qq - a_pp, o = 2 a_pq both
divided by r = max(|d|, |o|) (no square can overflow, and no 0/0, also after fp16 conversion):
    t = sign(d) o / (|d| + sqrt(d^2 + o^2)),  sign(0) = +1,  t = 0 where r == 0,
    c = 1 / sqrt(1 + t^2),  s = t c;  rows p, q <- (c row_p - s row_q, s row_p + c row_q), same for
columns. Afterwards the eigenvalues are diag(A), sorted ascending by TopK(largest=0), and V's columns
are gathered in that order. n must be static; the batch dimensions may be dynamic.

Mode ``plugin`` (one custom node per call)
------------------------------------------
    domain ``ai.onnx.contrib`` (version 1), op_type ``SymmetricEigh``
    input  ``A``: float32 (..., n, n), symmetric; only the lower triangle is read
    outputs ``eigenvalues``: float32 (..., n) ascending; ``eigenvectors``: float32 (..., n, n),
            column k belongs to eigenvalue k
    attribute ``plugin_namespace`` = "brr" (string)
The domain is the one onnxruntime-extensions gives every Python custom op (``brr.ops.eigh.ort``
implements it). TensorRT's ONNX parser maps a node it has no importer for to the plugin creator
named like the op_type, in the namespace given by the node's ``plugin_namespace`` attribute (version
"1"; the domain is not part of that lookup), i.e. the ``brr::SymmetricEigh`` plugin of
``brr.ops.eigh.trt``.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import onnxscript
import torch
from onnxscript import opset18 as op

from brr.ops.eigh import PLUGIN_DOMAIN, PLUGIN_NAMESPACE, PLUGIN_OP_TYPE
from brr.ops.eigh import op as eigh_op  # noqa: F401  (registers brr::eigh)

# Measured on 19x19 in fp32: normalised Laplacians (also disconnected) and random or clustered
# spectra reach the rounding floor after 5 sweeps; spectra spread log-uniformly over [1e-4, 2] need 8.
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


def _round_tables(n: int, dtype: np.dtype) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per round, the constants the loop body gathers with: (indices, spreads, partners).

    With the round's k = n // 2 pairs (p_j, q_j):
    indices (3k + n) int64: flat indices of a_pp, a_qq, a_pq in an (n * n) matrix, then each
    index's partner (q for p, p for q, itself when sitting out).
    spreads (2k + 1, n): rows 0..k-1 put c_j on p_j and q_j, rows k..2k-1 put -s_j on p_j and s_j
    on q_j, the last row is 1 where an index sits out, so c @ rows + last row and s @ rows give the
    per-index coefficients (one tiny GEMM each; ORT's Gather of single elements is far slower).
    partners (n, n): the permutation S with (M S)[:, p] = M[:, q], one flat GEMM for all columns.
    """
    indices, spreads, partners = [], [], []
    for pairs in round_robin_schedule(n):
        k = len(pairs)
        p = np.array([pq[0] for pq in pairs], dtype=np.int64)
        q = np.array([pq[1] for pq in pairs], dtype=np.int64)
        swap = np.arange(n, dtype=np.int64)
        swap[p], swap[q] = q, p
        indices.append(np.concatenate([p * n + p, q * n + q, p * n + q, swap]))
        spread = np.zeros((2 * k + 1, n), dtype=dtype)
        spread[np.arange(k), p] = spread[np.arange(k), q] = 1
        spread[k + np.arange(k), p], spread[k + np.arange(k), q] = -1, 1
        spread[2 * k, swap == np.arange(n)] = 1
        spreads.append(spread)
        partners.append(np.eye(n, dtype=dtype)[swap])
    return np.stack(indices), np.stack(spreads), np.stack(partners)


def _jacobi_round_body(n: int, dtype: ir.DataType, prefix: str) -> ir.Graph:
    """Loop body ``(i, cond, X) -> (cond, X')``: one round of rotations on X = [A, V^T] (B, 2, n, n).

    With P the round's rotation (P_pp = P_qq = c, P_pq = s, P_qp = -s per pair) the update is
    A <- P^T A P, V <- V P, i.e. V^T <- P^T V^T: first one row rotation of both halves of X (a
    row Gather and two scales), then the column rotation of A alone (partner GEMM and two scales).
    Every value is named ``prefix...``: the exporter would otherwise name them ``val_<k>`` like the
    main graph's values, and a subgraph name shadowing an outer one is invalid ONNX.
    The nodes are recorded on one tape in the order the helpers below are called; their names follow it.
    """
    k = n // 2
    np_dtype = dtype.numpy()
    indices, spreads, partners = _round_tables(n, np_dtype)
    tape = ir.tape.Tape()
    one = _const(tape, np.array(1, dtype=np_dtype))
    zero = _const(tape, np.array(0, dtype=np_dtype))

    i = ir.Value(name=f"{prefix}iter", type=ir.TensorType(ir.DataType.INT64), shape=ir.Shape([]))
    cond = ir.Value(name=f"{prefix}cond", type=ir.TensorType(ir.DataType.BOOL), shape=ir.Shape([]))
    x = ir.Value(name=f"{prefix}x", type=ir.TensorType(dtype), shape=ir.Shape([None, 2, n, n]))

    round_index = tape.op("Mod", [i, _const(tape, np.array(len(indices), dtype=np.int64))])

    def this_round(table):
        return tape.op("Gather", [_const(tape, table), round_index], attributes={"axis": 0})

    entries, swap = tape.op_multi_out(
        "Split", [this_round(indices), _i64(tape, 3 * k, n)], attributes={"axis": 0}, num_outputs=2
    )
    spread_c, spread_s, sitting_out = tape.op_multi_out(
        "Split", [this_round(spreads), _i64(tape, k, k, 1)], attributes={"axis": 0}, num_outputs=3
    )
    partner = this_round(partners)

    c, s = _pair_rotations(tape, x, entries, n, one, zero)
    coef_c = tape.op("Add", [tape.op("MatMul", [c, spread_c]), sitting_out])
    coef_s = tape.op("MatMul", [s, spread_s])
    x_next = _rotate_round(tape, x, coef_c, coef_s, swap, partner, n, one, zero)
    cond_next = tape.op("Identity", [cond])
    for index, node in enumerate(tape.nodes):
        for out_index, value in enumerate(node.outputs):
            value.name = f"{prefix}{index}_{out_index}"
    return ir.Graph(inputs=[i, cond, x], outputs=[cond_next, x_next], nodes=tape.nodes, name="jacobi_round")


def _const(tape: ir.tape.Tape, value) -> ir.Value:
    return tape.op("Constant", [], attributes={"value": ir.tensor(value)})


def _i64(tape: ir.tape.Tape, *values) -> ir.Value:
    return _const(tape, np.array(values, dtype=np.int64))


def _pair_rotations(tape: ir.tape.Tape, x: ir.Value, entries: ir.Value, n: int, one: ir.Value, zero: ir.Value
                    ) -> tuple[ir.Value, ir.Value]:
    """(c, s) of each pair's rotation, (B, k), by the stable tangent of the module docstring, from the
    a_pp, a_qq, a_pq of X's A half gathered at the round's flat ``entries``."""
    flat = tape.op("Reshape", [x, _i64(tape, -1, 2 * n * n)])
    pair_entries = tape.op("Gather", [flat, entries], attributes={"axis": 1})
    a_pp, a_qq, a_pq = tape.op_multi_out(
        "Split", [pair_entries], attributes={"axis": 1, "num_outputs": 3}, num_outputs=3
    )
    d = tape.op("Sub", [a_qq, a_pp])
    o = tape.op("Add", [a_pq, a_pq])
    abs_d = tape.op("Abs", [d])
    abs_o = tape.op("Abs", [o])
    # Scaling by r makes max(|d|, |o|) exactly 1, so the denominator below is >= 1 unless r == 0,
    # where the rotation must be the identity (t = 0/1): no 0/0 for zero or already-diagonal pairs.
    # Where, not Max: onnxruntime's fp16 converter keeps Max in fp32 with Casts it inserts into the
    # main graph, which breaks a Loop body.
    r = tape.op("Where", [tape.op("GreaterOrEqual", [abs_d, abs_o]), abs_d, abs_o])
    rotates = tape.op("Greater", [r, zero])
    r_safe = tape.op("Where", [rotates, r, one])
    d_n = tape.op("Div", [d, r_safe])
    o_n = tape.op("Div", [o, r_safe])
    hyp = tape.op("Sqrt", [tape.op("Add", [tape.op("Mul", [d_n, d_n]), tape.op("Mul", [o_n, o_n])])])
    den = tape.op("Where", [rotates, tape.op("Add", [tape.op("Abs", [d_n]), hyp]), one])
    signed_o = tape.op("Where", [tape.op("GreaterOrEqual", [d, zero]), o_n, tape.op("Neg", [o_n])])
    t = tape.op("Div", [signed_o, den])
    c = tape.op("Reciprocal", [tape.op("Sqrt", [tape.op("Add", [tape.op("Mul", [t, t]), one])])])
    s = tape.op("Mul", [t, c])
    return c, s


def _rotate_round(tape: ir.tape.Tape, x: ir.Value, coef_c: ir.Value, coef_s: ir.Value, swap: ir.Value,
                  partner: ir.Value, n: int, one: ir.Value, zero: ir.Value) -> ir.Value:
    """X after the round: the rows of both halves rotated, then the columns of A alone, by the per-index
    coefficients ``coef_c``/``coef_s`` (B, n)."""

    def rotate(value, partner_value, scale_c, scale_s):
        return tape.op("Add", [tape.op("Mul", [value, scale_c]), tape.op("Mul", [partner_value, scale_s])])

    # Rows of both halves: coefficients (B, 1, n, 1).
    row_c, row_s = (tape.op("Unsqueeze", [coef, _i64(tape, 1, 3)]) for coef in (coef_c, coef_s))
    x_rows = rotate(x, tape.op("Gather", [x, swap], attributes={"axis": 2}), row_c, row_s)
    # Columns of A only: coefficients (B, 2, 1, n) that are (1, 0) on the V^T half, cheaper than
    # splitting X and concatenating it again.
    pad_v_half = _i64(tape, 0, 0, 0, n)
    col_c, col_s = (
        tape.op("Reshape", [tape.op("Pad", [coef, pad_v_half, fill]), _i64(tape, -1, 2, 1, n)])
        for coef, fill in ((coef_c, one), (coef_s, zero))
    )
    return rotate(x_rows, tape.op("MatMul", [x_rows, partner]), col_c, col_s)


def _static_size(a) -> int:
    n = a.shape[-1]
    if not isinstance(n, int):
        raise TypeError(f"brr::eigh standard translation needs a static matrix size, got {a.shape}")
    return n


def _eigh_standard(a):
    """Standard-op Jacobi eigendecomposition (see the module docstring)."""
    n = _static_size(a)
    np_dtype = a.dtype.numpy()

    def const(value: np.ndarray):
        return op.Constant(value=ir.tensor(value))

    def i64(*values):
        return const(np.array(values, dtype=np.int64))

    eye = const(np.eye(n, dtype=np_dtype))
    batch_shape = op.Shape(a, start=0, end=-2)
    matrices = op.Reshape(a, i64(-1, n, n))
    strict_lower = op.Mul(matrices, const(np.tril(np.ones((n, n), np_dtype), -1)))
    symmetric = op.Add(
        op.Add(strict_lower, op.Transpose(strict_lower, perm=[0, 2, 1])), op.Mul(matrices, eye)
    )
    x = op.Reshape(op.Concat(symmetric, op.Expand(eye, op.Shape(symmetric)), axis=1), i64(-1, 2, n, n))
    if n > 1:
        trip_count = const(np.array(JACOBI_SWEEPS * len(round_robin_schedule(n)), dtype=np.int64))
        body = _jacobi_round_body(n, a.dtype, prefix=f"{a.name}_jacobi_")
        # The untyped Op (op["Loop"]) with every input by keyword: torch's recorder maps positional
        # args onto a variadic input that is not first (Loop's v_initial) by taking all of them.
        x = op["Loop"](M=trip_count, cond=const(np.array(True)), v_initial=x, body=body)
    rotated, vectors_t = op.Split(x, axis=1, num_outputs=2)
    values = op.Gather(op.Reshape(rotated, i64(-1, n * n)), i64(*range(0, n * n, n + 1)), axis=1)
    sorted_values, order = op.TopK(values, i64(n), axis=-1, largest=0, sorted=1)
    vectors = op.Transpose(op.Reshape(vectors_t, i64(-1, n, n)), perm=[0, 2, 1])
    column_order = op.Expand(op.Unsqueeze(order, i64(1)), op.Shape(vectors))
    sorted_vectors = op.GatherElements(vectors, column_order, axis=2)
    out_values = op.Reshape(sorted_values, op.Concat(batch_shape, i64(n), axis=0))
    out_vectors = op.Reshape(sorted_vectors, op.Concat(batch_shape, i64(n, n), axis=0))
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
