"""Triton kernels of the selective scan (spec in ``__init__.py``): forward and backward, float32 arithmetic on
float32, float16 or bfloat16 storage; the op's CUDA kernels when mamba-ssm is absent, and (forward, compiled to
PTX by ``brr.ops.ptx``) the TensorRT plugin's ahead-of-time kernel.

Work layout: one program per (batch row, head, block of the head dim), walking l in chunks of ``CHUNK`` steps
with its (p block, n) state in registers. Within a chunk the recurrence is evaluated in its chunked (SSD) form,
a few small matrix products in float32 ("ieee": no TF32), so that a chunk's loads are issued together instead
of one dependent load per step; from chunk to chunk the state is carried exactly. Every exponent is a
difference of cumulative log-decays within one chunk, masked before ``exp`` where it would be positive, so
nothing overflows. Steps past the end have dt = 0: they neither decay nor feed the state. The head count is
the grid's second extent, so one compiled kernel serves every head count.

Backward: the launcher reruns the forward kernel to store the state each chunk starts from in a scratch tensor
(b, h, chunks, p, n) float32, O(b h (l / CHUNK) p n) memory, then the backward kernel walks the chunks from the
last, carrying dL/dstate and forming every gradient of the chunk from matrix products. Sums over the head dim
and over the heads of a group are left to the launcher as per-program partial sums (deterministic, no atomics).

Ahead-of-time use: the forward kernel's runtime parameters are, in this order, the inputs x, dt, A, B, C, D,
dt_bias, the length l (i32) and the output y, which is how TensorRT passes a plugin kernel its arguments
(inputs, ``SymExprs`` extra arguments, outputs); the states pointer after them is a compile-time ``None``
there, and so are p, g, n and ``dt_softplus``.

Importing this module imports ``triton``. ``TRITON_INTERPRET=1`` when triton is first imported runs the kernels
in Triton's interpreter on CPU tensors (the tests do so in a child process).
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass

import torch

from brr.errors import DependencyUnavailable
from brr.ops import ptx

try:
    import triton
    import triton.language as tl
except ImportError as error:
    raise DependencyUnavailable(
        "brr's Triton selective scan needs the 'triton' package (CUDA builds of torch bring it); pip install .[gpu]"
    ) from error

# Steps per chunk. float32 products run on FMA units, whose operand layouts repeat tiles across threads, so
# registers bound the tiles: at 16 steps, 4 warps and lane blocks of 16 the model's scans (n <= 16) compile
# without spills and the forward leaves room for several programs per SM (32 steps double its registers).
# Much larger states (n >= 64) still run, spilling.
CHUNK = 16
# tl.dot needs every extent of 16 or more; wider heads are split in blocks of MAX_BLOCK_P lanes, each its own
# program.
MIN_BLOCK = 16
MAX_BLOCK_P = 16
NUM_WARPS = 4
# Software pipelining: the forward keeps the next chunk's loads in flight during this chunk's products; the
# backward, whose registers are full, does not.
FORWARD_STAGES = 2
BACKWARD_STAGES = 1
# Storage types the kernels read and write (A, D and dt_bias may be any of them too).
TRITON_TYPES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}
# The forward kernel's runtime parameters in launch order (see the module docstring).
FORWARD_INPUTS = ("x_ptr", "dt_ptr", "A_ptr", "B_ptr", "C_ptr", "D_ptr", "dt_bias_ptr")
FORWARD_SCALARS = ("length",)
FORWARD_OUTPUTS = ("y_ptr",)


@triton.jit
def _softplus(v):
    """torch's softplus (threshold 20) with log1p done accurately: dt near 1e-3 is where Mamba-2 starts."""
    e = tl.exp(tl.minimum(v, 20.0))
    w = 1.0 + e
    # log(w) * e / (w - 1) is log1p(e) to a few ulps even where w rounds to 1 + a few ulps.
    log1p = tl.where(w == 1.0, e, tl.log(w) * (e / tl.where(w == 1.0, 1.0, w - 1.0)))
    return tl.where(v > 20.0, v, log1p)


@triton.jit
def _steps(dt_ptr, offsets, valid, bias, DT_SOFTPLUS: tl.constexpr):
    """(dt + dt_bias, discretised step) at ``offsets``; the step is 0 where ``valid`` is false."""
    raw = tl.load(dt_ptr + offsets, mask=valid, other=0.0).to(tl.float32) + bias
    if DT_SOFTPLUS:
        step = _softplus(raw)
    else:
        step = raw
    return raw, tl.where(valid, step, 0.0)


@triton.jit
def selective_scan_forward_kernel(
    x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, dt_bias_ptr, length, y_ptr, states_ptr,
    HEAD_DIM: tl.constexpr, GROUPS: tl.constexpr, STATE: tl.constexpr, DT_SOFTPLUS: tl.constexpr,
    CHUNK: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    head = tl.program_id(1)
    heads = tl.num_programs(1)  # the grid spans the heads: one kernel serves any head count
    lanes = tl.program_id(2) * BLOCK_P + tl.arange(0, BLOCK_P)
    group = head // (heads // GROUPS)
    steps = tl.arange(0, CHUNK)
    entries = tl.arange(0, BLOCK_N)
    lane_ok = lanes < HEAD_DIM
    entry_ok = entries < STATE
    rate = tl.load(A_ptr + head).to(tl.float32)
    if dt_bias_ptr is not None:
        bias = tl.load(dt_bias_ptr + head).to(tl.float32)
    else:
        bias = 0.0
    x_row = row * length * (heads * HEAD_DIM) + head * HEAD_DIM
    dt_row = row * length * heads + head
    bc_row = row * length * (GROUPS * STATE) + group * STATE
    causal = steps[:, None] >= steps[None, :]
    state = tl.zeros((BLOCK_P, BLOCK_N), tl.float32)
    chunks = tl.cdiv(length, CHUNK)
    for chunk in range(chunks):
        t = chunk * CHUNK + steps
        t_ok = t < length
        if states_ptr is not None:  # the state this chunk starts from, for the backward pass
            start = ((row * heads + head) * chunks + chunk) * (HEAD_DIM * STATE)
            tl.store(states_ptr + start + lanes[:, None] * STATE + entries[None, :], state,
                     mask=lane_ok[:, None] & entry_ok[None, :])
        _, step = _steps(dt_ptr, dt_row + t * heads, t_ok, bias, DT_SOFTPLUS)
        log_decay = tl.cumsum(step * rate, axis=0)
        last = tl.sum(tl.where(steps == CHUNK - 1, log_decay, 0.0), axis=0)
        x_at = x_row + t[:, None] * (heads * HEAD_DIM) + lanes[None, :]
        x_ok = t_ok[:, None] & lane_ok[None, :]
        x = tl.load(x_ptr + x_at, mask=x_ok, other=0.0).to(tl.float32)
        bc_at = bc_row + t[:, None] * (GROUPS * STATE) + entries[None, :]
        bc_ok = t_ok[:, None] & entry_ok[None, :]
        b = tl.load(B_ptr + bc_at, mask=bc_ok, other=0.0).to(tl.float32)
        c = tl.load(C_ptr + bc_at, mask=bc_ok, other=0.0).to(tl.float32)
        xs = x * step[:, None]
        decay = tl.exp(tl.where(causal, log_decay[:, None] - log_decay[None, :], float("-inf")))
        scores = tl.dot(c, tl.trans(b), input_precision="ieee") * decay
        y = tl.dot(scores, xs, input_precision="ieee")
        y += tl.exp(log_decay)[:, None] * tl.dot(c, tl.trans(state), input_precision="ieee")
        if D_ptr is not None:
            y += tl.load(D_ptr + head).to(tl.float32) * x
        if y_ptr is not None:
            tl.store(y_ptr + x_at, y.to(y_ptr.dtype.element_ty), mask=x_ok)
        to_end = tl.exp(last - log_decay)
        state = state * tl.exp(last) + tl.dot(tl.trans(xs * to_end[:, None]), b, input_precision="ieee")


@triton.jit
def selective_scan_backward_kernel(
    x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, dt_bias_ptr, grad_y_ptr, states_ptr, length,
    grad_x_ptr, grad_dt_ptr, grad_B_ptr, grad_C_ptr, grad_params_ptr,
    HEAD_DIM: tl.constexpr, GROUPS: tl.constexpr, STATE: tl.constexpr, DT_SOFTPLUS: tl.constexpr,
    CHUNK: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """Partial gradients of one (row, head, lane block): dx in x's dtype; float32 (b, l, h, blocks) for dt,
    (b, l, h, blocks, n) for B and C, (b, h, blocks, 3) for A, D and dt_bias."""
    # One function: a Triton kernel is the whole computation of one program, its chunk loop carrying the state.
    row = tl.program_id(0).to(tl.int64)
    head = tl.program_id(1)
    heads = tl.num_programs(1)
    block = tl.program_id(2)
    blocks = tl.num_programs(2)
    lanes = block * BLOCK_P + tl.arange(0, BLOCK_P)
    group = head // (heads // GROUPS)
    steps = tl.arange(0, CHUNK)
    entries = tl.arange(0, BLOCK_N)
    lane_ok = lanes < HEAD_DIM
    entry_ok = entries < STATE
    rate = tl.load(A_ptr + head).to(tl.float32)
    if dt_bias_ptr is not None:
        bias = tl.load(dt_bias_ptr + head).to(tl.float32)
    else:
        bias = 0.0
    x_row = row * length * (heads * HEAD_DIM) + head * HEAD_DIM
    dt_row = row * length * heads + head
    bc_row = row * length * (GROUPS * STATE) + group * STATE
    causal = steps[:, None] >= steps[None, :]
    is_last = steps == CHUNK - 1
    carried = tl.zeros((BLOCK_P, BLOCK_N), tl.float32)  # dL/d(state at the end of the chunk)
    grad_rate = tl.zeros((CHUNK,), tl.float32)
    grad_skip = tl.zeros((CHUNK,), tl.float32)
    grad_bias = tl.zeros((CHUNK,), tl.float32)
    chunks = tl.cdiv(length, CHUNK)
    for done in range(chunks):
        chunk = chunks - 1 - done
        t = chunk * CHUNK + steps
        t_ok = t < length
        start = ((row * heads + head) * chunks + chunk) * (HEAD_DIM * STATE)
        state_ok = lane_ok[:, None] & entry_ok[None, :]
        initial = tl.load(states_ptr + start + lanes[:, None] * STATE + entries[None, :], mask=state_ok, other=0.0)
        raw, step = _steps(dt_ptr, dt_row + t * heads, t_ok, bias, DT_SOFTPLUS)
        log_decay = tl.cumsum(step * rate, axis=0)
        last = tl.sum(tl.where(is_last, log_decay, 0.0), axis=0)
        x_at = x_row + t[:, None] * (heads * HEAD_DIM) + lanes[None, :]
        x_ok = t_ok[:, None] & lane_ok[None, :]
        x = tl.load(x_ptr + x_at, mask=x_ok, other=0.0).to(tl.float32)
        gy = tl.load(grad_y_ptr + x_at, mask=x_ok, other=0.0).to(tl.float32)
        bc_at = bc_row + t[:, None] * (GROUPS * STATE) + entries[None, :]
        bc_ok = t_ok[:, None] & entry_ok[None, :]
        b = tl.load(B_ptr + bc_at, mask=bc_ok, other=0.0).to(tl.float32)
        c = tl.load(C_ptr + bc_at, mask=bc_ok, other=0.0).to(tl.float32)
        xs = x * step[:, None]
        decay = tl.exp(tl.where(causal, log_decay[:, None] - log_decay[None, :], float("-inf")))
        from_start = tl.exp(log_decay)
        to_end = tl.exp(last - log_decay)
        # Within the chunk y_t = sum_s decay_ts (c_t . b_s) xs_s; with gy_t . xs_s as pair_ts:
        scores = tl.dot(c, tl.trans(b), input_precision="ieee") * decay
        pair = tl.dot(gy, tl.trans(xs), input_precision="ieee")
        weighted = pair * decay
        grad_c = tl.dot(weighted, b, input_precision="ieee")
        grad_c += from_start[:, None] * tl.dot(gy, initial, input_precision="ieee")
        carried_b = tl.dot(b, tl.trans(carried), input_precision="ieee")  # (CHUNK, BLOCK_P)
        grad_b = tl.dot(tl.trans(weighted), c, input_precision="ieee")
        grad_b += to_end[:, None] * tl.dot(xs, carried, input_precision="ieee")
        grad_xs = tl.dot(tl.trans(scores), gy, input_precision="ieee") + to_end[:, None] * carried_b
        # dL/d(log_decay): each decay_ts = exp(ld_t - ld_s) moves ld_t up and ld_s down; the carried-in state
        # enters y_t with exp(ld_t); the state handed on takes exp(ld_last - ld_s) of each input and
        # exp(ld_last) of the carried-in state.
        both = scores * pair
        grad_log = tl.sum(both, axis=1) - tl.sum(both, axis=0)
        grad_log += from_start * tl.sum(gy * tl.dot(c, tl.trans(initial), input_precision="ieee"), axis=1)
        handed = to_end * tl.sum(xs * carried_b, axis=1)
        grad_log -= handed
        grad_log += tl.where(is_last, tl.sum(handed, axis=0) + tl.exp(last) * tl.sum(carried * initial), 0.0)
        grad_a = tl.cumsum(grad_log, axis=0, reverse=True)  # log_decay is a cumulative sum of step * rate
        grad_step = rate * grad_a + tl.sum(x * grad_xs, axis=1)
        if DT_SOFTPLUS:
            grad_step = grad_step * tl.sigmoid(raw)
        grad_step = tl.where(t_ok, grad_step, 0.0)
        grad_x = grad_xs * step[:, None]
        if D_ptr is not None:
            grad_x += tl.load(D_ptr + head).to(tl.float32) * gy
            grad_skip += tl.sum(gy * x, axis=1)
        grad_rate += step * grad_a
        grad_bias += grad_step
        tl.store(grad_x_ptr + x_at, grad_x.to(grad_x_ptr.dtype.element_ty), mask=x_ok)
        partial = ((row * length + t) * heads + head) * blocks + block
        tl.store(grad_dt_ptr + partial, grad_step, mask=t_ok)
        partial_bc = partial[:, None] * STATE + entries[None, :]
        tl.store(grad_B_ptr + partial_bc, grad_b, mask=bc_ok)
        tl.store(grad_C_ptr + partial_bc, grad_c, mask=bc_ok)
        carried = carried * tl.exp(last) + tl.dot(tl.trans(gy * from_start[:, None]), c, input_precision="ieee")
    params = grad_params_ptr + ((row * heads + head) * blocks + block) * 3
    tl.store(params, tl.sum(grad_rate, axis=0))
    tl.store(params + 1, tl.sum(grad_skip, axis=0))
    tl.store(params + 2, tl.sum(grad_bias, axis=0))


def _block(extent: int, most: int | None = None) -> int:
    size = max(MIN_BLOCK, triton.next_power_of_2(extent))
    return size if most is None else min(size, most)


@dataclass(frozen=True)
class ScanPlan:
    """The compile-time half of a launch: the head dim, groups, state size and ``dt_softplus`` (b, l and the
    head count are read at run time, the head count from the grid)."""

    head_dim: int
    groups: int
    state: int
    dt_softplus: bool

    def __post_init__(self):
        if min(self.head_dim, self.groups, self.state) < 1:
            raise ValueError(f"selective scan needs positive sizes, got head dim {self.head_dim}, groups "
                             f"{self.groups}, state {self.state}")

    @property
    def block_p(self) -> int:
        return _block(self.head_dim, MAX_BLOCK_P)

    @property
    def block_n(self) -> int:
        return _block(self.state)

    @property
    def lane_blocks(self) -> int:
        return triton.cdiv(self.head_dim, self.block_p)

    def grid(self, batch, heads: int) -> tuple:
        """(batch, heads, lane blocks); ``batch`` may be an int or a TensorRT shape expression."""
        if heads < 1 or heads % self.groups:
            raise ValueError(f"selective scan needs heads divisible by groups, got {heads} heads, {self.groups} groups")
        return batch, heads, self.lane_blocks

    def chunks(self, length: int) -> int:
        return triton.cdiv(length, CHUNK)

    def constexprs(self) -> dict[str, object]:
        return {"HEAD_DIM": self.head_dim, "GROUPS": self.groups, "STATE": self.state, "DT_SOFTPLUS": self.dt_softplus,
                "CHUNK": CHUNK, "BLOCK_P": self.block_p, "BLOCK_N": self.block_n}


def forward_signature(io_type: str, param_type: str) -> tuple[dict[str, str], dict[str, object]]:
    """(signature, extra constexprs) of the ahead-of-time forward kernel: x, dt, B, C and y stored as
    ``io_type``, A, D and dt_bias as ``param_type`` (Triton names: "fp32", "fp16", "bf16"); no states."""
    pointer_types = {"A_ptr": param_type, "D_ptr": param_type, "dt_bias_ptr": param_type}
    signature = {name: f"*{pointer_types.get(name, io_type)}" for name in FORWARD_INPUTS}
    signature.update({name: "i32" for name in FORWARD_SCALARS})
    signature.update({name: f"*{io_type}" for name in FORWARD_OUTPUTS})
    signature["states_ptr"] = "constexpr"
    signature.update({name: "constexpr" for name in ScanPlan(1, 1, 1, False).constexprs()})
    return signature, {"states_ptr": None}


@functools.cache
def compile_forward(plan: ScanPlan, io_type: str, param_type: str, capability: int) -> ptx.CompiledKernel:
    """The forward kernel's PTX for ``sm_<capability>`` (cached per process)."""
    signature, constexprs = forward_signature(io_type, param_type)
    return ptx.compile_kernel(selective_scan_forward_kernel, signature, {**plan.constexprs(), **constexprs},
                              capability, num_warps=NUM_WARPS, num_stages=FORWARD_STAGES)


def plan_for(x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
             D: torch.Tensor | None, dt_bias: torch.Tensor | None, dt_softplus: bool) -> ScanPlan:
    """The launch plan of torch operands, checked against the spec's shapes and the kernels' dtypes."""
    if x.dim() != 4 or B.dim() != 4:
        raise ValueError(f"x must be (b, l, h, p) and B, C (b, l, g, n), got {tuple(x.shape)} and {tuple(B.shape)}")
    b, length, h, p = x.shape
    plan = ScanPlan(p, B.shape[2], B.shape[3], bool(dt_softplus))
    plan.grid(b, h)  # checks the head count against the groups
    expected = {"dt": (dt, (b, length, h)), "A": (A, (h,)), "B": (B, (b, length, plan.groups, plan.state)),
                "C": (C, (b, length, plan.groups, plan.state)), "D": (D, (h,)), "dt_bias": (dt_bias, (h,))}
    for name, (tensor, shape) in expected.items():
        if tensor is not None and tuple(tensor.shape) != shape:
            raise ValueError(f"{name} must be {shape} for x {tuple(x.shape)}, got {tuple(tensor.shape)}")
    for name, tensor in zip(("x", "dt", "A", "B", "C", "D", "dt_bias"), (x, dt, A, B, C, D, dt_bias)):
        if tensor is not None and tensor.dtype not in TRITON_TYPES:
            raise TypeError(f"the Triton selective scan stores float32, float16 or bfloat16; {name} is {tensor.dtype}")
    return plan


def _on_device(x: torch.Tensor):
    return torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext()


def _contiguous(*tensors):
    return [None if t is None else t.contiguous() for t in tensors]


def selective_scan_forward(x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                           D: torch.Tensor | None = None, dt_bias: torch.Tensor | None = None,
                           dt_softplus: bool = True) -> torch.Tensor:
    """y (b, l, h, p) in x's dtype, computed in float32."""
    plan = plan_for(x, dt, A, B, C, D, dt_bias, dt_softplus)
    x, dt, A, B, C, D, dt_bias = _contiguous(x, dt, A, B, C, D, dt_bias)
    y = torch.empty_like(x)
    batch, length, heads = x.shape[:3]
    if y.numel():
        with _on_device(x):
            selective_scan_forward_kernel[plan.grid(batch, heads)](
                x, dt, A, B, C, D, dt_bias, length, y, None, **plan.constexprs(), num_warps=NUM_WARPS,
                num_stages=FORWARD_STAGES)
    return y


def selective_scan_backward(grad_y: torch.Tensor, x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor,
                            B: torch.Tensor, C: torch.Tensor, D: torch.Tensor | None = None,
                            dt_bias: torch.Tensor | None = None, dt_softplus: bool = True):
    """Gradients (x, dt, A, B, C, D, dt_bias) of <grad_y, y>, each in its input's dtype (None for an absent D
    or dt_bias); float32 arithmetic throughout."""
    plan = plan_for(x, dt, A, B, C, D, dt_bias, dt_softplus)
    x, dt, A, B, C, D, dt_bias, grad_y = _contiguous(x, dt, A, B, C, D, dt_bias, grad_y)
    batch, length, heads, head_dim = x.shape
    blocks, state, groups = plan.lane_blocks, plan.state, plan.groups
    f32 = {"dtype": torch.float32, "device": x.device}
    states = torch.empty(batch, heads, plan.chunks(length), head_dim, state, **f32)
    grad_x = torch.empty_like(x)
    grad_dt = torch.empty(batch, length, heads, blocks, **f32)
    grad_B = torch.empty(batch, length, heads, blocks, state, **f32)
    grad_C = torch.empty_like(grad_B)
    grad_params = torch.empty(batch, heads, blocks, 3, **f32)
    if x.numel():
        with _on_device(x):
            selective_scan_forward_kernel[plan.grid(batch, heads)](
                x, dt, A, B, C, D, dt_bias, length, None, states, **plan.constexprs(), num_warps=NUM_WARPS,
                num_stages=FORWARD_STAGES)
            selective_scan_backward_kernel[plan.grid(batch, heads)](
                x, dt, A, B, C, D, dt_bias, grad_y, states, length, grad_x, grad_dt, grad_B, grad_C, grad_params,
                **plan.constexprs(), num_warps=NUM_WARPS, num_stages=BACKWARD_STAGES)
    else:
        for partial in (grad_dt, grad_B, grad_C, grad_params):
            partial.zero_()
    per_group = (heads // groups) * blocks
    grad_B, grad_C = (g.view(batch, length, groups, per_group, state).sum(3) for g in (grad_B, grad_C))
    grad_A, grad_D, grad_bias = grad_params.sum((0, 2)).unbind(-1)
    grads = (grad_x, grad_dt.sum(-1), grad_A, grad_B, grad_C, grad_D, grad_bias)
    inputs = (x, dt, A, B, C, D, dt_bias)
    return tuple(None if t is None else g.to(t.dtype) for t, g in zip(inputs, grads))
