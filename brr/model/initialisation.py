"""Weight initialisation that keeps the input's variance through the encoder's depth."""

from __future__ import annotations

from torch import nn


def variance_preserving_init(conv: nn.Conv1d, nonlinearity: str) -> None:
    """He-normal weights for the activation that follows (``"relu"`` or ``"linear"``, fan-in), zero bias."""
    nn.init.kaiming_normal_(conv.weight, mode="fan_in", nonlinearity=nonlinearity)
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)
