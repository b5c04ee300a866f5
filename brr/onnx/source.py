"""Which nn.Module each node of an exported graph was traced in: from an ONNX node to the PyTorch behind it.

``torch.onnx.export(..., dynamo=True)`` records on every node the module stack it was traced in, as
two parallel lists: ``pkg.torch.onnx.name_scopes`` (``['', 'detector', 'detector.tcn',
'detector.tcn.conv', 'conv1d_3']``) and ``pkg.torch.onnx.class_hierarchy`` (the qualified class of each
module, then the aten target). The last module of the stack is the one whose ``forward`` made the node;
its path, less the export wrapper's ``detector.`` prefix, is what ``V3Detector.named_modules()`` gives, so
``model.get_submodule(source.path)`` is that module.

Nodes added after export carry no stack: brr's rounding Casts (``brr.onnx.precision``: a Cast that stores
a node's output takes that node's name), weight casts, the strongly typed graph's casts, a fault planted
by a test. Such a node takes the module of the node it was inserted for: the nearest producer of its
inputs that has one (the value it stores or converts was made there), else the nearest consumer (a
weight or graph-input cast has no producer). ``ModuleSource.inherited_from`` names that node.
"""

from __future__ import annotations

import ast
from collections import deque
from dataclasses import dataclass

import onnx

from brr.onnx.stages import NAME_SCOPES_KEY, WRAPPED_MODULE

CLASS_HIERARCHY_KEY = "pkg.torch.onnx.class_hierarchy"


@dataclass(frozen=True)
class ModuleSource:
    """The nn.Module a node was traced in: its path as ``named_modules()`` gives it ('' for the detector
    itself) and qualified class (None in graphs exported without the class metadata)."""

    path: str
    class_name: str | None
    inherited_from: str | None = None  # the node whose module this one took (it carries none itself)

    @property
    def short_class(self) -> str | None:
        return self.class_name.rsplit(".", 1)[-1] if self.class_name else None

    def describe(self) -> str:
        """e.g. "module `tcn.conv` (Conv1d)"; a node without a module of its own says whose it took."""
        path = f"`{self.path}`" if self.path else "the detector itself"
        detail = [self.short_class] if self.short_class else []
        if self.inherited_from:
            detail.append(f"inherited from `{self.inherited_from}`")
        return f"module {path}" + (f" ({'; '.join(detail)})" if detail else "")

    def to_dict(self) -> dict:
        return {"path": self.path, "class": self.class_name, "inherited_from": self.inherited_from}

    @classmethod
    def from_dict(cls, data: dict) -> ModuleSource:
        return cls(data["path"], data["class"], data["inherited_from"])


def traced_source(node: onnx.NodeProto) -> ModuleSource | None:
    """The module ``node`` was traced in, from its own metadata; None without it or outside the detector
    (a node of the export wrapper itself)."""
    props = {p.key: p.value for p in node.metadata_props}
    scopes = ast.literal_eval(props[NAME_SCOPES_KEY]) if props.get(NAME_SCOPES_KEY) else []
    classes = ast.literal_eval(props[CLASS_HIERARCHY_KEY]) if props.get(CLASS_HIERARCHY_KEY) else []
    modules = scopes[:-1]  # the last entry is the traced operation, not a module
    if not modules or modules[0] != "":
        return None  # no stack, or a placeholder torch's own passes give the nodes they add
    innermost, class_name = modules[-1], classes[len(modules) - 1] if len(classes) == len(scopes) else None
    wrapped = len(modules) > 1 and modules[1] == WRAPPED_MODULE
    if not wrapped:
        return ModuleSource(innermost, class_name)
    if innermost == WRAPPED_MODULE:
        return ModuleSource("", class_name)
    if not innermost.startswith(WRAPPED_MODULE + "."):
        return None  # the export wrapper's own operations
    return ModuleSource(innermost[len(WRAPPED_MODULE) + 1:], class_name)


def module_sources(model: onnx.ModelProto) -> dict[str, ModuleSource]:
    """Node name -> its module for every top-level node of ``model`` that has one, its own or inherited."""
    nodes = list(model.graph.node)
    own = {n.name: source for n in nodes if (source := traced_source(n)) is not None}
    producers = {out: n for n in nodes for out in n.output if out}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in nodes:
        for name in n.input:
            consumers.setdefault(name, []).append(n)
    sources = dict(own)
    for node in nodes:
        if node.name in own:
            continue
        # Upstream first: a Cast or a planted op acts on a value some traced node made.
        found = _nearest(node, own, lambda n: [producers[i] for i in n.input if i in producers])
        found = found or _nearest(node, own, lambda n: [c for o in n.output for c in consumers.get(o, [])])
        if found is not None:
            sources[node.name] = ModuleSource(own[found].path, own[found].class_name, inherited_from=found)
    return sources


def _nearest(start: onnx.NodeProto, own: dict[str, ModuleSource], neighbours) -> str | None:
    """The first node with a module of its own met breadth-first from ``start`` along ``neighbours``."""
    queue, seen = deque(neighbours(start)), {id(start)}
    while queue:
        node = queue.popleft()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if node.name in own:
            return node.name
        queue.extend(neighbours(node))
    return None
