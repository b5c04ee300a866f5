"""Mamba-2 block: the parameter layout of mamba_ssm.Mamba2 and the scan it runs."""

import pytest
import torch

from brr.model import MambaConfig
from brr.model.mamba2 import Mamba2
from brr.ops.selective_scan import ssd_recurrent


def mamba_ssm_layout(d_model, d_state, d_conv, expand, headdim):
    """mamba_ssm.Mamba2(d_model, d_state, d_conv, expand, headdim, ngroups=1) parameters, as documented:
    in_proj: Linear(d_model, 2*d_inner + 2*ngroups*d_state + nheads, bias=False);
    conv1d: depthwise Conv1d over d_inner + 2*ngroups*d_state channels with bias;
    dt_bias, A_log, D: (nheads,); norm: RMSNormGated(d_inner); out_proj: Linear(d_inner, d_model, bias=False).
    """
    d_inner = expand * d_model
    nheads = d_inner // headdim
    conv_dim = d_inner + 2 * d_state
    return {
        "dt_bias": (nheads,), "A_log": (nheads,), "D": (nheads,),
        "in_proj.weight": (2 * d_inner + 2 * d_state + nheads, d_model),
        "conv1d.weight": (conv_dim, 1, d_conv), "conv1d.bias": (conv_dim,),
        "norm.weight": (d_inner,), "out_proj.weight": (d_model, d_inner),
    }


@pytest.mark.parametrize("dims", [(64, 16, 4, 2, 8), (16, 8, 4, 2, 4)])
def test_parameter_layout_matches_mamba_ssm(dims):
    d_model, d_state, d_conv, expand, headdim = dims
    block = Mamba2(MambaConfig(d_model=d_model, d_state=d_state, d_conv=d_conv, expand=expand, headdim=headdim))
    assert {k: tuple(v.shape) for k, v in block.state_dict().items()} == mamba_ssm_layout(*dims)
    assert (block.A_log.exp() >= 1).all() and (block.A_log.exp() <= 16).all()


def test_block_equals_step_by_step_recurrence():
    torch.manual_seed(0)
    block = Mamba2(MambaConfig(d_model=16, d_state=8, headdim=4, chunk_size=16)).double()
    u = torch.randn(3, 100, 16, dtype=torch.float64)
    y = block(u)
    # Same block with the scan replaced by the plain recurrence.
    z, xbc, dt = torch.split(block.in_proj(u), [block.d_inner, block.d_inner + 2 * block.d_state, block.nheads], -1)
    xbc = torch.nn.functional.silu(block.conv1d(xbc.transpose(1, 2))[..., :100].transpose(1, 2))
    x, B, C = torch.split(xbc, [block.d_inner, block.d_state, block.d_state], -1)
    ref = ssd_recurrent(x.reshape(3, 100, block.nheads, block.headdim), dt, -block.A_log.exp(),
                        B.unsqueeze(2), C.unsqueeze(2), block.D, block.dt_bias, True)
    ref = block.out_proj(block.norm(ref.reshape(3, 100, -1), z))
    torch.testing.assert_close(y, ref, rtol=1e-10, atol=1e-10)


def test_causal_conv_keeps_causality():
    block = Mamba2(MambaConfig(d_model=16, d_state=8, headdim=4)).eval()
    u = torch.randn(1, 50, 16)
    v = u.clone()
    v[:, 30:] += 5.0
    with torch.no_grad():
        torch.testing.assert_close(block(u)[:, :30], block(v)[:, :30])
