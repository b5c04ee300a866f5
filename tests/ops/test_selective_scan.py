"""Every implementation of ``brr::selective_scan`` held to ``reference.ssd_chunked``.

The reference itself is proven against the step recurrence in float64; then the native CPU kernel behind
the PyTorch op (forward and every gradient, float32 / float16 / bfloat16 storage, model-like and odd
shapes), the standard ONNX graph (float32 and float16-converted), the custom-node graph run by the ONNX
Runtime Python op (native compute), the OpenVINO extension on that graph (f32 and a bf16 hint) and on the
node OpenVINO engines lower Mamba-2's convolution and gated norm into (both applied by the kernel), the
Triton kernels (forward and backward in Triton's interpreter; their PTX and launch limits for every target) and
the TensorRT plugin (logic always, engines on a GPU with TensorRT) are compared with it.
"""

from __future__ import annotations

import importlib
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import onnxruntime_extensions
import pytest
import torch
import torch.nn.functional as F
from onnxruntime.transformers.float16 import convert_float_to_float16

from brr.backends import EngineBuildError
from brr.model.config import PRESETS
from brr.ops import ptx, registry, trt_plugin
from brr.ops.selective_scan import native, selective_scan, ssd_chunked, ssd_recurrent
from brr.ops.selective_scan.onnx import INPUT_NAMES

# The op folder's translation, kernel and plugin modules, by name.
scan_onnx = importlib.import_module("brr.ops.selective_scan.onnx")
scan_ort = importlib.import_module("brr.ops.selective_scan.ort")
scan_trt = importlib.import_module("brr.ops.selective_scan.trt")

HEADS, HEAD_DIM, GROUPS, STATE = 4, 4, 2, 8
# (batch, length) per run: dynamic batch, a length that is no multiple of either chunk size, the
# model's window (960) and a long recording (15360).
RUN_SIZES = [(3, 100), (2, 960), (1, 15360)]


def random_scan_inputs(b, length, h=HEADS, p=HEAD_DIM, g=GROUPS, n=STATE, seed=0, dtype=torch.float32):
    """Inputs distributed like a Mamba-2 block's: raw dt around the bias, A = -exp(U[0, log 16])."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(b, length, h, p, generator=gen, dtype=dtype)
    dt = torch.randn(b, length, h, generator=gen, dtype=dtype)
    B = torch.randn(b, length, g, n, generator=gen, dtype=dtype)
    C = torch.randn(b, length, g, n, generator=gen, dtype=dtype)
    A = -torch.exp(torch.rand(h, generator=gen, dtype=dtype) * math.log(16))
    D = torch.rand(h, generator=gen, dtype=dtype)
    log_lo, log_hi = math.log(1e-3), math.log(0.1)
    dt0 = torch.exp(torch.rand(h, generator=gen, dtype=dtype) * (log_hi - log_lo) + log_lo)
    dt_bias = dt0 + torch.log(-torch.expm1(-dt0))  # softplus(dt_bias) = dt0, as Mamba-2 initialises it
    return x, dt, A, B, C, D, dt_bias


class TwoScans(torch.nn.Module):
    """Two op calls: the model's configuration, then one without D/dt_bias/softplus and another chunk."""

    def __init__(self):
        super().__init__()
        _, _, A, _, _, D, dt_bias = random_scan_inputs(1, 1, seed=1)
        self.A, self.D, self.dt_bias = (torch.nn.Parameter(t) for t in (A, D, dt_bias))

    def forward(self, x, dt, B, C):
        y = selective_scan(x, dt, self.A, B, C, self.D, self.dt_bias, True, 64)
        return selective_scan(y, F.softplus(dt + self.dt_bias), self.A, B, C, None, None, False, 16)


def two_scans_reference(module: TwoScans, x, dt, B, C) -> np.ndarray:
    with torch.no_grad():
        A, D, dt_bias = (t.double() for t in (module.A, module.D, module.dt_bias))
        x, dt, B, C = (t.double() for t in (x, dt, B, C))
        y = ssd_chunked(x, dt, A, B, C, D, dt_bias, True, 64)
        return ssd_chunked(y, F.softplus(dt + dt_bias), A, B, C, None, None, False, 16).numpy()


def relative_error(actual: np.ndarray, expected: np.ndarray) -> float:
    """Max error relative to the largest expected entry (absolute where everything expected is 0)."""
    return float(np.abs(actual.astype(np.float64) - expected).max() / max(np.abs(expected).max(), 1e-30))


@pytest.fixture(scope="module")
def module() -> TwoScans:
    return TwoScans().eval()


@pytest.fixture(scope="module")
def exported(module) -> dict[str, onnx.ModelProto]:
    """Both modes, exported as the pipeline does (opset 18, dynamo) with dynamic batch and length."""
    x, dt, _, B, C, _, _ = random_scan_inputs(2, 50)
    batch, length = torch.export.Dim("batch"), torch.export.Dim("length")
    models = {}
    for mode in registry.OPS_MODES:
        program = torch.onnx.export(
            module, (x, dt, B, C), dynamo=True, opset_version=registry.ONNX_OPSET,
            custom_translation_table=scan_onnx.translations(mode),
            dynamic_shapes=({0: batch, 1: length},) * 4, verbose=False,
        )
        models[mode] = program.model_proto
    return models


def feeds(model: onnx.ModelProto, b: int, length: int, seed: int = 2) -> tuple[dict, tuple]:
    x, dt, _, B, C, _, _ = random_scan_inputs(b, length, seed=seed)
    names = [i.name for i in model.graph.input]
    return dict(zip(names, (t.numpy() for t in (x, dt, B, C)))), (x, dt, B, C)


def plugin_session(model: onnx.ModelProto) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.register_custom_ops_library(onnxruntime_extensions.get_library_path())
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


# --- reference ------------------------------------------------------------------------------------


@pytest.mark.parametrize("chunk_size", [1, 7, 16, 64])
@pytest.mark.parametrize("optional", [True, False])
def test_chunked_reference_matches_recurrence(chunk_size, optional):
    x, dt, A, B, C, D, dt_bias = random_scan_inputs(2, 50, dtype=torch.float64)
    if not optional:
        D, dt_bias, dt = None, None, F.softplus(dt)
    expected = ssd_recurrent(x, dt, A, B, C, D, dt_bias, optional)
    actual = ssd_chunked(x, dt, A, B, C, D, dt_bias, optional, chunk_size)
    torch.testing.assert_close(actual, expected, rtol=0, atol=1e-10)


@pytest.mark.parametrize("chunk_size", [1, 7, 64])
def test_numpy_kernel_matches_reference_in_float64(chunk_size):
    args = random_scan_inputs(2, 50, dtype=torch.float64)
    expected = ssd_chunked(*args, True, chunk_size).numpy()
    actual = scan_ort.ssd_chunked_numpy(*(t.numpy() for t in args), True, chunk_size)
    np.testing.assert_allclose(actual, expected, rtol=0, atol=1e-10)


# --- native CPU kernel behind the PyTorch op ------------------------------------------------------

# (b, l, h, p, g, n): the node stream's and the edge stream's Mamba blocks (v3-small / v3 heads, head dims
# and state sizes) at odd lengths, several groups, a head wider than a tile, heads that leave a partial tile,
# one lane per head (a tile of 16 or more heads), and sizes with no compiled specialisation.
NATIVE_SHAPES = {
    "node": (3, 241, 8, 8, 1, 16),
    "node-v3": (2, 100, 16, 8, 1, 16),
    "edge": (5, 101, 8, 4, 1, 8),
    "groups": (2, 50, 4, 4, 2, 8),
    "wide-head": (2, 37, 3, 16, 1, 8),
    "partial-tile": (2, 45, 5, 4, 1, 16),
    "lane-per-head": (2, 29, 40, 1, 2, 4),
    "generic": (2, 33, 6, 3, 3, 5),
    "one-step": (2, 1, 8, 8, 1, 16),
}


def _need_native():
    if not native.available():
        pytest.fail(f"the native kernels are not built: {native.BUILD_HINT}")


def _native_and_reference(shape, optional, dtype, seed=3):
    """(native y and grads in float64, reference y and grads in float64) on the same (rounded) inputs."""
    b, length, h, p, g, n = shape
    inputs = list(random_scan_inputs(b, length, h, p, g, n, seed=seed, dtype=torch.float64))
    if not optional:
        inputs[1], inputs[5], inputs[6] = F.softplus(inputs[1]), None, None
    # Storage precision: x, dt, B, C in ``dtype``; A, D, dt_bias stay float32 as the model holds them.
    stored = [None if t is None else t.to(dtype if i in (0, 1, 3, 4) else torch.float32).requires_grad_(True)
              for i, t in enumerate(inputs)]
    exact = [None if t is None else t.detach().double().requires_grad_(True) for t in stored]
    grad_y = torch.randn(b, length, h, p, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64)
    results = []
    for args, run in ((stored, selective_scan), (exact, ssd_chunked)):
        y = run(*args, optional, 16)
        present = [t for t in args if t is not None]
        grads = torch.autograd.grad(y, present, grad_y.to(y.dtype))
        results.append((y.detach().double(), [gr.double() for gr in grads]))
    return results


@pytest.mark.parametrize("optional", [True, False], ids=["D-bias-softplus", "plain"])
@pytest.mark.parametrize("shape", list(NATIVE_SHAPES.values()), ids=list(NATIVE_SHAPES))
def test_native_float32_forward_and_gradients_match_reference(shape, optional):
    _need_native()
    (y, grads), (y_ref, grads_ref) = _native_and_reference(shape, optional, torch.float32)
    assert relative_error(y.numpy(), y_ref.numpy()) < 1e-5
    names = [n for n, present in zip(INPUT_NAMES, [True] * 5 + [optional] * 2) if present]
    assert len(grads) == len(names)
    for name, grad, expected in zip(names, grads, grads_ref):
        assert relative_error(grad.numpy(), expected.numpy()) < 1e-5, name


@pytest.mark.parametrize(("dtype", "tolerance"), [(torch.float16, 3e-3), (torch.bfloat16, 2e-2)])
@pytest.mark.parametrize("shape", [NATIVE_SHAPES["node"], NATIVE_SHAPES["edge"]], ids=["node", "edge"])
def test_native_low_precision_storage_matches_reference(shape, dtype, tolerance):
    # fp32 inside, so the error is the storage rounding of y and of the gradients only.
    _need_native()
    (y, grads), (y_ref, grads_ref) = _native_and_reference(shape, True, dtype)
    assert relative_error(y.numpy(), y_ref.numpy()) < tolerance
    for name, grad, expected in zip(INPUT_NAMES, grads, grads_ref):
        assert relative_error(grad.numpy(), expected.numpy()) < tolerance, name


def test_native_output_keeps_the_storage_dtype():
    _need_native()
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        x, dt, A, B, C, D, dt_bias = random_scan_inputs(2, 20)
        y = selective_scan(x.to(dtype), dt.to(dtype), A, B.to(dtype), C.to(dtype), D, dt_bias)
        assert y.dtype == dtype and y.shape == x.shape


def test_native_propagates_nan_where_the_reference_does():
    # A NaN step size poisons its head from that step on; no other head, no earlier step.
    _need_native()
    x, dt, A, B, C, D, dt_bias = random_scan_inputs(2, 60, h=8, p=8, g=1, n=16)
    dt[1, 30, 5] = float("nan")
    y = selective_scan(x, dt, A, B, C, D, dt_bias, True, 16)
    expected = ssd_recurrent(x.double(), dt.double(), A.double(), B.double(), C.double(), D.double(),
                             dt_bias.double(), True)
    assert torch.equal(torch.isnan(y), torch.isnan(expected))
    assert torch.isnan(y[1, 30:, 5]).all() and not torch.isnan(y[1, :30]).any() and not torch.isnan(y[0]).any()


def test_reference_switch_and_missing_native_fall_back_to_the_reference(monkeypatch):
    args = random_scan_inputs(2, 40, h=8, p=8, g=1, n=16)
    expected = ssd_chunked(*args, True, 16)
    monkeypatch.setenv(native.KERNEL_ENV, "reference")
    assert torch.equal(selective_scan(*args, True, 16), expected)
    monkeypatch.delenv(native.KERNEL_ENV)
    monkeypatch.setattr(native, "_native", None)
    assert not native.enabled()
    assert torch.equal(selective_scan(*args, True, 16), expected)
    with pytest.raises(native.NativeKernelMissing, match=r"pip install -e \."):
        native.require()
    with pytest.raises(native.NativeKernelMissing, match="not built"):
        registry.openvino_extension()
    from brr.backends.openvino.loader import openvino_extensions

    with pytest.raises(EngineBuildError, match="plugin-mode export needs brr's extension"):
        openvino_extensions("plugin")
    assert openvino_extensions("standard") == []


def test_native_rejects_inconsistent_buffers():
    _need_native()
    x, dt, A, B, C, D, dt_bias = (t.numpy() for t in random_scan_inputs(2, 20))
    kernel = native.require()
    with pytest.raises(ValueError, match="dt must be"):
        kernel.forward(x, dt[:, :10], A, B, C, D, dt_bias, np.empty_like(x), True, 1)
    with pytest.raises(TypeError, match="share one dtype"):
        kernel.forward(x, dt.astype(np.float16), A, B, C, D, dt_bias, np.empty_like(x), True, 1)
    with pytest.raises(ValueError, match="multiple of groups"):
        kernel.forward(x[:, :, :3], dt[:, :, :3], A[:3], B, C, D[:3], dt_bias[:3], np.empty_like(x[:, :, :3]), True, 1)


def test_native_silu_matches_torch_across_the_range_and_blocks():
    # The SiLU that the fused convolution and gated norm apply (its own exp): within 2 ulp of torch's in float64
    # from the exp's underflow (-87) past its overflow (88); NaN, +inf and -0 kept by the vector path (first)
    # and by the scalar tail (last: a length that is no multiple of the vector); every thread's block written.
    _need_native()
    kernel = native.require()
    special = [np.nan, np.inf, -0.0]
    x = np.concatenate([special, np.linspace(-100, 100, 200_003), special]).astype(np.float32)
    out = np.full_like(x, 7.0)
    kernel.silu(x, out, 2)
    expected = torch.nn.functional.silu(torch.from_numpy(x).double()).numpy()
    finite = np.isfinite(expected)
    assert np.allclose(out[finite], expected[finite], rtol=2.5e-7, atol=1e-30)
    for at in (slice(0, 3), slice(-3, None)):
        assert np.isnan(out[at][0]) and out[at][1] == np.inf and out[at][2] == 0
    with pytest.raises(ValueError, match="out must be float32"):
        kernel.silu(x, np.empty(x.size - 1, np.float32), 1)


# --- ONNX graphs ----------------------------------------------------------------------------------


def test_translations_follow_the_registry_contract():
    for mode in registry.OPS_MODES:
        table = scan_onnx.translations(mode)
        op = torch.ops.brr.selective_scan.default
        assert list(table) == [op] and callable(table[op])
    with pytest.raises(ValueError, match="mode"):
        scan_onnx.translations("fused")


def test_standard_graph_has_only_standard_ops(exported):
    model = exported["standard"]
    assert not model.functions
    assert {node.domain for node in model.graph.node} <= {"", "ai.onnx"}
    assert not {"Loop", "Scan", "If"} & {node.op_type for node in model.graph.node}
    onnx.checker.check_model(model, full_check=True)


def test_plugin_graph_has_one_custom_node_per_call(exported):
    model = exported["plugin"]
    custom = [node for node in model.graph.node if node.domain not in ("", "ai.onnx")]
    assert [(node.domain, node.op_type) for node in custom] == [(scan_onnx.DOMAIN, scan_onnx.OP_TYPE)] * 2
    assert not {"Loop", "Scan"} & {node.op_type for node in model.graph.node}
    attributes = [{a.name: onnx.helper.get_attribute_value(a) for a in node.attribute} for node in custom]
    common = {"plugin_namespace": b"brr", "plugin_version": b"1"}
    assert attributes == [
        {"dt_softplus": 1, "chunk_size": 64, **common},
        {"dt_softplus": 0, "chunk_size": 16, **common},
    ]
    assert all(len(node.input) == len(scan_onnx.INPUT_NAMES) and all(node.input) for node in custom)


@pytest.mark.parametrize(("b", "length"), RUN_SIZES)
def test_standard_onnx_fp32_matches_reference(exported, module, b, length):
    session = ort.InferenceSession(
        exported["standard"].SerializeToString(), providers=["CPUExecutionProvider"]
    )
    feed, tensors = feeds(exported["standard"], b, length)
    (y,) = session.run(None, feed)
    assert y.dtype == np.float32 and y.shape == (b, length, HEADS, HEAD_DIM)
    assert relative_error(y, two_scans_reference(module, *tensors)) < 1e-5


@pytest.mark.parametrize(("b", "length"), RUN_SIZES)
def test_plugin_onnx_fp32_with_ort_kernel_matches_reference(exported, module, b, length):
    feed, tensors = feeds(exported["plugin"], b, length)
    (y,) = plugin_session(exported["plugin"]).run(None, feed)
    assert y.dtype == np.float32 and y.shape == (b, length, HEADS, HEAD_DIM)
    assert relative_error(y, two_scans_reference(module, *tensors)) < 1e-5


@pytest.fixture(scope="module")
def openvino_plugin_model(exported, tmp_path_factory):
    """The plugin graph converted by OpenVINO's ONNX frontend with brr's extension, as brr-export does."""
    import openvino as ov

    extension = str(registry.openvino_extension())
    path = tmp_path_factory.mktemp("scan") / "plugin.onnx"
    onnx.save(exported["plugin"], str(path))
    converted = ov.convert_model(str(path), extension=[extension])
    assert [op.get_type_name() for op in converted.get_ordered_ops()].count("SelectiveScan") == 2
    xml = path.with_suffix(".xml")
    ov.save_model(converted, str(xml), compress_to_fp16=False)
    return xml, extension


@pytest.mark.parametrize("hint", ["f32", "bf16"])
@pytest.mark.parametrize(("b", "length"), RUN_SIZES)
def test_plugin_onnx_with_openvino_extension_matches_reference(exported, module, openvino_plugin_model, hint, b,
                                                               length):
    import openvino as ov

    from brr.backends.openvino.loader import compile_model

    xml, extension = openvino_plugin_model
    core = ov.Core()
    core.add_extension(extension)  # the IR names the extension's operation: reading it needs the library
    compiled = compile_model(core, str(xml), "CPU", {"INFERENCE_PRECISION_HINT": hint})
    feed, tensors = feeds(exported["plugin"], b, length)
    y = compiled(feed)[0]
    assert y.shape == (b, length, HEADS, HEAD_DIM)
    # The extension's operation computes in float32 under a bf16 hint too: the scan keeps fp32 accuracy.
    assert relative_error(y, two_scans_reference(module, *tensors)) < 1e-5


CONV_WIDTH = 4


NORM_EPS = 1e-5


def lowered_scan_model(h, p, g, n, with_norm, seed=5, reversed_=False) -> tuple[onnx.ModelProto, dict[str, torch.Tensor]]:
    """A graph of one ``Mamba2Scan`` node (what ``lower_for_openvino`` makes of Mamba-2's convolution, scan
    and, ``with_norm``, gated norm; backwards in time when ``reversed_``), its parameters as initializers;
    returns it and the parameters."""
    from onnx import TensorProto, helper, numpy_helper

    from brr.backends.openvino.lowering import LOWERED_DOMAIN, LOWERED_OP
    from brr.ops.selective_scan.lowered_inputs import SCAN_INPUTS, Part

    _, _, A, _, _, D, dt_bias = random_scan_inputs(1, 1, h=h, p=p, g=g, n=n, seed=seed)
    gen = torch.Generator().manual_seed(seed)
    params = {"A": A, "D": D, "dt_bias": dt_bias}
    for name, channels in (("x", h * p), ("B", g * n), ("C", g * n)):
        params[f"{name}_conv_weight"] = torch.randn(channels, 1, CONV_WIDTH, generator=gen) * 0.5
        params[f"{name}_conv_bias"] = torch.randn(channels, generator=gen) * 0.5
    if with_norm:
        params["norm_weight"] = torch.rand(h * p, generator=gen) + 0.5
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", "l", h, p]),
              helper.make_tensor_value_info("dt", TensorProto.FLOAT, ["b", "l", h]),
              helper.make_tensor_value_info("B", TensorProto.FLOAT, ["b", "l", g, n]),
              helper.make_tensor_value_info("C", TensorProto.FLOAT, ["b", "l", g, n])]
    # Inputs by the table's names (lowered_inputs.def): the graph's inputs and initializers are named so.
    order = [*SCAN_INPUTS.names_of(Part.SCAN), *SCAN_INPUTS.names_of(Part.CONVOLUTION)]
    norm = {}
    if with_norm:
        inputs.append(helper.make_tensor_value_info("z", TensorProto.FLOAT, ["b", "l", h * p]))
        order += SCAN_INPUTS.names_of(Part.NORM)
        norm = {"norm_eps": NORM_EPS}
    node = helper.make_node(LOWERED_OP, order, ["y"], domain=LOWERED_DOMAIN, dt_softplus=1, chunk_size=64,
                            reversed=int(reversed_), **norm)
    graph = helper.make_graph([node], "lowered", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              initializer=[numpy_helper.from_array(t.numpy(), name) for name, t in params.items()])
    opsets = [helper.make_opsetid("", registry.ONNX_OPSET), helper.make_opsetid(LOWERED_DOMAIN, 1)]
    return helper.make_model(graph, opset_imports=opsets), params


def conv_then_scan_reference(params, x, dt, B, C, z=None) -> np.ndarray:
    """SiLU(causal depthwise conv) of x, B and C as Mamba-2 computes it, then the reference scan, then (with z)
    Mamba-2's gated RMS norm, in float64."""
    def conv_silu(t, name):
        b, length = t.shape[:2]
        flat = F.pad(t.double().reshape(b, length, -1).transpose(1, 2), (CONV_WIDTH - 1, 0))
        weight = params[f"{name}_conv_weight"].double()
        out = F.silu(F.conv1d(flat, weight, params[f"{name}_conv_bias"].double(), groups=weight.shape[0]))
        return out.transpose(1, 2).reshape(t.shape)

    with torch.no_grad():
        y = ssd_chunked(conv_silu(x, "x"), dt.double(), params["A"].double(), conv_silu(B, "B"), conv_silu(C, "C"),
                        params["D"].double(), params["dt_bias"].double(), True, 64)
        if z is not None:
            gated = y.reshape(z.shape) * F.silu(z.double())
            normed = gated * torch.rsqrt(gated.pow(2).mean(-1, keepdim=True) + NORM_EPS) * params["norm_weight"].double()
            y = normed.reshape(y.shape)
        return y.numpy()


# Two groups, and lanes and states that fill no vector (3 x 4 = 12 lanes per group, 2 x 5 = 10 B and C values);
# forwards and backwards in time.
@pytest.mark.parametrize(("with_norm", "reversed_"), [(False, False), (True, False), (False, True), (True, True)])
@pytest.mark.parametrize("hint", ["f32", "bf16"])
@pytest.mark.parametrize(("b", "length"), [(2, 2), *RUN_SIZES])
def test_openvino_lowered_mamba2_scan_matches_reference(with_norm, reversed_, hint, b, length, tmp_path):
    import openvino as ov

    from brr.backends.openvino.loader import compile_model

    h, p, g, n = 4, 3, 2, 5
    model, params = lowered_scan_model(h, p, g, n, with_norm, reversed_=reversed_)
    path = tmp_path / "lowered.onnx"
    onnx.save(model, str(path))
    extension = str(registry.openvino_extension())
    converted = ov.convert_model(str(path), extension=[extension])
    assert [op.get_type_name() for op in converted.get_ordered_ops()].count("SelectiveScan") == 1
    compiled = compile_model(ov.Core(), converted, "CPU", {"INFERENCE_PRECISION_HINT": hint})
    x, dt, _, B, C, _, _ = random_scan_inputs(b, length, h=h, p=p, g=g, n=n, seed=6)
    feed = {"x": x.numpy(), "dt": dt.numpy(), "B": B.numpy(), "C": C.numpy()}
    z = torch.randn(b, length, h * p, generator=torch.Generator().manual_seed(7)) * 2 if with_norm else None
    if with_norm:
        feed["z"] = z.numpy()
    y = compiled(feed)[0]
    assert y.shape == (b, length, h, p)
    if reversed_:  # flip(block(flip(inputs))): the norm pairs each step's y with that step's z
        x, dt, B, C, z = (None if t is None else t.flip(1) for t in (x, dt, B, C, z))
    expected = conv_then_scan_reference(params, x, dt, B, C, z)
    assert relative_error(y, np.flip(expected, 1) if reversed_ else expected) < 1e-5


@pytest.mark.parametrize("reversed_", [False, True])
def test_openvino_lowered_scan_carries_a_nan_forward_and_no_further(reversed_, tmp_path):
    """A NaN in one step of dt reaches that batch row's outputs from that step on in the scan's direction, and
    nothing before it or in another row; a NaN in one step of z (read in place, whatever the direction) only
    that step's outputs."""
    import openvino as ov

    from brr.backends.openvino.loader import compile_model

    h, p, g, n = 4, 3, 1, 5
    model, _ = lowered_scan_model(h, p, g, n, with_norm=True, reversed_=reversed_)
    path = tmp_path / "lowered.onnx"
    onnx.save(model, str(path))
    compiled = compile_model(ov.Core(), ov.convert_model(str(path), extension=[str(registry.openvino_extension())]))
    x, dt, _, B, C, _, _ = random_scan_inputs(3, 100, h=h, p=p, g=g, n=n, seed=6)
    z = torch.randn(3, 100, h * p, generator=torch.Generator().manual_seed(7))
    feed = {"x": x.numpy(), "dt": dt.numpy(), "B": B.numpy(), "C": C.numpy(), "z": z.numpy()}
    feed["dt"][0, 40, 1] = np.nan
    feed["z"][1, 70, 5] = np.nan
    y = compiled(feed)[0]
    reached, untouched = (y[0, :41], y[0, 41:]) if reversed_ else (y[0, 40:], y[0, :40])
    assert np.isnan(reached).all() and np.isfinite(untouched).all()
    assert np.isnan(y[1, 70]).all() and np.isfinite(np.delete(y[1], 70, axis=0)).all() and np.isfinite(y[2]).all()


@pytest.mark.parametrize("reversed_", [False, True])
def test_openvino_scan_stored_in_bf16_normalises_its_fp32_output(reversed_, tmp_path):
    """Typed bf16 (``brr.backends.openvino.scan_storage``), the lowered scan reads bf16 and writes bf16 but computes
    in fp32 throughout, its gated norm included: on bf16 values its output is the fp32 scan's, rounded once."""
    import openvino as ov

    from brr.backends.openvino.loader import compile_model
    from brr.backends.openvino.scan_storage import store_scans_in_bf16

    h, p, g, n = 4, 4, 2, 5
    model, _ = lowered_scan_model(h, p, g, n, with_norm=True, reversed_=reversed_)
    path = tmp_path / "lowered.onnx"
    onnx.save(model, str(path))
    extension = [str(registry.openvino_extension())]
    x, dt, _, B, C, _, _ = random_scan_inputs(2, 300, h=h, p=p, g=g, n=n, seed=6)
    z = torch.randn(2, 300, h * p, generator=torch.Generator().manual_seed(7))
    feed = {k: v.to(torch.bfloat16).float().numpy() for k, v in {"x": x, "dt": dt, "B": B, "C": C, "z": z}.items()}
    fp32 = compile_model(ov.Core(), ov.convert_model(str(path), extension=extension))(feed)[0]
    stored = ov.convert_model(str(path), extension=extension)
    assert store_scans_in_bf16(stored, [op.get_friendly_name() for op in stored.get_ordered_ops()
                                        if op.get_type_name() == "SelectiveScan"]) == 1
    scan = next(op for op in stored.get_ordered_ops() if op.get_type_name() == "SelectiveScan")
    assert scan.get_output_element_type(0) == ov.Type.bf16
    y = compile_model(ov.Core(), stored, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})(feed)[0]
    assert y.dtype == np.float32
    rounded = torch.from_numpy(fp32).to(torch.bfloat16).float().numpy()
    if "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
        np.testing.assert_array_equal(y, rounded)
    else:  # the plugin may run bf16 types as fp32 on a CPU without bf16: then nothing is rounded
        assert np.array_equal(y, rounded) or np.array_equal(y, fp32)


FEATURES = 7


def projected_scan_model(h, p, g, n, outputs=None, reversed_=False,
                         seed=5) -> tuple[onnx.ModelProto, dict[str, torch.Tensor]]:
    """A graph of one ``Mamba2ProjectedScan`` node (``lower_for_openvino``'s form of a narrow block): u's input
    projection, in mamba_ssm's [z | x | B | C | dt] order, then the convolution, scan and gated norm of
    ``lowered_scan_model``, then (``outputs``) the output projection, backwards in time when ``reversed_``;
    returns it and the parameters (``in_proj_weight`` and ``out_proj_weight`` the projections)."""
    from onnx import TensorProto, helper, numpy_helper

    from brr.backends.openvino.lowering import LOWERED_DOMAIN, PROJECTED_OP
    from brr.ops.selective_scan.lowered_inputs import PROJECTED_SCAN_INPUTS, Part

    lowered, params = lowered_scan_model(h, p, g, n, with_norm=True, seed=seed)
    params["in_proj_weight"] = torch.randn(FEATURES, 2 * h * p + 2 * g * n + h,
                                           generator=torch.Generator().manual_seed(seed + 1)) * 0.4
    order = list(PROJECTED_SCAN_INPUTS.names_of(Part.BLOCK))
    if outputs is not None:
        params["out_proj_weight"] = torch.randn(h * p, outputs,
                                                generator=torch.Generator().manual_seed(seed + 2)) * 0.3
        order += PROJECTED_SCAN_INPUTS.names_of(Part.OUT_PROJECTION)
    node = helper.make_node(PROJECTED_OP, order, ["y"], domain=LOWERED_DOMAIN, dt_softplus=1, chunk_size=64,
                            norm_eps=NORM_EPS, groups=g, reversed=int(reversed_))
    graph = helper.make_graph([node], "projected",
                              [helper.make_tensor_value_info("u", TensorProto.FLOAT, ["b", "l", FEATURES])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              initializer=[numpy_helper.from_array(t.numpy(), name) for name, t in params.items()])
    return helper.make_model(graph, opset_imports=list(lowered.opset_import)), params


# Two groups and one (38 projected columns, which fill no whole vector); without and with an output
# projection to 5 features (no whole vector either), forwards and backwards in time.
@pytest.mark.parametrize(("g", "outputs", "reversed_"), [(2, None, False), (1, None, True), (2, 5, False), (2, 5, True)])
@pytest.mark.parametrize("hint", ["f32", "bf16"])
@pytest.mark.parametrize(("b", "length"), [(2, 2), (3, 100), (2, 960)])
def test_openvino_projected_mamba2_scan_matches_reference(g, outputs, reversed_, hint, b, length, tmp_path):
    import openvino as ov

    from brr.backends.openvino.loader import compile_model

    h, p, n = 4, 3, 5
    model, params = projected_scan_model(h, p, g, n, outputs, reversed_)
    path = tmp_path / "projected.onnx"
    onnx.save(model, str(path))
    converted = ov.convert_model(str(path), extension=[str(registry.openvino_extension())])
    assert [op.get_type_name() for op in converted.get_ordered_ops()].count("ProjectedSelectiveScan") == 1
    compiled = compile_model(ov.Core(), converted, "CPU", {"INFERENCE_PRECISION_HINT": hint})
    u = torch.randn(b, length, FEATURES, generator=torch.Generator().manual_seed(8))
    y = compiled({"u": u.numpy()})[0]
    run = u.flip(1) if reversed_ else u  # the steps in the order the block runs them
    z, x, B, C, dt = torch.split(run.double() @ params["in_proj_weight"].double(), [h * p, h * p, g * n, g * n, h],
                                 dim=-1)
    expected = conv_then_scan_reference(params, x.reshape(b, length, h, p), dt, B.reshape(b, length, g, n),
                                        C.reshape(b, length, g, n), z)
    if outputs is not None:
        expected = expected.reshape(b, length, h * p) @ params["out_proj_weight"].double().numpy()
    if reversed_:
        expected = np.flip(expected, 1)
    assert y.shape == expected.shape == ((b, length, h, p) if outputs is None else (b, length, outputs))
    assert relative_error(y, expected) < 1e-5


@pytest.mark.parametrize("reversed_", [False, True])
def test_openvino_projected_scan_carries_a_nan_forward_and_no_further(reversed_, tmp_path):
    """A NaN in one step of u reaches that batch row's outputs from that step on in the block's direction
    (through the state) and nothing before it or in another row: the kernel's SiLU, exponentials and norm
    neither hide it nor spread it."""
    import openvino as ov

    from brr.backends.openvino.loader import compile_model

    model, _ = projected_scan_model(4, 3, 1, 5, outputs=6, reversed_=reversed_)
    path = tmp_path / "projected.onnx"
    onnx.save(model, str(path))
    compiled = compile_model(ov.Core(), ov.convert_model(str(path), extension=[str(registry.openvino_extension())]))
    u = torch.randn(2, 100, FEATURES, generator=torch.Generator().manual_seed(9)).numpy()
    u[0, 40, 3] = np.nan
    y = compiled({"u": u})[0]
    reached, untouched = (y[0, :41], y[0, 41:]) if reversed_ else (y[0, 40:], y[0, :40])
    assert np.isnan(reached).all() and np.isfinite(untouched).all() and np.isfinite(y[1]).all()


def test_plugin_onnx_needs_the_extensions_library(exported):
    with pytest.raises(Exception, match="SelectiveScan"):
        ort.InferenceSession(exported["plugin"].SerializeToString(), providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def standard_fp16_session(exported) -> ort.InferenceSession:
    # An all-fp16 graph (ONNX Runtime's own converter, no op kept fp32) runs CumSum in fp16 too, as a
    # float16 TensorRT engine would.
    model = convert_float_to_float16(onnx.ModelProto.FromString(exported["standard"].SerializeToString()),
                                     keep_io_types=True, op_block_list=[])
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {v.name: v.type.tensor_type.elem_type for v in inferred.graph.value_info}
    cumsums = [n.output[0] for n in inferred.graph.node if n.op_type == "CumSum"]
    assert cumsums and all(types[name] == onnx.TensorProto.FLOAT16 for name in cumsums)
    assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in model.graph.initializer)
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize(("b", "length"), RUN_SIZES)
def test_standard_onnx_fp16_is_finite_and_close(exported, module, standard_fp16_session, b, length):
    feed, tensors = feeds(exported["standard"], b, length)
    (y,) = standard_fp16_session.run(None, feed)
    assert np.isfinite(y).all()
    # Measured about 5e-4 of the output's range for these sizes.
    assert relative_error(y, two_scans_reference(module, *tensors)) < 5e-3


def test_standard_onnx_fp16_survives_overflowing_segment_sums(exported, standard_fp16_session):
    # Huge step sizes drive the cross-chunk segment sums past float16's range to -inf: the masked
    # exponentials must still give 0, never NaN.
    feed, _ = feeds(exported["standard"], 1, 15360)
    dt_name = [i.name for i in exported["standard"].graph.input][1]
    feed[dt_name] = feed[dt_name] * 3 + 8
    (y,) = standard_fp16_session.run(None, feed)
    assert np.isfinite(y).all()


# --- Triton kernels ------------------------------------------------------------------------------

# Triton decides whether a kernel runs in its interpreter when the kernel is decorated, and decorates its own
# library functions when it is imported; so the kernels run under TRITON_INTERPRET=1 in a child process (this
# file run as a script), once for all the cases below, and the tests read the errors it measured.
# (b, l, h, p, g, n): groups, a length one past a chunk (the kernels' chunk is 16 steps) and one of exactly
# two chunks, one step (two batch rows), a head dim split into three lane blocks, sizes no block fills, and
# v3-small's node and edge blocks. The interpreter takes about 10 ms per program and chunk forward and 25 ms
# backward: the shapes are small and the backward runs where it adds a case.
TRITON_SHAPES = {
    "groups": (1, 29, 4, 4, 2, 8),
    "chunk-plus-one": (1, 17, 2, 8, 1, 16),
    "two-chunks": (1, 32, 2, 8, 1, 16),
    "one-step": (2, 1, 4, 8, 1, 16),
    "lane-blocks": (1, 21, 2, 40, 1, 8),
    "generic": (1, 21, 6, 3, 3, 5),
    "node": (1, 24, 8, 8, 1, 16),
    "edge": (1, 24, 8, 4, 1, 8),
}
# (case, shape, with D / dt_bias / softplus, storage of x, dt, B, C, backward too).
TRITON_CASES = [
    *((name, name, True, "float32", name not in ("chunk-plus-one", "node", "edge")) for name in TRITON_SHAPES),
    ("groups-plain", "groups", False, "float32", True),
    ("groups-float16", "groups", True, "float16", True),
    ("lane-blocks-bfloat16", "lane-blocks", True, "bfloat16", True),
]
# The kernels compute in float32 and round only what they store (y and the gradients of x, dt, B, C) to the
# storage type. float16 stores round to nearest: at most u = 2^-11 of each entry, tolerance 2u. The
# interpreter truncates to bfloat16 (a GPU rounds to nearest): at most one ulp, 2^-7, tolerance 1e-2. In
# float32 y carries the rounding of the chunked sums (measured < 5e-7); the gradients of A and dt_bias sum
# b * l terms with cancellation (measured < 1e-5).
TRITON_TOLERANCES = {"float32": (1e-5, 1e-4), "float16": (1e-3, 1e-3), "bfloat16": (1e-2, 1e-2)}


def triton_interpreter_errors() -> dict[str, dict[str, object]]:
    """(In the child process.) Per case: relative errors of the interpreted kernels' y and gradients against the
    float64 recurrence on the same stored inputs and its autograd, and the dtypes they returned."""
    from brr.ops.selective_scan import triton as kernels

    assert kernels.CHUNK == 16, "TRITON_SHAPES' lengths are chosen around a chunk of 16 steps"
    errors = {}
    for case, shape, optional, storage, backward in TRITON_CASES:
        b, length, h, p, g, n = TRITON_SHAPES[shape]
        dtype = getattr(torch, storage)
        inputs = list(random_scan_inputs(b, length, h, p, g, n, seed=4, dtype=torch.float64))
        if not optional:
            inputs[1], inputs[5], inputs[6] = F.softplus(inputs[1]), None, None
        # x, dt, B, C in the storage type; A, D, dt_bias float32 as the model holds them.
        stored = [None if t is None else t.to(dtype if i in (0, 1, 3, 4) else torch.float32)
                  for i, t in enumerate(inputs)]
        exact = [None if t is None else t.double().requires_grad_(True) for t in stored]
        expected = ssd_recurrent(*exact, optional)
        y = kernels.selective_scan_forward(*stored, optional)
        result = {"y": relative_error(y.double().numpy(), expected.detach().numpy()), "dtypes": [str(y.dtype)]}
        if backward:
            grad_y = torch.randn(b, length, h, p, generator=torch.Generator().manual_seed(5)).to(dtype)
            names = [name for name, t in zip(INPUT_NAMES, exact) if t is not None]
            wanted = torch.autograd.grad(expected, [t for t in exact if t is not None], grad_y.double())
            grads = [gr for gr in kernels.selective_scan_backward(grad_y, *stored, optional) if gr is not None]
            for name, grad, want in zip(names, grads, wanted, strict=True):
                result[f"grad_{name}"] = relative_error(grad.double().numpy(), want.numpy())
            result["dtypes"] += [str(grad.dtype) for grad in grads]
        errors[case] = result
    return errors


@pytest.fixture(scope="module")
def triton_interpreted(tmp_path_factory) -> dict[str, dict[str, object]]:
    pytest.importorskip("triton", reason="triton is not installed (it comes with CUDA builds of torch)")
    out = tmp_path_factory.mktemp("triton") / "errors.json"
    child = subprocess.run([sys.executable, __file__, "--triton-interpreter", str(out)], check=False,
                           capture_output=True, text=True, env={**os.environ, "TRITON_INTERPRET": "1"}, timeout=600)
    if child.returncode:
        pytest.fail(f"the interpreted Triton kernels failed:\n{child.stderr[-6000:]}")
    return json.loads(out.read_text())


@pytest.mark.parametrize(("case", "shape", "optional", "storage", "backward"), TRITON_CASES,
                         ids=[c[0] for c in TRITON_CASES])
def test_triton_kernels_match_the_recurrence_in_the_interpreter(triton_interpreted, case, shape, optional,
                                                                storage, backward):
    result = triton_interpreted[case]
    y_tolerance, grad_tolerance = TRITON_TOLERANCES[storage]
    print(case, {k: v if isinstance(v, list) else f"{v:.1e}" for k, v in result.items()})
    assert result["y"] < y_tolerance
    grads = {k: v for k, v in result.items() if k.startswith("grad_")}
    names = [n for n, present in zip(INPUT_NAMES, [True] * 5 + [optional] * 2) if present]
    assert list(grads) == ([f"grad_{n}" for n in names] if backward else [])
    for name, error in grads.items():
        assert error < grad_tolerance, name
    # Outputs keep their input's dtype: y and dx x's, ddt, dB, dC the storage type, dA, dD, ddt_bias float32.
    stored = f"torch.{storage}"
    expected = [stored] + ([stored, stored, "torch.float32", stored, stored] + ["torch.float32"] * 2 * optional
                           if backward else [])
    assert result["dtypes"] == expected


def model_scans(preset: str) -> dict[str, tuple[int, tuple[int, int, int, int]]]:
    """Per stream of a preset: (scan rows per window, (heads, head dim, groups, state size)); the node stream
    scans each electrode, the edge stream each electrode pair, Mamba-2 with one group."""
    cfg = PRESETS[preset]
    return {stream: (rows, (m.expand * m.d_model // m.headdim, m.headdim, 1, m.d_state))
            for stream, m, rows in (("node", cfg.node_mamba, cfg.n_channels), ("edge", cfg.edge_mamba, cfg.n_edges))}


def entry_parameters(code: str) -> list[str]:
    """The PTX types of the kernel's parameters, in order (".u64 .ptr" for pointers)."""
    block = code[code.index(".entry"):code.index(")", code.index(".entry"))]
    return [re.sub(r"\s+", " ", m).strip() for m in re.findall(r"\.param\s+(\.\w+(?:\s+\.ptr)?)", block)]


@pytest.mark.parametrize("capability", ptx.TARGETS)
def test_triton_forward_ptx_launches_for_model_shapes(capability):
    """The AOT kernel compiles for every target, takes TensorRT's argument order (seven input pointers, l,
    the output pointer; Triton's unused scratch pointers after them), and launches over the grids of v3-small
    and v3 in float32 and float16 from one window to 512 (the edge stream's 87552 rows). The head count is
    read from the grid, so both presets share their streams' kernels."""
    pytest.importorskip("triton", reason="triton is not installed (it comes with CUDA builds of torch)")
    steps = PRESETS["v3"].steps
    for dtype in scan_trt.SUPPORTED_DTYPES:
        for preset in ("v3-small", "v3"):
            for stream, (rows, (heads, head_dim, groups, state)) in model_scans(preset).items():
                launch = scan_trt.aot_launch((rows, steps, heads, head_dim), (rows, steps, groups, state), dtype,
                                             True, capability)
                kernel = launch.kernel
                print(preset, stream, dtype, heads, "heads", kernel.describe())
                assert launch.grid == (rows, heads, 1) and launch.length == steps
                assert kernel.block == (128, 1, 1) and kernel.shared_bytes <= ptx.MAX_SHARED_BYTES[capability]
                parameters = entry_parameters(kernel.ptx)
                assert parameters[:9] == [".u64 .ptr"] * 7 + [".u32", ".u64 .ptr"] and len(parameters) <= 11
                for windows in (1, 8, 512):
                    ptx.check_launch(kernel, (rows * windows, heads, 1))


# --- TensorRT plugin ------------------------------------------------------------------------------


def test_trt_output_rule():
    x, dt, A, B, C, D, dt_bias = random_scan_inputs(3, 17)
    shapes = [tuple(t.shape) for t in (x, dt, A, B, C, D, dt_bias)]
    assert scan_trt.output_shape(shapes) == (3, 17, HEADS, HEAD_DIM)
    assert scan_trt.output_dtype(["float16"] * 7) == "float16"
    assert scan_trt.output_dtype(["float32"] * 7) == "float32"


@pytest.mark.parametrize(
    ("index", "shape"),
    [(0, (3, 17, 4)), (1, (3, 16, 4)), (2, (5,)), (3, (3, 17, 3, 8)), (4, (3, 17, 2, 7)), (6, (4, 1))],
)
def test_trt_output_rule_rejects_inconsistent_shapes(index, shape):
    shapes = [tuple(t.shape) for t in random_scan_inputs(3, 17)]
    shapes[index] = shape
    with pytest.raises(ValueError):
        scan_trt.output_shape(shapes)


@pytest.mark.parametrize("dtypes", [["float32"] * 6 + ["float16"], ["int32"] * 7, ["float32"] * 6])
def test_trt_output_rule_rejects_dtypes(dtypes):
    with pytest.raises(ValueError):
        scan_trt.output_dtype(dtypes)


def test_attribute_parsing():
    assert scan_onnx.parse_attributes(1, 64) == (True, 64)
    assert scan_onnx.parse_attributes(0, 16) == (False, 16)
    for bad in [(2, 64), (1, 0), (0, -3)]:
        with pytest.raises(ValueError):
            scan_onnx.parse_attributes(*bad)


def test_trt_plugin_id_matches_the_custom_node():
    assert scan_trt.PLUGIN_ID == f"{scan_onnx.PLUGIN_NAMESPACE}::{scan_onnx.OP_TYPE}" == "brr::SelectiveScan"


def test_trt_ptx_target_runs_on_the_build_gpu():
    assert [ptx.ptx_target(c) for c in (80, 86, 87, 89, 90, 100)] == [80, 86, 86, 89, 90, 100]
    # sm_90a / sm_100a PTX runs on its own capability only: later GPUs get the newest portable target.
    assert [ptx.ptx_target(c) for c in (103, 120)] == [89, 89]
    assert ptx.ptx_target(75) is None
    with pytest.raises(ptx.LaunchError, match="compute capability 75"):
        scan_trt.aot_launch((1, 10, 8, 8), (1, 10, 2, 16), "float32", True, 75)


def test_trt_registers_aot_only_where_a_kernel_can_be_built():
    for capability in ptx.TARGETS + (120,):
        assert trt_plugin.aot_supported(True, True, capability)
        assert not trt_plugin.aot_supported(False, True, capability)  # TensorRT without AOT plugins
        assert not trt_plugin.aot_supported(True, False, capability)  # no triton to compile the kernel
    assert not trt_plugin.aot_supported(True, True, None) and not trt_plugin.aot_supported(True, True, 75)


def test_trt_autotune_declares_one_type_for_all_io():
    assert scan_trt.type_combinations() == ", ".join(["FP32|FP16"] * 8)


def test_trt_aot_launch_takes_symbolic_batch_and_length_only():
    pytest.importorskip("triton", reason="triton is not installed (it comes with CUDA builds of torch)")
    batch, length = object(), object()  # stand-ins for TensorRT shape expressions
    launch = scan_trt.aot_launch((batch, length, 8, 40), (batch, length, 2, 16), "float32", False, 80)
    assert launch.grid == (batch, 8, 3) and launch.length is length  # 40 lanes: blocks of 16, 16 and 8
    with pytest.raises(ValueError, match="build-time head dim"):
        scan_trt.aot_launch((1, 10, 8, object()), (1, 10, 2, 16), "float32", True, 80)
    with pytest.raises(ValueError, match="divisible by groups"):
        scan_trt.aot_launch((1, 10, 6, 8), (1, 10, 4, 16), "float32", True, 80)
    with pytest.raises(ValueError, match="stores"):
        scan_trt.aot_launch((1, 10, 8, 8), (1, 10, 2, 16), "bfloat16", True, 80)


def test_cuda_kernel_choice(monkeypatch):
    from brr.ops.selective_scan import op

    f32, f64 = torch.zeros(1), torch.zeros(1, dtype=torch.float64)
    monkeypatch.delenv(native.KERNEL_ENV, raising=False)
    monkeypatch.setattr(op, "_mamba_scan", lambda: None)
    assert op.cuda_kernel((f32, f32.half())) is op.CudaKernel.TRITON
    assert op.cuda_kernel((f32, f64)) is op.CudaKernel.REFERENCE  # float64 storage: the reference
    monkeypatch.setattr(op, "_mamba_scan", lambda: object())
    assert op.cuda_kernel((f32,)) is op.CudaKernel.MAMBA_SSM
    monkeypatch.setenv(native.KERNEL_ENV, "triton")
    assert op.cuda_kernel((f32,)) is op.CudaKernel.TRITON
    monkeypatch.setenv(native.KERNEL_ENV, "reference")
    assert op.cuda_kernel((f32,)) is op.CudaKernel.REFERENCE
    monkeypatch.delenv(native.KERNEL_ENV)
    monkeypatch.setattr(op, "_mamba_scan", lambda: None)
    monkeypatch.setattr(op, "_triton_kernels", lambda: None)
    assert op.cuda_kernel((f32,)) is op.CudaKernel.REFERENCE


def test_register_plugin_names_the_missing_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # makes ``import tensorrt`` fail
    with pytest.raises(ImportError, match=r"pip install \.\[gpu\]"):
        scan_trt.register_plugin.__wrapped__()  # bypass the cache: a real registration may be cached


def _need_cuda():
    if not torch.cuda.is_available():
        pytest.skip("CUDA is not available")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_trt_kernel_body_on_cuda(dtype):
    _need_cuda()
    args = random_scan_inputs(2, 960, dtype=dtype)
    expected = ssd_chunked(*(t.double() for t in args), True, 64).numpy()
    inputs = [t.cuda() for t in args]
    output = torch.full_like(inputs[0], float("nan"))
    stream = torch.cuda.Stream()
    scan_trt.run_scan(inputs, output, 1, 64, stream.cuda_stream)
    stream.synchronize()
    assert relative_error(output.float().cpu().numpy(), expected) < (1e-5 if dtype == torch.float32 else 5e-3)


@pytest.mark.gpu
@pytest.mark.parametrize("implementation", list(trt_plugin.PluginImplementation), ids=lambda i: i.value)
@pytest.mark.parametrize("mode", registry.OPS_MODES)
def test_trt_engine_matches_reference(exported, module, mode, implementation):
    _need_cuda()
    trt = pytest.importorskip("tensorrt", reason="TensorRT is not installed (pip install .[gpu])")
    scan_trt.register_plugin()
    registered = trt_plugin.registered_implementations(scan_trt.PLUGIN_ID)
    if implementation not in registered:
        pytest.skip(f"this TensorRT (or a missing triton) registers {[i.value for i in registered]} only")
    flags = trt_plugin.preference_flag(trt, implementation)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    parsed = parser.parse(exported[mode].SerializeToString())
    assert parsed, [str(parser.get_error(i)) for i in range(parser.num_errors)]
    feed, tensors = feeds(exported[mode], 2, 960)
    config = builder.create_builder_config()
    profile = builder.create_optimization_profile()
    for name, value in feed.items():
        profile.set_shape(name, value.shape, value.shape, value.shape)
    config.add_optimization_profile(profile)
    engine_bytes = builder.build_serialized_network(network, config)
    assert engine_bytes is not None
    engine = trt.Runtime(logger).deserialize_cuda_engine(engine_bytes)
    context = engine.create_execution_context()
    buffers = {name: torch.from_numpy(value).cuda() for name, value in feed.items()}
    for name, tensor in buffers.items():
        context.set_input_shape(name, tuple(tensor.shape))
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        if engine.get_tensor_mode(name) == trt.TensorIOMode.OUTPUT:
            buffers[name] = torch.empty(tuple(context.get_tensor_shape(name)), device="cuda")
            output = buffers[name]
        context.set_tensor_address(name, buffers[name].data_ptr())
    stream = torch.cuda.current_stream()
    assert context.execute_async_v3(stream.cuda_stream)
    stream.synchronize()
    assert relative_error(output.cpu().numpy(), two_scans_reference(module, *tensors)) < 1e-4


if __name__ == "__main__":  # the child process of ``triton_interpreted``, under TRITON_INTERPRET=1
    if len(sys.argv) != 3 or sys.argv[1] != "--triton-interpreter":
        raise SystemExit(f"usage: TRITON_INTERPRET=1 python {sys.argv[0]} --triton-interpreter OUT.json")
    Path(sys.argv[2]).write_text(json.dumps(triton_interpreter_errors()))
