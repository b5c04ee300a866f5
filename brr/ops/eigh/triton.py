"""Triton kernel of the symmetric eigendecomposition (spec in ``brr/ops/eigh/__init__.py``): one program per
matrix, parallel-ordered cyclic Jacobi on register tiles, with no scratch memory (TensorRT's ahead-of-time
plugin launches it as PTX, ``brr.ops.eigh.trt``).

Layout: the n x n matrix sits in the top-left corner of a TILE x TILE tile (``tile_size``: the power of two
above n, 16 at least; n <= ``MAX_N``). The rest is a decoupled block: zero couplings, identity eigenvectors;
every update of an entry coupling the matrix and the padding combines two zeros, so the padding never
mixes in, and its eigenvalues are left out of the ranking and not written. Only the lower triangle is
loaded, mirrored into the upper one. The matrix is divided by the power of two at or below its largest
magnitude (exact, undone on the eigenvalues), so no square in the rotations can overflow.

Rounds: a sweep is ``players - 1`` rounds of the circle-method round robin over ``players`` = n rounded up
to even: in round r index ``players - 1`` meets r and every other i meets ``(2 r - i) mod (players - 1)``
(for odd n the extra player is the first padding index, whose zero coupling makes its rotation the
identity). A round's pairs are disjoint, so its rotations form one orthogonal P, applied as tile
operations A <- P^T A P and V <- V P: row and column j become c_j (row/column j) + s_j (row/column of
j's partner), the partner's row or column fetched with ``tl.gather``. Both members of a pair compute the
angle from a_qq - a_pp and a_pq + a_qp, bitwise the same on both sides, so P is exactly a product of
rotations even where rounding leaves A slightly asymmetric; the angle is the smaller one (|t| <= 1).

Stopping: sweeps run while the off-diagonal Frobenius norm exceeds ``TOLERANCE`` times the matrix's, at
most ``MAX_SWEEPS``. Jacobi converges quadratically, so the sweep that passes the test typically lands
at float32 rounding level; ``TOLERANCE`` sits above that floor so that rounding noise does not keep
sweeping, and low enough that eigenvectors of eigenvalues 1e-3 apart come out right. A matrix with a
NaN or inf entry is not rotated and comes out all NaN.

Sorting: eigenvalue j's rank is the number of the matrix's eigenvalues below it, ties broken by index (a
permutation); value j and eigenvector column j are stored at position ``rank_j``.

Kernel parameters, in the order an ahead-of-time launch passes them: ``a_ptr`` (input), ``n`` (int32),
``values_ptr``, ``vectors_ptr`` (outputs); the one constexpr is TILE. Arithmetic is float32 with
correctly rounded division and square root; the pointers may be float32 or float16 (loads widen, stores
round). The TensorRT plugin declares float32 only.

Importing this module imports ``triton``; only a CUDA launch, the TensorRT plugin's engine build and the
tests import it. ``TRITON_INTERPRET=1`` at import (Triton reads it when the kernel is decorated) runs the
kernel in Triton's interpreter, on tensors of any device.
"""

from __future__ import annotations

import functools

import torch

from brr.errors import DependencyUnavailable
from brr.ops import ptx

try:
    import triton
    import triton.language as tl
except ImportError as error:
    raise DependencyUnavailable(
        "The Triton eigh kernel needs the 'triton' package (CUDA builds of torch bring it); pip install .[gpu]"
    ) from error

# Largest n the kernel takes: its 64 x 64 tiles of A and V stay in the registers of 16 warps.
MAX_N = 64
# Clustered spectra take up to 8 sweeps; the cap bounds a matrix that never reaches the tolerance.
MAX_SWEEPS = 15
# Off-diagonal norm relative to the matrix's at which sweeping stops: about 10 float32 rounding floors
# (n = 19 reaches 1e-7 to 2e-7), a tenth of where projectors of eigenvalues 1e-3 apart start to drift.
TOLERANCE = 1e-6
SUPPORTED_DTYPES = (torch.float32, torch.float16)
# What the kernel reads: a jit function sees module globals only as constexprs.
_MAX_SWEEPS = tl.constexpr(MAX_SWEEPS)
_TOLERANCE_SQUARED = tl.constexpr(TOLERANCE**2)
# The float32 kernel's parameter types, for ahead-of-time compilation.
SIGNATURE = {"a_ptr": "*fp32", "n": "i32", "values_ptr": "*fp32", "vectors_ptr": "*fp32", "TILE": "constexpr"}


def tile_size(n: int) -> int:
    """The power-of-two tile of an n x n matrix: room for n rounded up to even (the round robin's players)."""
    if not 1 <= n <= MAX_N:
        raise ValueError(f"the Triton eigh kernel takes 1 <= n <= {MAX_N}, got n = {n}")
    return max(16, triton.next_power_of_2(n + n % 2))


def num_warps(tile: int) -> int:
    """Warps per program: four elements of each tile per thread (eight at TILE 64), all in registers."""
    return min(16, max(1, tile * tile // 128))


@triton.jit
def jacobi_eigh_kernel(a_ptr, n, values_ptr, vectors_ptr, TILE: tl.constexpr):
    # One function: a Triton kernel is the whole computation of one program (sweeps, ranking, writes).
    matrix = tl.program_id(0).to(tl.int64)
    index = tl.arange(0, TILE)
    rows = index[:, None]
    cols = index[None, :]
    inside = (rows < n) & (cols < n)
    diagonal = rows == cols
    # Lower triangle only: entry (i, j) is read at (max(i, j), min(i, j)).
    lower = tl.maximum(rows, cols) * n + tl.minimum(rows, cols)
    a = tl.load(a_ptr + matrix * n * n + lower, mask=inside, other=0.0).to(tl.float32)
    # Scaled by the power of two at or below its largest magnitude (exactly, undone on the eigenvalues):
    # entries stay below 2 in magnitude, so no square below overflows.
    max_abs = tl.max(tl.max(tl.abs(a), axis=1), axis=0)
    scale = (max_abs.to(tl.int32, bitcast=True) & 0x7F800000).to(tl.float32, bitcast=True)
    scale = tl.where(scale > 0.0, scale, 1.0)  # zero (or subnormal) matrices
    a = tl.div_rn(a, scale)
    v = tl.where(diagonal, 1.0, 0.0)

    players = n + n % 2
    rounds = players - 1
    norm2 = tl.sum(tl.sum(a * a, axis=1), axis=0)
    off2 = tl.sum(tl.sum(tl.where(diagonal, 0.0, a * a), axis=1), axis=0)
    threshold = _TOLERANCE_SQUARED * norm2
    sweep = 0
    while (sweep < _MAX_SWEEPS) & (off2 > threshold):
        for r in range(rounds):
            partner = tl.where(index == rounds, r, (2 * r - index + rounds) % rounds)
            partner = tl.where(index == r, rounds, partner)
            partner = tl.where(index < players, partner, index)

            # Gathers, not masked sums: the partner's row, then from it and from A the four numbers of
            # each pair (entries (j, j), (j, k), (k, j), (k, k) with k = partner(j)) as (TILE, 1) columns.
            partner_col = partner[:, None]
            a_rows = tl.gather(a, tl.broadcast_to(partner_col, (TILE, TILE)), 0)  # row j: row partner(j)
            a_jj = tl.gather(a, index[:, None], 1)
            a_jk = tl.gather(a, partner_col, 1)
            a_kj = tl.gather(a_rows, index[:, None], 1)
            a_kk = tl.gather(a_rows, partner_col, 1)
            is_p = index[:, None] < partner_col  # the pair's first index p (< q)
            d = tl.where(is_p, a_kk - a_jj, a_jj - a_kk)  # a_qq - a_pp on both sides of the pair
            # 2 a_pq, the same sum on both sides; zero for an index sitting out (no rotation).
            o = tl.where(partner_col == index[:, None], 0.0, a_jk + a_kj)
            # The smaller angle's tangent, t = sign(d) o / (|d| + sqrt(d^2 + o^2)), sign(0) = +1; 0 when
            # d = o = 0.
            denominator = tl.abs(d) + tl.sqrt_rn(d * d + o * o)
            t = tl.div_rn(o, tl.where(denominator > 0.0, denominator, 1.0))
            t = tl.where(d < 0.0, -t, t)
            c = tl.div_rn(1.0, tl.sqrt_rn(1.0 + t * t))
            s = tl.where(is_p, -t * c, t * c)
            c_row = tl.reshape(c, (1, TILE))
            s_row = tl.reshape(s, (1, TILE))

            a = c * a + s * a_rows
            a = a * c_row + tl.gather(a, tl.broadcast_to(partner[None, :], (TILE, TILE)), 1) * s_row
            v = v * c_row + tl.gather(v, tl.broadcast_to(partner[None, :], (TILE, TILE)), 1) * s_row
        off2 = tl.sum(tl.sum(tl.where(diagonal, 0.0, a * a), axis=1), axis=0)
        sweep += 1

    # A NaN or inf entry makes the norm NaN (after scaling, finite entries are below 2): no sweep ran,
    # and the whole decomposition is reported as NaN.
    finite = norm2 < float("inf")
    values = tl.where(finite, tl.sum(tl.where(diagonal, a, 0.0), axis=1) * scale, float("nan"))
    v = tl.where(finite, v, float("nan"))
    # Ranks over the matrix's own indices, ties broken by index: a permutation (NaN ranks as +inf).
    key = tl.where(finite, values, float("inf"))
    before = (key[None, :] < key[:, None]) | ((key[None, :] == key[:, None]) & (cols < rows))
    rank = tl.sum(tl.where(before & (cols < n), 1, 0), axis=1)
    tl.store(values_ptr + matrix * n + rank, values.to(values_ptr.dtype.element_ty), mask=index < n)
    tl.store(vectors_ptr + matrix * n * n + rows * n + rank[None, :], v.to(vectors_ptr.dtype.element_ty),
             mask=inside)


_INTERPRETED = not isinstance(jacobi_eigh_kernel, triton.runtime.JITFunction)


def eigh_triton(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(..., n, n) symmetric (lower triangle read) -> eigenvalues (..., n) ascending, eigenvectors (..., n, n)
    as columns.

    Runs on the current CUDA stream without synchronising it. Outputs have the input's dtype (float32 or
    float16); the arithmetic is float32.
    """
    if a.dim() < 2 or a.shape[-1] != a.shape[-2]:
        raise ValueError(f"eigh_triton needs (..., n, n) matrices, got shape {tuple(a.shape)}")
    if a.dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"eigh_triton takes {SUPPORTED_DTYPES}, got {a.dtype}")
    if not (a.is_cuda or _INTERPRETED):
        raise ValueError("eigh_triton runs on CUDA tensors (CPU tensors only under TRITON_INTERPRET=1)")
    n = a.shape[-1]
    tile = tile_size(n)
    flat = a.reshape(-1, n, n).contiguous()
    values = flat.new_empty(flat.shape[:-1])
    vectors = torch.empty_like(flat)
    if flat.shape[0]:
        jacobi_eigh_kernel[(flat.shape[0],)](flat, n, values, vectors, TILE=tile, num_warps=num_warps(tile))
    return values.reshape(a.shape[:-1]), vectors.reshape(a.shape)


@functools.cache
def compile_ptx(n: int, capability: int) -> ptx.CompiledKernel:
    """PTX of the float32 kernel for n x n matrices on ``sm_<capability>``."""
    if _INTERPRETED:
        raise RuntimeError("no PTX under TRITON_INTERPRET=1: the kernel was decorated for the interpreter")
    tile = tile_size(n)
    return ptx.compile_kernel(jacobi_eigh_kernel, SIGNATURE, {"TILE": tile}, capability,
                              num_warps=num_warps(tile))
