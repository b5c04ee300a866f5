"""The custom ops are well-formed torch.library ops: schema, fake kernels, autograd, compile."""

import torch

import brr.ops.eigh.op  # noqa: F401  (registers brr::eigh)
import brr.ops.selective_scan.op  # noqa: F401  (registers brr::selective_scan)


def test_selective_scan_opcheck():
    x = torch.randn(2, 40, 4, 8)
    args = (x, torch.randn(2, 40, 4), -torch.rand(4), torch.randn(2, 40, 1, 8), torch.randn(2, 40, 1, 8),
            torch.randn(4), torch.randn(4), True, 16)
    torch.library.opcheck(torch.ops.brr.selective_scan.default, args)


def test_eigh_opcheck():
    a = torch.randn(3, 5, 5)
    torch.library.opcheck(torch.ops.brr.eigh.default, (a + a.mT,))
