"""Electrode projection, back-projection and output heads.

ElectrodeProjection: (B, C, T) -> 1x1 conv -> (B, 19*D, T) viewed as (B, 19, T, D).
BackProjection:      (B, 19, T, D) -> (B, 19*D, T) -> 1x1 conv -> (B, C, T).
Decoder:             (B, C, T) -> 1x1 conv -> (B, 19, T) -> nearest upsampling x16 -> (B, 19, 16T).
DetectionHead:       (B, 19, 16T) -> 1x1 conv -> per-sample logits (B, 16T).
"""

from __future__ import annotations

import torch
from torch import nn

from brr.model import guards
from brr.model.config import DetectorConfig
from brr.model.initialisation import variance_preserving_init


class ElectrodeProjection(nn.Module):
    def __init__(self, cfg: DetectorConfig):
        super().__init__()
        self.n, self.d = cfg.n_channels, cfg.electrode_dim
        self.conv = nn.Conv1d(cfg.tcn_out, self.n * self.d, 1)
        # The encoder's variance carries on into the electrode features (see brr.model.tcn).
        variance_preserving_init(self.conv, "linear")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, t = x.shape
        return self.conv(x).reshape(b, self.n, self.d, t).transpose(2, 3)


class BackProjection(nn.Module):
    def __init__(self, cfg: DetectorConfig):
        super().__init__()
        self.conv = nn.Conv1d(cfg.n_channels * cfg.electrode_dim, cfg.tcn_out, 1)

    def forward(self, nodes: torch.Tensor) -> torch.Tensor:
        b, n, t, d = nodes.shape
        return self.conv(nodes.transpose(2, 3).reshape(b, n * d, t))


class Decoder(nn.Module):
    def __init__(self, cfg: DetectorConfig):
        super().__init__()
        self.conv = nn.Conv1d(cfg.tcn_out, cfg.n_channels, 1)
        self.factor = cfg.downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        b, c, t = y.shape
        # Nearest-neighbour upsampling as expand+reshape: identical values, and a plain op everywhere.
        return y.unsqueeze(-1).expand(b, c, t, self.factor).reshape(b, c, t * self.factor)


class DetectionHead(nn.Module):
    def __init__(self, cfg: DetectorConfig):
        super().__init__()
        self.conv = nn.Conv1d(cfg.n_channels, 1, 1)
        self.guarded = cfg.guards

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = guards.clamp(self.conv(x).squeeze(1), guards.LOGIT_LIMIT, self.guarded)
        return guards.finite(logits, guards.LOGIT_LIMIT, self.guarded)
