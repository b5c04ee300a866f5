"""What every rewrite of the lowering shares: the target it lowers for, the rewrite's shape (candidates, then
a match that may decline each one), and the debug line that says why a candidate was declined."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import onnx_ir as ir


class Declined(Exception):
    """A candidate that its rewrite leaves as it is; the message says why. A rewrite raises it only before it
    changes the graph."""


def require(condition: bool, reason: str) -> None:
    if not condition:
        raise Declined(reason)


@dataclass(frozen=True)
class Target:
    """What the graph is lowered for: its values' static shapes (shape inference's, on the graph as exported),
    and which nodes the engine runs in fp32."""
    shapes: Mapping[str, tuple[int | None, ...]]
    fp32_everywhere: bool
    fp32_nodes: frozenset[str]

    def runs_in_fp32(self, node: ir.Node) -> bool:
        return self.fp32_everywhere or node.name in self.fp32_nodes


@dataclass(frozen=True)
class Rewrite:
    """One rewrite: ``candidates`` lists the nodes it may rewrite, ``apply`` rewrites one or declines it.
    ``needs_extension``: it writes, or only finds, the nodes of brr's OpenVINO extension."""
    setting: str  # the build settings' count of the candidates it rewrote
    candidates: Callable[[ir.Graph, Target], list[ir.Node]]
    apply: Callable[[ir.Graph, ir.Node, Target], None]
    needs_extension: bool

    def run(self, graph: ir.Graph, target: Target) -> int:
        """Apply the rewrite to each candidate in graph order; returns how many it rewrote."""
        log = logging.getLogger(self.apply.__module__)
        rewritten = 0
        for node in self.candidates(graph, target):
            try:
                self.apply(graph, node, target)
            except Declined as declined:
                log.debug("%s (%s) left as it is: %s", node.name, node.op_type, declined)
            else:
                rewritten += 1
        return rewritten
