"""TCN encoder: (B, 19, 15360) -> (B, tcn_out, 960).

Dilated non-causal Conv1d layers (kernel k, dilation 2^i, 'same' padding, weight norm, ReLU,
dropout) at full resolution, a 1x1 conv to ``tcn_out``, a second 1x1 conv, then a strided conv
(kernel = stride = downsample) to the model's step rate.

Initialisation keeps the input's variance through the depth (He init for the ReLU layers,
variance-preserving init for the linear ones, zero biases). With PyTorch's default conv init every
layer shrinks the signal ~6x while the biases do not shrink, so at the encoder's output the input
is a ~10% perturbation of a bias pattern: the detector starts as a near-constant function and
training sits on a long plateau before it finds the input.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

from brr.model.config import DetectorConfig
from brr.model.initialisation import variance_preserving_init


class TCNEncoder(nn.Module):
    def __init__(self, cfg: DetectorConfig):
        super().__init__()
        layers: list[nn.Module] = []
        in_channels = cfg.n_channels
        for dilation, out_channels in zip(cfg.tcn_dilations, cfg.tcn_channels):
            conv = nn.Conv1d(in_channels, out_channels, cfg.tcn_kernel, dilation=dilation,
                             padding=dilation * (cfg.tcn_kernel - 1) // 2)
            # Before weight_norm: its gain is taken from the initialised weight.
            variance_preserving_init(conv, "relu")
            layers += [weight_norm(conv), nn.ReLU(), nn.Dropout(cfg.tcn_dropout)]
            in_channels = out_channels
        self.dilated = nn.Sequential(*layers)
        self.to_width = nn.Conv1d(in_channels, cfg.tcn_out, 1)
        self.mix = nn.Conv1d(cfg.tcn_out, cfg.tcn_out, 1)
        self.downsample = nn.Conv1d(cfg.tcn_out, cfg.tcn_out, cfg.downsample, stride=cfg.downsample)
        for conv in (self.to_width, self.mix, self.downsample):
            variance_preserving_init(conv, "linear")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.downsample(self.mix(self.to_width(self.dilated(x))))
