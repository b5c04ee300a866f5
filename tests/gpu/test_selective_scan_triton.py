"""brr's Triton selective-scan kernels on CUDA: parity with the reference (the kernels, and the op's autograd
through them), and a v3-small training step on them against the pure-PyTorch reference, times printed."""

import math
import statistics
import time

import numpy as np
import pytest
import torch

from brr.model import build_detector
from brr.ops.selective_scan import INPUT_NAMES, native, op, selective_scan, ssd_chunked
from brr.train.loop import seed_everything, train_step
from brr.train.optim import build_optimizer
from brr.train.settings import TrainSettings

kernels = pytest.importorskip("brr.ops.selective_scan.triton", reason="triton is not installed")

# (b, l, h, p, g, n): v3's node stream at one window's length, its edge stream (many rows, tiny heads), and
# groups with a head dim of three lane blocks, n = 32, an odd length.
SHAPES = {"node-v3": (8, 960, 16, 8, 1, 16), "edge": (64, 960, 8, 4, 1, 8), "groups-lanes": (2, 333, 4, 40, 2, 32)}
# Per-entry outputs (y and the gradients of x, dt, B, C). float32: the GPU's exp (ex2.approx) and fused
# multiply-adds on top of the interpreter's measured 5e-7; float16 / bfloat16: stores rounded to nearest, 2u of
# the largest entry (u = 2^-11, 2^-8).
TOLERANCES = {torch.float32: 1e-4, torch.float16: 1e-3, torch.bfloat16: 8e-3}
# The gradients of A, D and dt_bias are float32 sums of b * l terms of both signs, whatever the storage.
SUMMED = ("A", "D", "dt_bias")
SUMMED_TOLERANCE = 1e-3


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return ((actual.double() - expected).abs().max() / expected.abs().max().clamp_min(1e-30)).item()


def within_tolerance(errors: dict[str, float], storage: torch.dtype) -> bool:
    return all(e < (SUMMED_TOLERANCE if name.removeprefix("grad_") in SUMMED else TOLERANCES[storage])
               for name, e in errors.items())


def scan_inputs(b, length, h, p, g, n, seed=0):
    """float64 CUDA inputs distributed like a Mamba-2 block's (dt around its softplus-inverse bias)."""
    gen = torch.Generator(device="cuda").manual_seed(seed)

    def draw(*shape, uniform=False):
        return (torch.rand if uniform else torch.randn)(*shape, generator=gen, device="cuda", dtype=torch.float64)

    x, dt, B, C = draw(b, length, h, p), draw(b, length, h), draw(b, length, g, n), draw(b, length, g, n)
    A = -torch.exp(draw(h, uniform=True) * math.log(16))
    D = draw(h, uniform=True)
    dt0 = torch.exp(draw(h, uniform=True) * math.log(100) + math.log(1e-3))  # 1e-3 .. 0.1
    dt_bias = dt0 + torch.log(-torch.expm1(-dt0))
    return [x, dt, A, B, C, D, dt_bias]


@pytest.mark.parametrize("storage", list(TOLERANCES), ids=str)
@pytest.mark.parametrize("shape", list(SHAPES.values()), ids=list(SHAPES))
def test_triton_kernels_match_the_reference_on_cuda(shape, storage):
    inputs = scan_inputs(*shape)
    stored = [t.to(storage if i in (0, 1, 3, 4) else torch.float32) for i, t in enumerate(inputs)]
    exact = [t.double().requires_grad_(True) for t in stored]
    expected = ssd_chunked(*exact, True, 64)
    grad_y = torch.randn_like(expected).to(storage)
    wanted = torch.autograd.grad(expected, exact, grad_y.double())
    y = kernels.selective_scan_forward(*stored, True)
    grads = kernels.selective_scan_backward(grad_y, *stored, True)
    errors = {"y": relative_error(y, expected.detach())}
    errors.update({f"grad_{name}": relative_error(g, w) for name, g, w in zip(INPUT_NAMES, grads, wanted)})
    print(shape, storage, {k: f"{e:.1e}" for k, e in errors.items()})
    assert y.dtype == storage and [g.dtype for g in grads] == [t.dtype for t in stored]
    assert within_tolerance(errors, storage), errors


def test_op_trains_through_the_triton_kernels(monkeypatch):
    monkeypatch.setenv(native.KERNEL_ENV, "triton")
    inputs = [t.float() for t in scan_inputs(4, 500, 8, 8, 1, 16, seed=1)]
    assert op.cuda_kernel(inputs) is op.CudaKernel.TRITON
    leaves = [t.clone().requires_grad_(True) for t in inputs]
    exact = [t.double().requires_grad_(True) for t in inputs]
    y = selective_scan(*leaves, True, 16)
    expected = ssd_chunked(*exact, True, 16)
    grad_y = torch.randn_like(y)
    grads = torch.autograd.grad(y, leaves, grad_y)
    wanted = torch.autograd.grad(expected, exact, grad_y.double())
    errors = {"y": relative_error(y.detach(), expected.detach())}
    errors.update({f"grad_{name}": relative_error(g, w) for name, g, w in zip(INPUT_NAMES, grads, wanted)})
    assert within_tolerance(errors, torch.float32), errors


def _train(kernel: str, monkeypatch, steps: int = 6) -> tuple[list[float], list[float], float]:
    """(losses, seconds per step, peak MiB) of v3-small's training step on one fixed batch of four full
    windows."""
    monkeypatch.setenv(native.KERNEL_ENV, kernel)
    settings = TrainSettings(model="v3-small", batch_size=4)
    seed_everything(0)
    model = build_detector("v3-small").cuda().train()
    optimizer = build_optimizer(model, settings.lr, settings.weight_decay)
    rng = np.random.default_rng(0)
    samples = model.config.window_samples
    signals = rng.standard_normal((4, model.config.n_channels, samples)).astype(np.float32)
    labels = np.zeros((4, samples), np.float32)
    labels[:, samples // 3: samples // 2] = 1.0
    valid = np.ones((4, samples), bool)
    batch = tuple(torch.from_numpy(a).cuda() for a in (signals, labels, valid))
    losses, times = [], []
    torch.cuda.reset_peak_memory_stats()
    for _ in range(steps):
        seed_everything(1)  # the same dropout masks for both kernels
        torch.cuda.synchronize()
        start = time.perf_counter()
        outcome = train_step(model, optimizer, batch, settings, torch.device("cuda"))
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
        assert outcome.stage is None, outcome.stage
        losses.append(outcome.loss)
    return losses, times, torch.cuda.max_memory_allocated() / 2**20


def test_v3_small_training_step_triton_against_reference(monkeypatch):
    """The same first step (same weights, batch and dropout) on both kernels, and each one's step time (the
    median after the first, which compiles)."""
    results = {kernel: _train(kernel, monkeypatch) for kernel in ("reference", "triton")}
    medians = {kernel: statistics.median(times[1:]) for kernel, (_, times, _) in results.items()}
    print(f"v3-small training step, batch 4 x 60 s on {torch.cuda.get_device_name()}: "
          + ", ".join(f"{k} {1e3 * medians[k]:.1f} ms (peak {peak:.0f} MiB)" for k, (_, _, peak) in results.items())
          + f"; reference / triton {medians['reference'] / medians['triton']:.2f}")
    first = {kernel: losses[0] for kernel, (losses, _, _) in results.items()}
    assert all(math.isfinite(loss) for losses, _, _ in results.values() for loss in losses)
    assert abs(first["triton"] - first["reference"]) <= 1e-3 * abs(first["reference"]), first
