"""Does a typed graph obey TensorRT's strong typing? Every tensor's type is what the graph says.

A strongly typed TensorRT network (TensorRT >= 10.12; every network in 11.x) takes each tensor's type
from the ONNX graph and never chooses one itself: a mixed-precision engine is exactly its graph's
types and Casts. So the graph brr writes for an fp16/bf16 engine (``brr.onnx.precision``) or an INT8
one (``brr.onnx.quantize``) must be buildable as typed, and must say what the precision plan means:

- ``MIXED_OPERANDS`` / ``TYPE_NOT_ALLOWED``: the operands an op's ONNX schema binds to one type
  constraint agree in element type, and each operand's type is one its position allows. The positions
  that may differ (Cast's output, Q/DQ scales and zero points, Reshape's int64 shape, Where's bool
  condition, Resize's scales...) are read from the schema at the model's opset, not listed here. A
  custom node (no schema) takes and gives one float type.
- ``PINNED_NOT_FP32``: a node the plan pins (and every node inside a pinned Loop/If body) reads and
  writes fp32 only: a reduced-precision float at a pinned node would make it compute in that precision.
  ``PINNED_MISSING``: a pinned node the typed graph does not have (the plan would pin nothing).
- ``INITIALIZER_NOT_FINITE``: an fp16/bf16 weight holds no inf or NaN (an fp32 weight beyond 65504
  stored in fp16 becomes inf). ``INITIALIZER_SUBNORMAL`` (a warning): most of an fp16 weight's values
  are subnormal, kept with fewer significant bits than the format's.
- ``QDQ_SCALE`` / ``QDQ_TYPE`` / ``QDQ_ZERO_POINT``: each QuantizeLinear/DequantizeLinear has a constant,
  finite, positive scale, quantizes to a type TensorRT's Q/DQ take (int8, int4, fp8, fp4: not uint8, nor
  the int32 of a quantized bias), and has a constant zero point of zeros, if any: TensorRT quantizes
  symmetrically only.
- ``UNKNOWN_TYPE`` / ``UNKNOWN_OP``: what shape inference cannot type, or an op with no schema at the
  model's opset, is reported at its node, never guessed.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import Enum
from functools import cache
from pathlib import Path

import ml_dtypes
import numpy as np
import onnx
from onnx import numpy_helper

from brr.errors import CheckFailed

log = logging.getLogger(__name__)

FLOAT_TYPES = frozenset({"tensor(float)", "tensor(float16)", "tensor(bfloat16)", "tensor(double)",
                         "tensor(float8e4m3fn)", "tensor(float8e4m3fnuz)", "tensor(float8e5m2)",
                         "tensor(float8e5m2fnuz)", "tensor(float4e2m1)"})
FP32 = "tensor(float)"
REDUCED_INITIALIZER_TYPES = {onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16}
QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
QDQ_DOMAINS = ("", "ai.onnx", "com.microsoft")
# The quantized types TensorRT's Q/DQ layers take (uint8 is not one).
TENSORRT_QUANTIZED_TYPES = frozenset({"tensor(int8)", "tensor(int4)", "tensor(float8e4m3fn)", "tensor(float4e2m1)"})
STANDARD_DOMAINS = ("", "ai.onnx", "ai.onnx.ml", "ai.onnx.preview.training")
# A weight is reported when more than this share of its non-zero values are subnormal.
SUBNORMAL_SHARE = 0.5


class Rule(Enum):
    MIXED_OPERANDS = "mixed_operands"
    TYPE_NOT_ALLOWED = "type_not_allowed"
    PINNED_NOT_FP32 = "pinned_not_fp32"
    PINNED_MISSING = "pinned_missing"
    INITIALIZER_NOT_FINITE = "initializer_not_finite"
    INITIALIZER_SUBNORMAL = "initializer_subnormal"
    QDQ_SCALE = "qdq_scale"
    QDQ_TYPE = "qdq_type"
    QDQ_ZERO_POINT = "qdq_zero_point"
    UNKNOWN_TYPE = "unknown_type"
    UNKNOWN_OP = "unknown_op"


class Severity(Enum):
    ERROR = "error"  # TensorRT would refuse the graph, or build something the plan does not mean
    WARNING = "warning"  # buildable as typed, but worth a look


@dataclass(frozen=True)
class Violation:
    node: str  # the node's name; for an initializer, the initializer's
    op_type: str  # "initializer" for an initializer
    rule: Rule
    message: str
    severity: Severity = Severity.ERROR

    def __str__(self) -> str:
        return f"{self.node} ({self.op_type}): {self.rule.value}: {self.message}"


@dataclass
class TypingReport:
    """What one check of a typed graph found."""

    nodes_checked: int = 0
    violations: list[Violation] = field(default_factory=list)

    @property
    def errors(self) -> list[Violation]:
        return [v for v in self.violations if v.severity is Severity.ERROR]

    @property
    def warnings(self) -> list[Violation]:
        return [v for v in self.violations if v.severity is Severity.WARNING]

    def to_dict(self) -> dict:
        return {"nodes_checked": self.nodes_checked, "errors": [str(v) for v in self.errors],
                "warnings": [str(v) for v in self.warnings]}


class StrongTypingError(CheckFailed):
    """A typed graph TensorRT would not build as brr means it; the message names the node(s)."""


def type_string(proto: onnx.TypeProto) -> str | None:
    """The type as ONNX schemas write it (``tensor(float16)``, ``seq(tensor(int64))``); None when unknown."""
    kind = proto.WhichOneof("value")
    if kind in ("tensor_type", "sparse_tensor_type"):
        elem = getattr(proto, kind).elem_type
        if elem == onnx.TensorProto.UNDEFINED:
            return None
        name = onnx.TensorProto.DataType.Name(elem).lower()
        return f"tensor({name})" if kind == "tensor_type" else f"sparse_tensor({name})"
    if kind == "sequence_type":
        inner = type_string(proto.sequence_type.elem_type)
        return None if inner is None else f"seq({inner})"
    if kind == "optional_type":
        inner = type_string(proto.optional_type.elem_type)
        return None if inner is None else f"optional({inner})"
    return None


def _tensor_type_string(data_type: int) -> str:
    return f"tensor({onnx.TensorProto.DataType.Name(data_type).lower()})"


@cache
def _schema(op_type: str, version: int, domain: str) -> onnx.defs.OpSchema | None:
    try:
        return onnx.defs.get_schema(op_type, version, domain)
    except onnx.defs.SchemaError:
        return None


def _formal(params, index: int):
    """The schema parameter an actual input/output at ``index`` binds to (a variadic last one repeats)."""
    if index < len(params):
        return params[index]
    if params and params[-1].option == onnx.defs.OpSchema.FormalParameterOption.Variadic:
        return params[-1]
    return None


@dataclass
class _Scope:
    """Names visible in one graph: their types and, for constants, their values (outer scopes included)."""

    types: dict[str, str | None]
    constants: dict[str, onnx.TensorProto]

    def child(self, graph: onnx.GraphProto) -> _Scope:
        scope = _Scope(dict(self.types), dict(self.constants))
        scope.add_graph(graph)
        return scope

    def add_graph(self, graph: onnx.GraphProto) -> None:
        for value in (*graph.input, *graph.value_info, *graph.output):
            known = type_string(value.type)
            if known is not None or value.name not in self.types:
                self.types[value.name] = known
        for init in graph.initializer:
            self.types[init.name] = _tensor_type_string(init.data_type)
            self.constants[init.name] = init
        for node in graph.node:
            if node.op_type == "Constant" and node.domain in STANDARD_DOMAINS:
                value = next((a.t for a in node.attribute if a.name == "value" and a.type == onnx.AttributeProto.TENSOR),
                             None)
                if value is not None:
                    self.constants[node.output[0]] = value


class _Checker:
    def __init__(self, model: onnx.ModelProto, fp32_nodes: Iterable[str]):
        self.opsets = {("" if o.domain == "ai.onnx" else o.domain): o.version for o in model.opset_import}
        self.fp32_nodes = set(fp32_nodes)
        self.report = TypingReport()

    def add(self, node: onnx.NodeProto, rule: Rule, message: str) -> None:
        self.report.violations.append(Violation(node.name, node.op_type, rule, message))

    def run(self, graph: onnx.GraphProto) -> TypingReport:
        seen = {n.name for n in graph.node}
        for missing in sorted(self.fp32_nodes - seen):
            self.report.violations.append(Violation(missing, "?", Rule.PINNED_MISSING, "the plan pins this node to "
                                                    "fp32 but the typed graph has no node of that name"))
        scope = _Scope({}, {})
        scope.add_graph(graph)
        self.check_graph(graph, scope, pinned_body=False)
        return self.report

    def check_graph(self, graph: onnx.GraphProto, scope: _Scope, pinned_body: bool) -> None:
        for init in graph.initializer:
            self.check_initializer(init.name, init, "initializer")
        for node in graph.node:
            self.report.nodes_checked += 1
            pinned = pinned_body or node.name in self.fp32_nodes
            self.check_node(node, scope, pinned)
            for attribute in node.attribute:
                for body in ([attribute.g] if attribute.type == onnx.AttributeProto.GRAPH else
                             attribute.graphs if attribute.type == onnx.AttributeProto.GRAPHS else []):
                    self.check_graph(body, scope.child(body), pinned)

    def check_node(self, node: onnx.NodeProto, scope: _Scope, pinned: bool) -> None:
        inputs = [(i, name, scope.types.get(name)) for i, name in enumerate(node.input) if name]
        outputs = [(i, name, scope.types.get(name)) for i, name in enumerate(node.output) if name]
        for _, name, known in outputs:
            if known is None:
                self.add(node, Rule.UNKNOWN_TYPE, f"shape inference gives output {name!r} no type")
        if node.op_type == "Constant" and node.domain in STANDARD_DOMAINS:
            value = scope.constants.get(node.output[0])
            if value is not None:
                self.check_initializer(node.name, value, node.op_type)
        domain = "" if node.domain == "ai.onnx" else node.domain
        if domain in STANDARD_DOMAINS:
            self.check_schema(node, domain, inputs, outputs)
        else:
            self.check_custom(node, inputs, outputs)
        if pinned:
            reduced = [f"{name!r} is {known}" for _, name, known in inputs + outputs
                       if known in FLOAT_TYPES and known != FP32]
            if reduced:
                self.add(node, Rule.PINNED_NOT_FP32, "the plan pins this node to fp32 but " + ", ".join(reduced))
        if node.op_type in QDQ_OPS and domain in QDQ_DOMAINS:
            self.check_qdq(node, scope)

    def check_schema(self, node, domain: str, inputs, outputs) -> None:
        version = self.opsets.get(domain, 1)
        schema = _schema(node.op_type, version, domain)
        if schema is None:
            self.add(node, Rule.UNKNOWN_OP, f"no ONNX schema for {domain or 'ai.onnx'}::{node.op_type} "
                     f"at opset {version}")
            return
        constraints = {c.type_param_str: set(c.allowed_type_strs) for c in schema.type_constraints}
        bound: dict[str, list[tuple[str, str]]] = {}
        heterogeneous: set[str] = set()
        for params, actual, side in ((schema.inputs, inputs, "input"), (schema.outputs, outputs, "output")):
            for index, name, known in actual:
                param = _formal(params, index)
                if param is None or known is None:
                    continue  # an unknown type is reported at the node that makes it
                where = f"{side} {index} ({param.name}) {name!r}"
                if param.type_str in constraints:
                    if known not in constraints[param.type_str]:
                        self.add(node, Rule.TYPE_NOT_ALLOWED, f"{where} is {known}, not one of "
                                 f"{param.type_str}: {sorted(constraints[param.type_str])}")
                    bound.setdefault(param.type_str, []).append((where, known))
                    if not param.is_homogeneous:
                        heterogeneous.add(param.type_str)
                elif known != param.type_str:
                    self.add(node, Rule.TYPE_NOT_ALLOWED, f"{where} is {known}, the schema says {param.type_str}")
        for constraint, uses in bound.items():
            if constraint not in heterogeneous and len({known for _, known in uses}) > 1:
                self.add(node, Rule.MIXED_OPERANDS, f"type {constraint} bound to different types: "
                         + ", ".join(f"{where} is {known}" for where, known in uses))

    def check_custom(self, node, inputs, outputs) -> None:
        floats = [(f"{side} {index} {name!r}", known) for side, actual in (("input", inputs), ("output", outputs))
                  for index, name, known in actual if known in FLOAT_TYPES]
        if len({known for _, known in floats}) > 1:
            self.add(node, Rule.MIXED_OPERANDS, f"custom node {node.domain}::{node.op_type} takes one float type: "
                     + ", ".join(f"{where} is {known}" for where, known in floats))

    def check_initializer(self, name: str, tensor: onnx.TensorProto, kind: str) -> None:
        if tensor.data_type not in REDUCED_INITIALIZER_TYPES:
            return
        raw = numpy_helper.to_array(tensor)
        values = raw.astype(np.float32)
        stored = onnx.TensorProto.DataType.Name(tensor.data_type).lower()
        bad = ~np.isfinite(values)
        if bad.any():
            self.report.violations.append(Violation(name, kind, Rule.INITIALIZER_NOT_FINITE, f"{int(bad.sum())} of "
                                                    f"{values.size} {stored} values are inf/NaN (a weight outside the "
                                                    "format's range)"))
        nonzero = values[(values != 0) & ~bad]
        subnormal = int((np.abs(nonzero) < float(ml_dtypes.finfo(raw.dtype).tiny)).sum())
        if nonzero.size and subnormal > SUBNORMAL_SHARE * nonzero.size:
            self.report.violations.append(Violation(name, kind, Rule.INITIALIZER_SUBNORMAL, f"{subnormal} of "
                                                    f"{nonzero.size} non-zero {stored} values are subnormal (fewer "
                                                    "significant bits than the format's)", Severity.WARNING))

    def check_qdq(self, node: onnx.NodeProto, scope: _Scope) -> None:
        scale_name = node.input[1] if len(node.input) > 1 else ""
        scale = scope.constants.get(scale_name)
        if not scale_name:
            self.add(node, Rule.QDQ_SCALE, "no scale")
        elif scale is None:
            self.add(node, Rule.QDQ_SCALE, f"scale {scale_name!r} is not a constant (TensorRT needs it at build time)")
        else:
            values = numpy_helper.to_array(scale).astype(np.float64)
            if values.size == 0 or not np.all(np.isfinite(values)) or not np.all(values > 0):
                shown = values.ravel()[~(np.isfinite(values.ravel()) & (values.ravel() > 0))][:4]
                self.add(node, Rule.QDQ_SCALE, f"scale {scale_name!r} must be finite and > 0: "
                         f"{'empty' if values.size == 0 else f'holds {shown.tolist()}'}")
        quantized_name = node.output[0] if node.op_type == "QuantizeLinear" else node.input[0]
        quantized = scope.types.get(quantized_name)
        if quantized is not None and quantized not in TENSORRT_QUANTIZED_TYPES:
            self.add(node, Rule.QDQ_TYPE, f"quantizes to {quantized} ({quantized_name!r}); TensorRT's Q/DQ take "
                     f"{sorted(TENSORRT_QUANTIZED_TYPES)}")
        zero_name = node.input[2] if len(node.input) > 2 else ""
        if zero_name:
            zero = scope.constants.get(zero_name)
            if zero is None:
                self.add(node, Rule.QDQ_ZERO_POINT, f"zero point {zero_name!r} is not a constant")
            elif np.any(numpy_helper.to_array(zero).astype(np.float64) != 0):
                self.add(node, Rule.QDQ_ZERO_POINT, f"zero point {zero_name!r} is not all zeros: TensorRT quantizes "
                         "symmetrically only")


def check_typed_graph(model: onnx.ModelProto, fp32_nodes: Iterable[str] = ()) -> TypingReport:
    """Check ``model`` (its types from ONNX shape inference) against the rules of the module docstring;
    ``fp32_nodes``: the node names the precision plan pins to fp32."""
    inferred = onnx.shape_inference.infer_shapes(model, check_type=False, strict_mode=False)
    return _Checker(inferred, fp32_nodes).run(inferred.graph)


def check_strongly_typed(model: onnx.ModelProto, fp32_nodes: Iterable[str] = ()) -> list[Violation]:
    """Every violation (errors and warnings) of TensorRT's strong typing in ``model``."""
    return check_typed_graph(model, fp32_nodes).violations


def require_strongly_typed(model: onnx.ModelProto, fp32_nodes: Iterable[str] = (), what: str = "the typed graph",
                           shown: int = 5) -> TypingReport:
    """``check_typed_graph``, raising ``StrongTypingError`` (naming the nodes) on any error; warnings are logged."""
    report = check_typed_graph(model, fp32_nodes)
    for warning in report.warnings:
        log.warning(f"{what}: {warning}")
    if report.errors:
        listed = "; ".join(str(v) for v in report.errors[:shown])
        more = f" (and {len(report.errors) - shown} more)" if len(report.errors) > shown else ""
        raise StrongTypingError(f"{what} breaks TensorRT's strong typing at {len(report.errors)} place(s): "
                                f"{listed}{more}")
    return report


def require_strongly_typed_files(directory: Path, fp32_nodes: Iterable[str] = (), skipped: Iterable[str] = ()
                                 ) -> dict:
    """``require_strongly_typed`` on every ONNX graph an engine folder holds (the typed graph an engine is
    built from) but the ``skipped`` file names (graphs of other nodes: a split detector's parts); what a
    manifest's settings record of them (nothing where the folder holds none)."""
    checked = {path.name: require_strongly_typed(onnx.load(str(path)), fp32_nodes, str(path)).to_dict()
               for path in sorted(Path(directory).glob("*.onnx")) if path.name not in set(skipped)}
    return {"strong_typing": checked} if checked else {}
