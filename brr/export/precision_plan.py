"""Precision plan: which nodes of the fp32 ONNX must stay fp32 when an engine lowers precision.

The file is JSON (``brr-calibrate`` writes it; hand-written ones work too)::

    {"fp32_nodes": ["node_Softplus_12", ...],   # ONNX node names of model.onnx
     "fp32_stages": ["laplacian_pe"],           # every node of these probe stages
     "fp32_op_types": ["Softplus"]}             # every node of these op types

All keys are optional. ``resolve`` turns a plan into node names of a given export, refusing names
that are not in it, so a plan made for another model never silently pins nothing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import onnx

from brr.errors import InputError
from brr.model import PROBE_NAMES

PLAN_KEYS = ("fp32_nodes", "fp32_stages", "fp32_op_types")


class PrecisionPlanError(InputError):
    """A precision plan that cannot be used; the message names the file and the problem."""


@dataclass(frozen=True)
class PrecisionPlan:
    fp32_nodes: tuple[str, ...] = ()
    fp32_stages: tuple[str, ...] = ()
    fp32_op_types: tuple[str, ...] = ()
    source: str = field(default="(none)", compare=False)

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
        unknown = set(data) - set(PLAN_KEYS) - {"comment", "metadata"}
        if unknown:
            raise PrecisionPlanError(f"{path}: unknown key(s) {sorted(unknown)}; known: {PLAN_KEYS}")
        values = {}
        for key in PLAN_KEYS:
            items = data.get(key, [])
            if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
                raise PrecisionPlanError(f"{path}: {key} must be a list of strings")
            values[key] = tuple(items)
        bad_stages = set(values["fp32_stages"]) - set(PROBE_NAMES)
        if bad_stages:
            raise PrecisionPlanError(f"{path}: unknown stage(s) {sorted(bad_stages)}; stages: {PROBE_NAMES}")
        return cls(**values, source=str(path))

    def resolve(self, model_path: Path, stages: dict[str, str]) -> list[str]:
        """Node names of ``model_path`` (main graph) pinned to fp32 by this plan, sorted."""
        nodes = {n.name: n.op_type for n in onnx.load(str(model_path), load_external_data=False).graph.node}
        missing = sorted(set(self.fp32_nodes) - set(nodes))
        if missing:
            shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
            raise PrecisionPlanError(f"{self.source}: {len(missing)} node(s) not in {model_path}: {shown}")
        pinned = set(self.fp32_nodes)
        pinned |= {name for name, op_type in nodes.items() if op_type in self.fp32_op_types}
        pinned |= {name for name in nodes if stages.get(name) in self.fp32_stages}
        return sorted(pinned)
