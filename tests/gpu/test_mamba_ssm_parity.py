"""Weight and numeric parity of brr's Mamba-2 block with mamba_ssm.Mamba2 (its CUDA/Triton kernels)."""

import pytest
import torch

from brr.model import MambaConfig
from brr.model.mamba2 import Mamba2 as BrrMamba2

mamba2_module = pytest.importorskip("mamba_ssm.modules.mamba2", reason="mamba-ssm not installed (pip install .[gpu])")


@pytest.mark.parametrize("dims", [(64, 16, 8), (16, 8, 4)])
@pytest.mark.parametrize("use_mem_eff_path", [False, True])
def test_state_dicts_load_both_ways_and_outputs_agree(dims, use_mem_eff_path):
    if use_mem_eff_path and mamba2_module.causal_conv1d_fn is None:
        pytest.skip("the fused path needs the causal-conv1d package")
    d_model, d_state, headdim = dims
    torch.manual_seed(0)
    theirs = mamba2_module.Mamba2(d_model=d_model, d_state=d_state, d_conv=4, expand=2, headdim=headdim,
                                  chunk_size=64, use_mem_eff_path=use_mem_eff_path).cuda()
    ours = BrrMamba2(MambaConfig(d_model=d_model, d_state=d_state, headdim=headdim, chunk_size=64)).cuda()
    ours.load_state_dict(theirs.state_dict(), strict=True)
    u = torch.randn(8, 960, d_model, device="cuda")
    with torch.no_grad():
        torch.testing.assert_close(ours(u), theirs(u), atol=2e-3, rtol=2e-3)
    # And back: weights trained here load into mamba-ssm.
    torch.manual_seed(1)
    fresh = BrrMamba2(MambaConfig(d_model=d_model, d_state=d_state, headdim=headdim, chunk_size=64)).cuda()
    theirs.load_state_dict(fresh.state_dict(), strict=True)
    with torch.no_grad():
        torch.testing.assert_close(fresh(u), theirs(u), atol=2e-3, rtol=2e-3)
