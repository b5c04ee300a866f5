"""A tiny V3 configuration (5 s windows) that keeps a training step well under a second, shared by the
training tests."""

from __future__ import annotations

import copy

TINY_MODEL = {
    "base": "v3-small", "name": "tiny-test", "window_samples": 1280, "tcn_channels": [8], "tcn_out": 16,
    "electrode_dim": 8, "node_mamba": {"d_model": 8, "d_state": 4, "headdim": 4, "layers": 1},
    "edge_lift_dim": 4, "edge_mamba": {"d_model": 4, "d_state": 4, "headdim": 4, "layers": 1},
    "k_eigenvectors": 4,
}


def without_dropout(config: dict) -> dict:
    """``config`` with every dropout off: runs that draw their masks differently stay comparable step by step."""
    config = copy.deepcopy(config)
    config["tcn_dropout"] = 0.0
    for stack in ("node_mamba", "edge_mamba"):
        config[stack]["dropout"] = 0.0
    return config
