"""What every exported engine and runner shares with the model: tensor names and probe shapes.

Without PyTorch, so that serving an exported engine never imports it.
"""

from __future__ import annotations

from enum import StrEnum

# Tensor names every exported engine and runner shares.
INPUT_NAME = "eeg"  # (B, 19, 15360) float32, B dynamic
OUTPUT_NAME = "logits"  # (B, 15360) float32

# name: shape, in topological order (B batch, T = 960 steps, D electrode features, C TCN width)
PROBE_SHAPES: dict[str, str] = {
    "tcn": "(B, C, T)",
    "electrodes": "(B, 19, T, D)",
    "node_stream": "(B, 19, T, D)",
    "edge_similarity": "(B, 171, T)",
    "edge_weights": "(B, 171, T)",
    "adjacency": "(B, T, 19, 19)",
    "laplacian_pe": "(B, T, 19, k)",
    "gnn": "(B, 19, T, D)",
    "backprojection": "(B, C, T)",
    "decoder": "(B, 19, 15360)",
    "logits": "(B, 15360)",
}
PROBE_NAMES: tuple[str, ...] = tuple(PROBE_SHAPES)
# The outputs of every graph brr writes: what is served first, so that a client taking output 0 (a serving
# config, ``session.run(None, ...)[0]``) gets the logits; the probes follow in topological order.
GRAPH_OUTPUT_NAMES: tuple[str, ...] = (OUTPUT_NAME, *(name for name in PROBE_NAMES if name != OUTPUT_NAME))

# The detector splits after its per-time-step stages (``brr.model.front``): the front ends at this probe,
# which is the input of the rest.
FRONT_OUTPUT_NAME = "electrodes"


class GraphPart(StrEnum):
    """A part of the detector exported as a graph of its own: the front computes ``FRONT_OUTPUT_NAME`` from the
    EEG over any number of samples, the rest the logits of one window from it."""

    FRONT = "front"
    REST = "rest"

    @property
    def input_name(self) -> str:
        return INPUT_NAME if self is GraphPart.FRONT else FRONT_OUTPUT_NAME

    @property
    def probe_names(self) -> tuple[str, ...]:
        """The probes this part computes, in topological order."""
        split = PROBE_NAMES.index(FRONT_OUTPUT_NAME) + 1
        return PROBE_NAMES[:split] if self is GraphPart.FRONT else PROBE_NAMES[split:]

    @property
    def output_name(self) -> str:
        """What the part is run for: its last probe."""
        return self.probe_names[-1]

    @property
    def graph_outputs(self) -> tuple[str, ...]:
        """Its graph's outputs: what it is run for first (as ``GRAPH_OUTPUT_NAMES``), then its other probes."""
        return (self.output_name, *(name for name in self.probe_names if name != self.output_name))

    @property
    def file(self) -> str:
        """Its ONNX file in an artifact folder."""
        return f"{self.value}.onnx"
