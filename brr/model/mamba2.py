"""Mamba-2 block in pure PyTorch with the parameter layout of ``mamba_ssm.Mamba2``.

Parameters (one group, no MLP branch, default ``bias=False``, ``conv_bias=True``):
  in_proj.weight   (2*d_inner + 2*d_state + nheads, d_model)   -> [z, x, B, C, dt]
  conv1d.weight    (conv_dim, 1, d_conv), conv1d.bias (conv_dim,)  conv_dim = d_inner + 2*d_state
  dt_bias, A_log, D (nheads,)
  norm.weight      (d_inner,)   gated RMSNorm, norm_before_gate=False
  out_proj.weight  (d_model, d_inner)
so that a state dict saved from one loads into the other. Forward, for u (b, l, d_model):
  z, xBC, dt = in_proj(u); xBC = SiLU(causal depthwise conv(xBC)); x, B, C = xBC
  (computed per part from row slices of in_proj and conv1d, which is the same arithmetic)
  y = selective_scan(x, dt, A=-exp(A_log), B, C, D, dt_bias, softplus)   (brr.ops)
  out = out_proj(RMSNorm(y * SiLU(z)) * norm.weight)
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from brr.model.config import MambaConfig
from brr.ops.selective_scan import selective_scan


class GatedRMSNorm(nn.Module):
    """RMSNorm(x * SiLU(z)) * weight, as mamba-ssm's RMSNormGated with norm_before_gate=False."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        x = x * F.silu(z)
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class Mamba2(nn.Module):
    def __init__(self, cfg: MambaConfig, dt_min: float = 1e-3, dt_max: float = 0.1, dt_init_floor: float = 1e-4,
                 a_init_range: tuple[float, float] = (1.0, 16.0)):
        super().__init__()
        self.d_model, self.d_state, self.headdim = cfg.d_model, cfg.d_state, cfg.headdim
        self.d_inner = cfg.expand * cfg.d_model
        self.nheads = self.d_inner // cfg.headdim
        self.chunk_size = cfg.chunk_size
        conv_dim = self.d_inner + 2 * self.d_state
        self.in_proj = nn.Linear(cfg.d_model, 2 * self.d_inner + 2 * self.d_state + self.nheads, bias=False)
        self.conv1d = nn.Conv1d(conv_dim, conv_dim, cfg.d_conv, groups=conv_dim, padding=cfg.d_conv - 1)
        # Same initialisation as mamba-ssm: log-uniform dt through an inverse softplus, A in [1, 16].
        dt = torch.exp(torch.rand(self.nheads) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        dt = dt.clamp(min=dt_init_floor)
        self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))
        self.A_log = nn.Parameter(torch.log(torch.empty(self.nheads).uniform_(*a_init_range)))
        self.D = nn.Parameter(torch.ones(self.nheads))
        for name in ("dt_bias", "A_log", "D"):
            getattr(self, name)._no_weight_decay = True
        self.norm = GatedRMSNorm(self.d_inner)
        self.out_proj = nn.Linear(self.d_inner, cfg.d_model, bias=False)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        b, length, _ = u.shape
        d, n = self.d_inner, self.d_state
        # One projection (and depthwise conv) per consumer from row slices of the same parameters, rather
        # than one projection split afterwards: exported graphs then have no Split, which OpenVINO runs on
        # its reference path (13 % of a v3 window); the conv is causal by left padding, so nothing is cropped.
        z = F.linear(u, self.in_proj.weight[:d])
        x, B, C = (self._conv_silu(u, start, size) for start, size in ((0, d), (d, n), (d + n, n)))
        dt = F.linear(u, self.in_proj.weight[2 * d + 2 * n:])
        # Contiguous operands: the op's kernels (and compilers' layout assumptions) need no strides.
        y = selective_scan(
            x.reshape(b, length, self.nheads, self.headdim).contiguous(), dt.contiguous(), -torch.exp(self.A_log),
            B.unsqueeze(2).contiguous(), C.unsqueeze(2).contiguous(), self.D, self.dt_bias, True, self.chunk_size,
        )
        return self.out_proj(self.norm(y.reshape(b, length, self.d_inner), z))

    def _conv_silu(self, u: torch.Tensor, start: int, size: int) -> torch.Tensor:
        """SiLU(causal depthwise conv(in_proj(u))) for xBC channels [start, start + size), as (b, l, size)."""
        rows = slice(start, start + size)
        xbc = F.linear(u, self.in_proj.weight[self.d_inner + start: self.d_inner + start + size])
        xbc = F.pad(xbc.transpose(1, 2), (self.conv1d.kernel_size[0] - 1, 0))
        # SiLU before the transpose, so that engines fuse it into the convolution.
        return F.silu(F.conv1d(xbc, self.conv1d.weight[rows], self.conv1d.bias[rows], groups=size)).transpose(1, 2)


class BidirectionalMamba2(nn.Module):
    """LayerNorm(x + dropout(Linear([Mamba2_f(x), flip(Mamba2_b(flip(x)))])))."""

    def __init__(self, cfg: MambaConfig):
        super().__init__()
        self.forward_mamba = Mamba2(cfg)
        self.backward_mamba = Mamba2(cfg)
        self.merge = nn.Linear(2 * cfg.d_model, cfg.d_model)
        self.dropout = nn.Dropout(cfg.dropout)
        self.norm = nn.LayerNorm(cfg.d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        forward = self.forward_mamba(x)
        backward = self.backward_mamba(x.flip(1)).flip(1)
        return self.norm(x + self.dropout(self.merge(torch.cat([forward, backward], dim=-1))))


class BidirectionalMamba2Stack(nn.Sequential):
    def __init__(self, cfg: MambaConfig):
        super().__init__(*[BidirectionalMamba2(cfg) for _ in range(cfg.layers)])
