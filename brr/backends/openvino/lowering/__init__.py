"""OpenVINO's lowering of an exported graph: the design, described here once.

All of it happens between the ONNX file and the IR that an OpenVINO build writes: the exported ONNX keeps the
standard graph that every other engine runs. Each rewrite is one module, run by ``PASSES`` in order over its
candidates; a candidate it declines stays as it is, and its module's logger says why at debug level. A
rewrite's count is the build setting that ``Rewrite.setting`` names (the manifest's ``settings``).

**Widely dilated convolutions run on phases** (``phases``; fp32 builds). A Conv1d of dilation
d >= ``PHASE_DILATION`` over a length divisible by d is the same convolution, undilated, over the d
interleaved phases of its input (phase r holds steps r, r + d, r + 2d, ...), stacked along the batch.
OpenVINO's fp32 convolution kernel slows down at wide dilations and runs the phase form as fast as an
undilated convolution; its bf16 kernel does not slow down. Only fp32 engines are rewritten: under a bf16
hint OpenVINO stores the phases' output in bf16 at its first reshape whatever the plan marks say, so a
pinned convolution stays whole there.

The rewrites that follow write nodes of the domain ``brr.openvino`` that brr's OpenVINO extension converts
(plugin-mode graphs only); their inputs are named in ``brr/ops/selective_scan/lowered_inputs.def``, which the
extension compiles in. Each works on the node the rewrite before it wrote.

**Mamba-2's causal depthwise convolution (+ SiLU) of x, B and C moves into the scan between them**
(``scan_convolution``: ``SelectiveScan`` -> ``Mamba2Scan``). OpenVINO's CPU plugin runs a convolution
channels-last, so it adds a layout reorder on each side of it besides the export's two Transposes: several
passes over the edge stream's largest tensors for a 4-tap filter. The extension's kernel convolves each block
of steps as it reads it.

**The gated RMS norm of the scan's output moves in too** (``gated_norm``): y * SiLU(z), the norm and its
weight are more passes over the output, which the kernel makes on each batch row while it is in cache.

**A narrow block's input and output projections move in too** (``in_projection``: ``Mamba2Scan`` ->
``Mamba2ProjectedScan``, where u has at most ``PROJECTED_MAX_FEATURES`` features; ``out_projection``). A
GEMM of so few inputs writes far more than it computes (with 16, five values for each two multiply-adds per
input), and the scan reads all of it back; the kernel projects each batch row into cache instead, and its
output never leaves the cache when the output projection follows it inside. Wider blocks (the node
stream's) keep OpenVINO's GEMMs, which run near the compute peak there.

**Backward directions run backwards in the kernel** (``reversal``). A bidirectional layer's backward
direction is flip(block(flip(u))) along l: two Slices with step -1, each a full copy. A lowered scan with its
norm loses both flips (the projections between u and a ``Mamba2Scan``, and between either node and the flip
back, act on each step alone) and gets the attribute ``reversed``: the kernel walks each row's steps from the
last, and the gated norm pairs each step's output with that step's z, whichever the direction. It comes after
the projections, which change what lies between the scan and the flips.

**The edge stream's first layer projects its scalar** (``lift``). Its u is the similarity s lifted by a
constant (1, 16) w, so its input projection u W_in is s (w W_in): one multiply-add per column instead of
sixteen. The fold holds where the lift is linear: without guards, or where the lift's clamp provably never
binds. It comes after ``reversal``: a backward direction's u is a flip until then.

**A layer's two directions are summed, not concatenated** (``summed_directions``; every build). A
bidirectional layer concatenates its directions' outputs y_f O_f and y_b O_b and projects the concatenation by
W: that equals y_f (O_f W_f) + y_b (O_b W_b), W_f and W_b W's two halves of rows. Each direction's projection
absorbs its half and an Add replaces the Concat and the combining MatMul: a GEMM and a copy of the
concatenation fewer per layer. It comes last: it needs each direction to end in its projection, with no flip
between them and the Concat.

A scan whose three inputs do not all match the pattern, or whose intermediate values are read elsewhere (a
probe), is left as it is; a norm, a projection or a flip that does not match stays in the graph around a
lowered scan.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import onnx
import onnx_ir as ir

from brr.backends.openvino.lowering import (
    gated_norm,
    in_projection,
    lift,
    out_projection,
    phases,
    reversal,
    scan_convolution,
    summed_directions,
)
from brr.backends.openvino.lowering.matching import static_shapes
from brr.backends.openvino.lowering.nodes import LOWERED_DOMAIN, PROJECTED_SCAN, SCAN
from brr.backends.openvino.lowering.rewrite import Rewrite, Target

PHASE_DILATION = phases.PHASE_DILATION
PROJECTED_MAX_FEATURES = in_projection.PROJECTED_MAX_FEATURES
LOWERED_OP = SCAN.op_type
PROJECTED_OP = PROJECTED_SCAN.op_type

PASSES: tuple[Rewrite, ...] = (
    phases.REWRITE,
    scan_convolution.REWRITE,
    gated_norm.REWRITE,
    in_projection.REWRITE,
    out_projection.REWRITE,
    reversal.REWRITE,
    lift.REWRITE,
    summed_directions.REWRITE,
)


def lower_for_openvino(model: onnx.ModelProto, fp32_everywhere: bool, fp32_nodes: Iterable[str] = (),
                       scans: bool = True, passes: Sequence[Rewrite] = PASSES
                       ) -> tuple[onnx.ModelProto, dict[str, int]]:
    """A copy of ``model`` lowered by ``passes`` in order for an engine that runs every node in fp32
    (``fp32_everywhere``) or those of ``fp32_nodes``; without ``scans`` (standard-op graphs), the rewrites
    that need brr's extension are skipped. Returns the copy and each rewrite's count, by its setting."""
    lowered = ir.from_proto(model)
    target = Target(static_shapes(model), fp32_everywhere, frozenset(fp32_nodes))
    counts = {rewrite.setting: rewrite.run(lowered.graph, target) if scans or not rewrite.needs_extension
              else 0 for rewrite in passes}
    if any(node.domain == LOWERED_DOMAIN for node in lowered.graph):
        lowered.opset_imports[LOWERED_DOMAIN] = 1
    return ir.to_proto(lowered), counts
