"""PyTorch reference of the selective scan: the chunked SSD form and a step-by-step recurrence.

``ssd_chunked`` is the definition every other implementation (ONNX decomposition, ONNX Runtime
kernel, TensorRT plugin) is held to; ``ssd_recurrent`` is the plain recurrence it is proven against.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def discretise(dt: torch.Tensor, dt_bias: torch.Tensor | None, dt_softplus: bool) -> torch.Tensor:
    """dt (b, l, h) -> positive step sizes: softplus(dt + dt_bias) as in Mamba-2."""
    if dt_bias is not None:
        dt = dt + dt_bias
    return F.softplus(dt) if dt_softplus else dt


def segment_sum(a: torch.Tensor) -> torch.Tensor:
    """(..., T) -> (..., T, T) with out[..., i, j] = sum(a[..., j+1 : i+1]) for j <= i, -inf above.

    Built as a masked cumulative sum rather than a difference of cumsums so that exp() of it
    never forms exp(big) / exp(big): the overflow hazard of the naive form in reduced precision.
    """
    t = a.shape[-1]
    a = a.unsqueeze(-1).expand(*a.shape, t)
    strict_lower = torch.tril(torch.ones(t, t, dtype=torch.bool, device=a.device), diagonal=-1)
    a = a.masked_fill(~strict_lower, 0.0)
    sums = torch.cumsum(a, dim=-2)
    lower = torch.tril(torch.ones(t, t, dtype=torch.bool, device=a.device), diagonal=0)
    return sums.masked_fill(~lower, float("-inf"))


def ssd_chunked(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    dt_bias: torch.Tensor | None = None,
    dt_softplus: bool = True,
    chunk_size: int = 64,
) -> torch.Tensor:
    """Chunked structured-state-space-duality scan.

    x (b, l, h, p), dt (b, l, h), A (h,), B and C (b, l, g, n) with h divisible by g, D (h,).
    Returns y (b, l, h, p). Matrix products, cumulative sums and exponentials only. Heads are
    split as (g, r) with r = h // g so that C B^T is formed once per group, not once per head, and
    the work is laid out head-major so every chunk is one contiguous block of a batched matmul.
    """
    b, length, h, p = x.shape
    g, n = B.shape[2], B.shape[3]
    r = h // g
    dt = discretise(dt, dt_bias, dt_softplus)
    pad = (-length) % chunk_size
    xs = x * dt.unsqueeze(-1)
    # Decay exponents in fp32 whatever the input dtype: they are summed over a chunk below.
    a = (dt * A).to(torch.promote_types(dt.dtype, torch.float32))  # (b, l, h), <= 0
    if pad:
        # Zero-padded tail: dt = 0 there, so it neither decays nor feeds the state.
        xs = F.pad(xs, (0, 0, 0, 0, 0, pad))
        a = F.pad(a, (0, 0, 0, pad))
        B = F.pad(B, (0, 0, 0, 0, 0, pad))
        C = F.pad(C, (0, 0, 0, 0, 0, pad))
    c, t = (length + pad) // chunk_size, chunk_size
    xs = xs.reshape(b, c, t, g, r, p).permute(0, 3, 4, 1, 2, 5)  # (b, g, r, c, T, p)
    Bc = B.reshape(b, c, t, g, n).permute(0, 3, 1, 2, 4).unsqueeze(2)  # (b, g, 1, c, T, n)
    Cc = C.reshape(b, c, t, g, n).permute(0, 3, 1, 2, 4).unsqueeze(2)
    a_cumsum = torch.cumsum(a.reshape(b, c, t, g, r).permute(0, 3, 4, 1, 2), dim=-1)  # (b, g, r, c, T)

    # 1. Outputs within each chunk (the quadratic, attention-like part). Within one chunk the
    # exponent cs_l - cs_s is a difference of two fp32 sums of at most T terms: no cancellation
    # worth the masked cumulative sum of segment_sum. The upper triangle is masked before exp, so
    # neither the value nor its gradient ever meets exp(+large).
    upper = torch.triu(torch.ones(t, t, dtype=torch.bool, device=x.device), diagonal=1)
    exponent = (a_cumsum.unsqueeze(-1) - a_cumsum.unsqueeze(-2)).masked_fill(upper, float("-inf"))
    decay = torch.exp(exponent).to(xs.dtype)  # (b, g, r, c, T, T)
    y_diag = ((Cc @ Bc.transpose(-1, -2)) * decay) @ xs

    # 2. State each chunk hands on, as if it started from zero: (b, g, r, c, p, n).
    decay_to_end = torch.exp(a_cumsum[..., -1:] - a_cumsum).to(xs.dtype)
    states = (xs * decay_to_end.unsqueeze(-1)).transpose(-1, -2) @ Bc

    # 3. Carry states across chunk boundaries with the decay between chunk ends.
    # Row z, column k+1 = decay from the end of chunk k to the end of chunk z-1 (the start of z).
    chunk_decay = torch.exp(segment_sum(F.pad(a_cumsum[..., -1], (1, 0))))[..., :-1, 1:].to(xs.dtype)
    carried = (chunk_decay @ states.reshape(b, g, r, c, p * n)).reshape(b, g, r, c, p, n)

    # 4. Contribution of the carried state to each position.
    y_off = (Cc @ carried.transpose(-1, -2)) * torch.exp(a_cumsum).to(xs.dtype).unsqueeze(-1)

    y = (y_diag + y_off).permute(0, 3, 4, 1, 2, 5).reshape(b, c * t, h, p)[:, :length]
    if D is not None:
        y = y + x * D.view(1, 1, h, 1)
    return y


def ssd_recurrent(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    dt_bias: torch.Tensor | None = None,
    dt_softplus: bool = True,
) -> torch.Tensor:
    """The same scan one step at a time: h_t = exp(dt_t A) h_{t-1} + dt_t x_t B_t^T, y_t = h_t C_t + D x_t."""
    b, length, h, p = x.shape
    g, n = B.shape[2], B.shape[3]
    dt = discretise(dt, dt_bias, dt_softplus)
    Bh = B.repeat_interleave(h // g, dim=2)
    Ch = C.repeat_interleave(h // g, dim=2)
    state = x.new_zeros(b, h, p, n)
    ys = []
    for t in range(length):
        decay = torch.exp(dt[:, t] * A).view(b, h, 1, 1)
        state = state * decay + torch.einsum("bh,bhp,bhn->bhpn", dt[:, t], x[:, t], Bh[:, t])
        ys.append(torch.einsum("bhpn,bhn->bhp", state, Ch[:, t]))
    y = torch.stack(ys, dim=1)
    if D is not None:
        y = y + x * D.view(1, 1, h, 1)
    return y
