"""The safeguards of the reference training code, as one switch.

With guards on, each hazard named in the architecture gets the clamp or epsilon the reference
added; with guards off the raw network runs, so both can be exported and compared stage by stage.
"""

from __future__ import annotations

import torch

SIMILARITY_LIMIT = 0.99  # cosine similarity, before the lift
LIFT_LIMIT = 3.0  # lifted edge features
MAMBA_INPUT_LIMIT = 10.0  # input of every Mamba stack
NODE_OUTPUT_LIMIT = 10.0  # node-stream output
EDGE_OUTPUT_LIMIT = 5.0  # edge projection, before the softplus
LOGIT_LIMIT = 100.0
NORM_EPSILON = 1e-8  # floor of a feature norm in the similarity: flat features give 0, not 0/0


def clamp(x: torch.Tensor, limit: float, enabled: bool) -> torch.Tensor:
    return x.clamp(-limit, limit) if enabled else x


def finite(x: torch.Tensor, limit: float, enabled: bool) -> torch.Tensor:
    """Replace NaN by 0 and +-inf by +-limit (the reference's nan_to_num)."""
    return torch.nan_to_num(x, nan=0.0, posinf=limit, neginf=-limit) if enabled else x
