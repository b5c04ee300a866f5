"""Node stream: a bidirectional Mamba-2 stack over each electrode's sequence.

(B, 19, T, D) -> B*19 sequences of length T and width D -> (B, 19, T, D).
"""

from __future__ import annotations

import torch
from torch import nn

from brr.model import guards
from brr.model.config import DetectorConfig
from brr.model.mamba2 import BidirectionalMamba2Stack


class NodeStream(nn.Module):
    def __init__(self, cfg: DetectorConfig):
        super().__init__()
        self.guarded = cfg.guards
        self.mamba = BidirectionalMamba2Stack(cfg.node_mamba)

    def forward(self, electrodes: torch.Tensor) -> torch.Tensor:
        b, n, t, d = electrodes.shape
        x = guards.clamp(electrodes.reshape(b * n, t, d), guards.MAMBA_INPUT_LIMIT, self.guarded)
        y = guards.clamp(self.mamba(x), guards.NODE_OUTPUT_LIMIT, self.guarded)
        return y.reshape(b, n, t, d)
