"""Triton kernels compiled ahead of time to PTX for NVIDIA GPUs, with their launch limits checked.

TensorRT's ahead-of-time plugins (``tensorrt.plugin.aot_impl``) embed one kernel's PTX in the engine,
so an engine with brr's custom nodes runs in trtexec, C++ and Triton Inference Server without Python.
Triton compiles for any target on a machine without a GPU, so what ships is built and checked here:
``compile_kernel`` gives the PTX and what its launch needs, ``check_launch`` refuses a launch the
target cannot run (threads per block, shared memory, grid extent, hidden scratch buffers that an AOT
launch cannot pass).

``triton`` is imported on first use only: serving an ONNX Runtime or OpenVINO engine never needs it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

# Compute capabilities brr's kernels are compiled and checked for: Ampere, Ada, Hopper, Blackwell.
TARGETS: tuple[int, ...] = (80, 86, 89, 90, 100)
WARP_SIZE = 32
MAX_THREADS_PER_BLOCK = 1024
# gridDim.x may reach 2**31 - 1; y and z at most 65535 (CUDA programming guide, "Compute capabilities").
MAX_GRID = (2**31 - 1, 65535, 65535)
# Shared memory one block may use (opt-in maximum, bytes) per compute capability.
MAX_SHARED_BYTES: dict[int, int] = {80: 166912, 86: 101376, 89: 101376, 90: 232448, 100: 232448}
# Triton emits arch-specific PTX (sm_90a, sm_100a) for these targets: it runs on that capability only.
ARCH_SPECIFIC_TARGETS = (90, 100)


class LaunchError(ValueError):
    """A compiled kernel that its target cannot launch as asked; the message names kernel, target and limit."""


@dataclass(frozen=True)
class CompiledKernel:
    """One kernel's PTX for one target and what launching it takes."""

    name: str
    capability: int
    ptx: str
    num_warps: int
    shared_bytes: int
    # Triton >= 3.3 kernels take two hidden pointers (global and profile scratch) after their own
    # arguments; a launch that does not pass them is safe only while the kernel uses neither.
    scratch_bytes: int

    @property
    def block(self) -> tuple[int, int, int]:
        return (self.num_warps * WARP_SIZE, 1, 1)

    def describe(self) -> dict:
        """Plain-JSON summary: what a note or a manifest records of the kernel."""
        return {"name": self.name, "target": f"sm_{self.capability}", "ptx_bytes": len(self.ptx.encode()),
                "block": list(self.block), "shared_bytes": self.shared_bytes}


def ptx_target(capability: int) -> int | None:
    """The target whose PTX runs on a GPU of ``capability`` (major * 10 + minor): that capability itself, else
    the newest portable target below it (the driver compiles plain sm_XX PTX for any later GPU, not sm_90a or
    sm_100a PTX); None for a GPU older than every target."""
    if capability in TARGETS:
        return capability
    portable = [t for t in TARGETS if t <= capability and t not in ARCH_SPECIFIC_TARGETS]
    return max(portable, default=None)


def compile_kernel(kernel, signature: Mapping[str, str], constexprs: Mapping[str, object], capability: int,
                   num_warps: int = 4, num_stages: int = 1) -> CompiledKernel:
    """PTX of the ``@triton.jit`` function ``kernel`` for ``sm_<capability>``.

    ``signature`` maps every parameter to its Triton type (``"*fp32"``, ``"i32"``, ``"constexpr"``) and
    ``constexprs`` gives the compile-time ones their values. Raises ``LaunchError`` for a target outside
    ``TARGETS`` or a kernel that needs scratch memory.
    """
    if capability not in TARGETS:
        raise LaunchError(f"{kernel.__name__}: no PTX target sm_{capability}; brr compiles for "
                          f"{', '.join(f'sm_{t}' for t in TARGETS)}")
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    source = ASTSource(fn=kernel, signature=dict(signature), constexprs=dict(constexprs))
    compiled = triton.compile(source, target=GPUTarget("cuda", capability, WARP_SIZE),
                              # Fused multiply-adds, stated rather than left to Triton's changing default.
                              options={"num_warps": num_warps, "num_stages": num_stages, "enable_fp_fusion": True})
    meta = compiled.metadata
    result = CompiledKernel(meta.name, capability, compiled.asm["ptx"], meta.num_warps, meta.shared,
                            getattr(meta, "global_scratch_size", 0) + getattr(meta, "profile_scratch_size", 0))
    if result.scratch_bytes:
        raise LaunchError(f"{result.name} (sm_{capability}) needs {result.scratch_bytes} bytes of scratch memory, "
                          "which an ahead-of-time launch cannot pass")
    return result


def check_launch(kernel: CompiledKernel, grid: tuple[int, int, int]) -> None:
    """Raise ``LaunchError`` unless ``kernel`` can be launched over ``grid`` on its target."""
    threads = kernel.block[0]
    where = f"{kernel.name} (sm_{kernel.capability})"
    if threads > MAX_THREADS_PER_BLOCK:
        raise LaunchError(f"{where}: {threads} threads per block, the limit is {MAX_THREADS_PER_BLOCK}")
    if kernel.shared_bytes > MAX_SHARED_BYTES[kernel.capability]:
        raise LaunchError(f"{where}: {kernel.shared_bytes} bytes of shared memory per block, the limit is "
                          f"{MAX_SHARED_BYTES[kernel.capability]}")
    for axis, (extent, limit) in enumerate(zip(grid, MAX_GRID)):
        if not 1 <= extent <= limit:
            raise LaunchError(f"{where}: grid extent {extent} along axis {'xyz'[axis]} is outside [1, {limit}]")
