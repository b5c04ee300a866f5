"""What a compiled OpenVINO model runs, read back: its execution graph, and the check that the plan held.

The build marks a precision plan's layers ``precise`` in the IR (``loader.keep_in_fp32``); whether the
CPU plugin then ran them in fp32 is only seen in the compiled model's execution graph
(``CompiledModel.get_runtime_model()``): each execution node's rt_info names the IR layers it runs
(``originalLayersNames``, several where the plugin fused them), its kind (``layerType``) and the
precision its kernel computes in (``runtimePrecision``). A pinned layer inside an execution node that
computes in bf16 or f16 means the plan was not applied, and the build fails naming it.

On a CPU without the hint's precision (``OPTIMIZATION_CAPABILITIES`` lacks ``BF16``/``FP16``) the plugin
runs everything in fp32: the check passes trivially, and the settings say so.

The mark holds only on layers the plugin keeps as they are: where its rewrites replace pinned layers (the
gate's ``x * sigmoid(x)`` fused into the preceding MatMul, a bf16 FullyConnected; the RMS norm's ops fused
into one RMS node), the new node runs in bf16. A standard-ops graph keeps Mamba-2's gated norms as such ops
(a plugin graph moves them into the scan kernel), so there the pinned norms run in bf16 whatever the IR
says: such a build fails too, and says that ``--ops plugin`` keeps the plan.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import Enum

import openvino as ov

from brr.backends.base import EngineBuildError

log = logging.getLogger(__name__)

# runtimePrecision values of reduced-precision float kernels.
REDUCED_RUNTIME_PRECISIONS = frozenset({"bf16", "f16"})
# Execution nodes that only move values: their runtimePrecision is the precision the values are stored in.
DATA_MOVEMENT = frozenset({"Reshape", "Transpose", "Reorder", "Concatenation", "Split", "Gather", "StridedSlice",
                           "Broadcast", "Tile"})
# The CPU capability (OPTIMIZATION_CAPABILITIES) without which the plugin ignores a hint and runs fp32.
HINT_CAPABILITY = {"bf16": "BF16", "f16": "FP16"}


class PlanCheck(Enum):
    APPLIED = "applied"  # the CPU has the hint's precision, and every pinned layer that runs computes in fp32
    TRIVIAL = "trivial"  # the CPU lacks the hint's precision: everything ran in fp32


@dataclass(frozen=True)
class ExecutedNode:
    """One node of the execution graph, from its rt_info."""

    name: str
    layer_type: str
    runtime_precision: str
    original_layers: tuple[str, ...]
    consumers: tuple[str, ...] = ()  # the execution nodes that read its outputs

    @classmethod
    def from_rt_info(cls, name: str, rt_info: Mapping[str, str], consumers: Iterable[str] = ()) -> ExecutedNode:
        layers = tuple(n for n in str(rt_info.get("originalLayersNames", "")).split(",") if n)
        return cls(name, str(rt_info.get("layerType", "")), str(rt_info.get("runtimePrecision", "")), layers,
                   tuple(consumers))


def execution_graph(compiled: ov.CompiledModel) -> list[ExecutedNode]:
    """The execution nodes of ``compiled``, in execution order."""
    return [ExecutedNode.from_rt_info(op.get_friendly_name(),
                                      {key: value.astype(str) for key, value in op.get_rt_info().items()},
                                      [target.get_node().get_friendly_name() for output in op.outputs()
                                       for target in output.get_target_inputs()])
            for op in compiled.get_runtime_model().get_ordered_ops()]


def pinned_in_reduced_precision(executed: Iterable[ExecutedNode], pinned_layers: Mapping[str, str]) -> list[str]:
    """One line per execution node that computes in bf16/f16 while running a pinned layer
    (``pinned_layers``: IR layer name -> the ONNX node it was made from).

    A pinned layer that only moves values may store them in bf16 where no pinned layer computes on them
    downstream: that is the rounding the plan makes where a reduced-precision node reads a pinned one's output
    (the plugin moves the conversion before the reshapes and transposes that lead there)."""
    executed = list(executed)
    by_name = {node.name: node for node in executed}
    found = []
    for node in executed:
        pinned = [layer for layer in node.original_layers if layer in pinned_layers]
        if not pinned or node.runtime_precision not in REDUCED_RUNTIME_PRECISIONS:
            continue
        if node.layer_type not in DATA_MOVEMENT or _feeds_pinned_computation(node, by_name, pinned_layers):
            named = ", ".join(f"{layer} (ONNX node {pinned_layers[layer]})" for layer in pinned)
            found.append(f"{named} ran in {node.runtime_precision} in execution node {node.name} ({node.layer_type})")
    return found


def _feeds_pinned_computation(node: ExecutedNode, by_name: Mapping[str, ExecutedNode],
                              pinned_layers: Mapping[str, str]) -> bool:
    """Whether a node that computes a pinned layer reads ``node``'s values, through nodes that only move them."""
    waiting, seen = list(node.consumers), set()
    while waiting:
        consumer = by_name.get(waiting.pop())
        if consumer is None or consumer.name in seen:
            continue
        seen.add(consumer.name)
        if consumer.layer_type in DATA_MOVEMENT:
            waiting += consumer.consumers
        elif any(layer in pinned_layers for layer in consumer.original_layers):
            return True
    return False


def check_plan_applied(executed: list[ExecutedNode], pinned_layers: Mapping[str, str], hint: str,
                       capabilities: Iterable[str]) -> dict:
    """What the settings record of the check; ``EngineBuildError`` naming the pinned layers that ran in a
    reduced precision."""
    failures = pinned_in_reduced_precision(executed, pinned_layers)
    if failures:
        raise EngineBuildError(
            f"the precision plan was not applied: {len(failures)} execution node(s) ran pinned layers in reduced "
            f"precision under the {hint} hint: " + "; ".join(failures[:5]) + "; an --ops plugin export keeps "
            "Mamba-2's gated norms, which OpenVINO rewrites in a standard-ops graph, inside brr's scan kernel")
    ran = {layer for node in executed for layer in node.original_layers}
    native = HINT_CAPABILITY.get(hint) in set(capabilities)
    verdict = PlanCheck.APPLIED if native else PlanCheck.TRIVIAL
    return {"verdict": verdict.value, "hint": hint, "cpu_capability": HINT_CAPABILITY.get(hint),
            "cpu_has_it": native, "pinned_layers": len(pinned_layers),
            "pinned_layers_executed": len(ran & pinned_layers.keys()),
            "reduced_precision_nodes": sum(n.runtime_precision in REDUCED_RUNTIME_PRECISIONS for n in executed)}
