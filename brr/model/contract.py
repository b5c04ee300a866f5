"""What every exported engine and runner shares with the model: tensor names and probe shapes.

Without PyTorch, so that serving an exported engine never imports it.
"""

from __future__ import annotations

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
