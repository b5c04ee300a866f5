"""The pure-PyTorch detector on CUDA: same results as on the CPU, trains, and the ops' CUDA paths."""

import pytest
import torch

from brr.model import build_detector
from brr.ops.selective_scan import selective_scan, ssd_chunked


@pytest.fixture
def exact_cuda_matmuls():
    # TF32 convolutions would dominate the comparison; the Triton scan kernel keeps its own precision.
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-12)).item()


@pytest.mark.parametrize("name", ["v3-small", "v3"])
def test_cuda_forward_matches_cpu(name, exact_cuda_matmuls):
    """Tight up to the edge weights; from the top-k on, two devices may pick different edges where
    weights tie within rounding (the architecture's known hazard), so the adjacency is judged by the
    diff's tie-aware selection comparison and the logits only for finiteness."""
    from brr.diff.compare import SelectionStats

    torch.manual_seed(0)
    model = build_detector(name).eval()
    x = torch.randn(2, 19, 15360)
    with torch.no_grad():
        cpu_logits, cpu_probes = model(x, return_probes=True)
        gpu_logits, gpu_probes = model.cuda()(x.cuda(), return_probes=True)
    errors = {k: relative_error(gpu_probes[k].cpu(), v) for k, v in cpu_probes.items()}
    print(name, {k: f"{e:.1e}" for k, e in errors.items()})
    assert all(torch.isfinite(v).all() for v in gpu_probes.values())
    for stage in ("tcn", "electrodes", "node_stream", "edge_similarity", "edge_weights"):
        assert errors[stage] < 1e-3, (stage, errors[stage])
    selection = SelectionStats()
    selection.add(cpu_probes["adjacency"].numpy(), gpu_probes["adjacency"].cpu().numpy(), 1e-4, 1e-3,
                  cpu_probes["edge_weights"].numpy(), model.config.edge_top_k)
    assert selection.passed, selection.to_dict()


def test_cuda_training_step_reaches_every_parameter():
    model = build_detector("v3-small").cuda().train()
    logits = model(torch.randn(2, 19, 15360, device="cuda"))
    logits.square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_selective_scan_cuda_kernel_matches_reference():
    torch.manual_seed(0)
    b, length, h, p, n = 4, 960, 16, 8, 16
    args = [torch.randn(b, length, h, p), torch.randn(b, length, h), -torch.rand(h) * 8,
            torch.randn(b, length, 1, n), torch.randn(b, length, 1, n), torch.randn(h), torch.randn(h)]
    reference = ssd_chunked(*[a.double() for a in args], True, 64).float()
    out = selective_scan(*[a.cuda() for a in args], True, 64).cpu()
    error = relative_error(out, reference)
    print(f"scan relative error {error:.2e}")
    assert error < 5e-3  # the Triton kernel multiplies in TF32
