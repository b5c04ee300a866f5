"""Precision plan: which nodes of the fp32 ONNX must stay fp32 when an engine lowers precision.

The file is JSON (``brr-calibrate`` writes it; hand-written ones work too)::

    {"fp32_nodes": ["node_Softplus_12", ...],   # ONNX node names of model.onnx
     "fp32_stages": ["laplacian_pe"],           # every node of these probe stages
     "fp32_op_types": ["Softplus"],             # every node of these op types
     "fp32_modules": ["*_mamba.norm"],          # every node traced inside a module whose path matches
     "int8_stages": ["tcn"],                    # int8 engines: the stages they may quantize (default: all)
     "unquantized_precision": "bf16"}           # int8 engines: what the layers left unquantized run in

All keys are optional. An int8 engine quantizes the layers of its ``int8_stages`` outside the fp32 nodes; the
others run in ``unquantized_precision`` (fp32 by default), the fp32 nodes in fp32 whatever it is.

``resolve`` turns a plan into node names of a given export, refusing names that are not in it (and
patterns that match nothing), so a plan made for another model never silently pins nothing.
``default_plan(precision)`` is the exporter's own plan, versioned in ``brr/export/plans/``: the fp32
islands the architecture is known to need. The other plans there (``load_plan(name)``) are asked for
by name, e.g. ``--precision-plan bf16-fp32-tcn``; each says in ``metadata.precisions`` which engine
precisions it is for (export refuses it for another).
"""

from __future__ import annotations

import fnmatch
import json
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import onnx

from brr.backends.base import Int8Scope
from brr.errors import InputError
from brr.model import PROBE_NAMES
from brr.onnx.stages import NAME_SCOPES_KEY, module_paths, node_stages

PLAN_KEYS = ("fp32_nodes", "fp32_stages", "fp32_op_types", "fp32_modules")
INT8_KEYS = ("int8_stages", "unquantized_precision")
UNQUANTIZED_PRECISIONS = ("fp32", "bf16")
DEFAULT_PLANS = Path(__file__).with_name("plans")


class PrecisionPlanError(InputError):
    """A precision plan that cannot be used; the message names the file and the problem."""


@dataclass(frozen=True)
class PrecisionPlan:
    fp32_nodes: tuple[str, ...] = ()
    fp32_stages: tuple[str, ...] = ()
    fp32_op_types: tuple[str, ...] = ()
    fp32_modules: tuple[str, ...] = ()
    int8_stages: tuple[str, ...] = ()  # empty: every stage
    unquantized_precision: str = "fp32"
    source: str = field(default="(none)", compare=False)
    metadata: dict = field(default_factory=dict, compare=False)

    @classmethod
    def load(cls, path: str | Path) -> PrecisionPlan:
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError as exc:
            raise PrecisionPlanError(f"{path}: precision plan not found") from exc
        except json.JSONDecodeError as exc:
            raise PrecisionPlanError(f"{path}: not valid JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise PrecisionPlanError(f"{path}: a precision plan must be a JSON object with keys {PLAN_KEYS}")
        unknown = set(data) - set(PLAN_KEYS) - set(INT8_KEYS) - {"comment", "metadata"}
        if unknown:
            raise PrecisionPlanError(f"{path}: unknown key(s) {sorted(unknown)}; known: {PLAN_KEYS + INT8_KEYS}")
        values = {}
        for key in (*PLAN_KEYS, "int8_stages"):
            items = data.get(key, [])
            if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
                raise PrecisionPlanError(f"{path}: {key} must be a list of strings")
            values[key] = tuple(items)
        for key in ("fp32_stages", "int8_stages"):
            bad_stages = set(values[key]) - set(PROBE_NAMES)
            if bad_stages:
                raise PrecisionPlanError(f"{path}: {key} has unknown stage(s) {sorted(bad_stages)}; "
                                         f"stages: {PROBE_NAMES}")
        values["unquantized_precision"] = data.get("unquantized_precision", "fp32")
        if values["unquantized_precision"] not in UNQUANTIZED_PRECISIONS:
            raise PrecisionPlanError(f"{path}: unquantized_precision must be one of {UNQUANTIZED_PRECISIONS}, "
                                     f"got {values['unquantized_precision']!r}")
        metadata = data.get("metadata", {})
        return cls(**values, source=str(path), metadata=metadata if isinstance(metadata, dict) else {})

    @property
    def name(self) -> str:
        return str(self.metadata.get("name", self.source))

    @property
    def int8_scope(self) -> Int8Scope:
        return Int8Scope(self.int8_stages, self.unquantized_precision)

    @property
    def shapes_int8(self) -> bool:
        """Whether the plan says more than an int8 engine's defaults (which other engines could not honour)."""
        return self.int8_scope != Int8Scope()

    def resolve(self, model_path: Path, stages: Mapping[str, str]) -> list[str]:
        """Node names of ``model_path`` (main graph) pinned to fp32 by this plan, sorted."""
        graph = onnx.load(str(model_path), load_external_data=False).graph
        missing = sorted(set(self.fp32_nodes) - {n.name for n in graph.node})
        if missing:
            shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
            raise PrecisionPlanError(f"{self.source}: {len(missing)} node(s) not in {model_path}: {shown}")
        pinned, matched = self._pinned(graph, stages, set(self.fp32_nodes))
        for pattern in self.fp32_modules:
            if pattern not in matched:
                raise PrecisionPlanError(f"{self.source}: module pattern {pattern!r} matches no node of {model_path}")
        return sorted(pinned)

    def resolve_parts(self, whole: Path, parts: Sequence[Path]) -> dict[Path, list[str]]:
        """For the detector exported whole (``whole``) and as parts (the front and rest of ``brr.model.front``):
        the node names of each part pinned to fp32 by this plan, sorted. Stages, op types and modules resolve
        on each part's own nodes; a node the plan names (of the whole graph, as brr-calibrate writes them; the
        parts number their nodes apart) is found in a part by where it was traced: its stage, module path,
        op type and rank among the nodes that share those. Every node and module pattern the plan names must
        be in a part."""
        whole_graph = onnx.load(str(whole), load_external_data=False)
        self.resolve(whole, node_stages(whole_graph))  # the plan's nodes and patterns are the whole graph's
        by_trace = _trace_keys(whole_graph)
        wanted = {trace for trace, name in by_trace.items() if name in set(self.fp32_nodes)}
        pinned, found, matched_patterns = {}, set(), set()
        for path in parts:
            model = onnx.load(str(path), load_external_data=False)
            traced = {trace: name for trace, name in _trace_keys(model).items() if trace in wanted}
            nodes, matched = self._pinned(model.graph, node_stages(model), set(traced.values()))
            pinned[path] = sorted(nodes)
            found |= set(traced)
            matched_patterns |= matched
        lost = sorted(by_trace[trace] for trace in wanted - found)
        if lost:
            shown = ", ".join(lost[:5]) + (" ..." if len(lost) > 5 else "")
            raise PrecisionPlanError(f"{self.source}: {len(lost)} node(s) of {whole} found in none of "
                                     f"{', '.join(map(str, parts))}: {shown}")
        unmatched = sorted(set(self.fp32_modules) - matched_patterns)
        if unmatched:
            raise PrecisionPlanError(f"{self.source}: module pattern(s) {unmatched} match no node of "
                                     f"{', '.join(map(str, parts))}")
        return pinned

    def _pinned(self, graph: onnx.GraphProto, stages: Mapping[str, str], named: set[str]
                ) -> tuple[set[str], set[str]]:
        """(the nodes of ``graph`` this plan pins, the module patterns that matched one of them); ``named``:
        the nodes of ``graph`` that the plan's ``fp32_nodes`` stand for."""
        nodes = {n.name: n.op_type for n in graph.node}
        pinned = named & set(nodes)
        pinned |= {name for name, op_type in nodes.items() if op_type in self.fp32_op_types}
        pinned |= {name for name in nodes if stages.get(name) in self.fp32_stages}
        modules = {n.name: module_paths(_name_scopes(n)) for n in graph.node}
        matched_patterns = set()
        for pattern in self.fp32_modules:
            matched = {name for name, paths in modules.items() if any(fnmatch.fnmatchcase(p, pattern) for p in paths)}
            if matched:
                matched_patterns.add(pattern)
            pinned |= matched
        return pinned, matched_patterns

    def describe(self, pinned: list[str]) -> dict:
        """What the manifest records of a plan that was applied."""
        return {"plan": self.name, "version": self.metadata.get("version"), "source": self.source,
                "pinned": len(pinned)}


def _trace_keys(model: onnx.ModelProto) -> dict[tuple, str]:
    """(stage, module paths, op type, rank among the nodes sharing those) -> node name, for every top-level
    node: where a node was traced, which names it alike in graphs exported from the same model."""
    stages, seen, keys = node_stages(model), Counter(), {}
    for node in model.graph.node:
        where = (stages[node.name], tuple(module_paths(_name_scopes(node))), node.op_type)
        keys[(*where, seen[where])] = node.name
        seen[where] += 1
    return keys


def _name_scopes(node: onnx.NodeProto) -> str | None:
    return next((p.value for p in node.metadata_props if p.key == NAME_SCOPES_KEY), None)


def default_plan(precision: str) -> PrecisionPlan:
    """The exporter's default plan for ``precision`` ('fp16' or 'bf16')."""
    return PrecisionPlan.load(DEFAULT_PLANS / f"{precision}.json")


def shipped_plan_names() -> list[str]:
    return sorted(p.stem for p in DEFAULT_PLANS.glob("*.json"))


def load_plan(path_or_name: str | Path) -> PrecisionPlan:
    """A plan file, or one of brr's shipped plans by name (a name that is not a file)."""
    path = Path(path_or_name)
    if not path.exists() and path.name == str(path_or_name) and path.stem in shipped_plan_names():
        return PrecisionPlan.load(DEFAULT_PLANS / f"{path.stem}.json")
    if not path.exists() and path.suffix != ".json":
        raise PrecisionPlanError(f"{path}: neither a precision plan file nor one of brr's plans "
                                 f"({', '.join(shipped_plan_names())})")
    return PrecisionPlan.load(path)
