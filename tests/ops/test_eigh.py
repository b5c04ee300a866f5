"""brr::eigh: every implementation (standard-op ONNX, ORT custom kernel, fp16 ONNX, the OpenVINO extension's
Jacobi kernel, TensorRT plugin) held to the reference (LAPACK through torch.linalg.eigh, in float64), plus
its gradient."""

from __future__ import annotations

import functools
import itertools
import sys

import numpy as np
import onnx
import onnxruntime as ort
import onnxruntime_extensions
import pytest
import torch
from onnxruntime.transformers.float16 import convert_float_to_float16

from brr.ops import registry
from brr.ops.eigh import eigh, eigh_reference
from brr.ops.eigh import onnx as eigh_onnx
from brr.ops.eigh import ort as eigh_ort  # noqa: F401  (registers the custom-node kernel)
from brr.ops.eigh import trt as eigh_trt
from brr.ops.eigh.compare import eigenspace_projectors

N = 19


class _Eigh(torch.nn.Module):
    def forward(self, a):
        return eigh(a)


def _export(mode: str, n: int, fp16: bool = False) -> onnx.ModelProto:
    program = torch.onnx.export(
        _Eigh().eval(),
        (torch.randn(2, 3, n, n),),
        dynamo=True,
        opset_version=registry.ONNX_OPSET,
        custom_translation_table=eigh_onnx.translations(mode),
        verbose=False,
        dynamic_shapes=({0: torch.export.Dim("batch"), 1: torch.export.Dim("graphs")},),
    )
    model = program.model_proto
    return convert_float_to_float16(model, keep_io_types=True) if fp16 else model


@functools.cache  # an export takes seconds; every test of a (mode, n, fp16) shares one
def _model(mode: str, n: int = N, fp16: bool = False) -> onnx.ModelProto:
    return _export(mode, n, fp16)


def _run(a: np.ndarray, mode: str, fp16: bool = False) -> tuple[np.ndarray, np.ndarray]:
    options = ort.SessionOptions()
    options.register_custom_ops_library(onnxruntime_extensions.get_library_path())
    model = _model(mode, a.shape[-1], fp16)
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    values, vectors = session.run(None, {session.get_inputs()[0].name: a.astype(np.float32)})
    return values, vectors


def _all_nodes(graph: onnx.GraphProto):
    for node in graph.node:
        yield node
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.GRAPH:
                yield from _all_nodes(attribute.g)


# ---------------------------------------------------------------------------------------- inputs


def _random_symmetric(rng, shape, n=N):
    x = rng.standard_normal((*shape, n, n))
    return (x + np.swapaxes(x, -1, -2)) / 2


def _with_spectrum(rng, values):
    q, _ = np.linalg.qr(rng.standard_normal((*values.shape, values.shape[-1])))
    return np.einsum("...ij,...j,...kj->...ik", q, values, q)


def _model_laplacians(rng, shape, n=N, isolated_fraction=0.15):
    """Exactly what the model builds: L = I - D^-1/2 A D^-1/2 + 1e-4 I, A symmetric non-negative with
    the top 3 weights per row kept, isolated nodes (no edge left) carrying a self-loop A_ii = 1."""
    w = rng.random((*shape, n, n))
    np.einsum("...ii->...i", w)[...] = 0
    keep = w >= np.sort(w, axis=-1)[..., max(n - 3, 0), None]
    a = np.where(keep, w, 0.0)
    a = np.maximum(a, np.swapaxes(a, -1, -2))
    cut = rng.random((*shape, n)) < isolated_fraction
    a = a * ~cut[..., :, None] * ~cut[..., None, :]
    isolated = a.sum(-1) == 0
    np.einsum("...ii->...i", a)[...] += isolated
    inv_sqrt_degree = 1 / np.sqrt(a.sum(-1))
    return np.eye(n) - inv_sqrt_degree[..., :, None] * a * inv_sqrt_degree[..., None, :] + 1e-4 * np.eye(n)


def _disconnected_laplacians(rng, count, n=N):
    """Block-diagonal: several connected components, so eigenvalue 1e-4 repeats once per component."""
    out = np.zeros((count, n, n))
    for b in range(count):
        bounds = np.concatenate([[0], np.sort(rng.choice(np.arange(1, n), 4, replace=False)), [n]])
        for lo, hi in itertools.pairwise(bounds):
            out[b, lo:hi, lo:hi] = _model_laplacians(rng, (), hi - lo, isolated_fraction=0.0)
    return out


def _cases(rng):
    repeated = np.repeat(rng.random((6, 5)) * 2, 4, axis=-1)[:, :N]
    return {
        "random": _random_symmetric(rng, (3, 4)),
        "zero": np.zeros((2, 3, N, N)),
        "identity": np.broadcast_to(np.eye(N), (2, 3, N, N)),
        "disconnected": _disconnected_laplacians(rng, 12).reshape(2, 6, N, N),
        "repeated": _with_spectrum(rng, np.sort(repeated, axis=-1)).reshape(2, 3, N, N),
        "model_laplacian": _model_laplacians(rng, (4, 16)),
    }


# ------------------------------------------------------------------------------------ comparison


def _errors(a, values, vectors, cluster_tol):
    """(eigenvalue error, eigenspace-projector error, orthonormality error) against float64 LAPACK."""
    ref_values, ref_vectors = (t.numpy() for t in eigh_reference(torch.from_numpy(np.array(a, np.float64))))
    assert values.shape == ref_values.shape and vectors.shape == ref_vectors.shape
    assert np.isfinite(values).all() and np.isfinite(vectors).all()
    value_error = np.abs(values - ref_values).max()
    projector_error = np.abs(
        eigenspace_projectors(ref_values, vectors, cluster_tol)
        - eigenspace_projectors(ref_values, ref_vectors, cluster_tol)
    ).max()
    gram = np.swapaxes(vectors, -1, -2).astype(np.float64) @ vectors
    return value_error, projector_error, np.abs(gram - np.eye(a.shape[-1])).max()


CASES = ("random", "zero", "identity", "disconnected", "repeated", "model_laplacian")


@pytest.fixture(scope="module")
def cases():
    built = _cases(np.random.default_rng(0))
    assert tuple(built) == CASES
    return built


@pytest.mark.parametrize("mode", ["standard", "plugin"])
@pytest.mark.parametrize("case", CASES)
def test_fp32_matches_lapack(cases, mode, case):
    a = cases[case].astype(np.float32)
    values, vectors = _run(a, mode)
    value_error, projector_error, orthonormality_error = _errors(a, values, vectors, cluster_tol=1e-3)
    assert value_error < 1e-4
    assert projector_error < 1e-4
    assert orthonormality_error < 2e-5


@pytest.fixture(scope="module")
def openvino_plugin_model(tmp_path_factory):
    import openvino as ov

    extension = str(registry.openvino_extension())
    path = tmp_path_factory.mktemp("eigh") / "plugin.onnx"
    onnx.save(_model("plugin"), str(path))
    converted = ov.convert_model(str(path), extension=[extension])
    assert [op.get_type_name() for op in converted.get_ordered_ops() if op.get_type_name() == "SymmetricEigh"]
    core = ov.Core()
    core.add_extension(extension)
    return core.compile_model(converted, "CPU")


@pytest.mark.parametrize("case", CASES)
def test_openvino_extension_matches_lapack(cases, openvino_plugin_model, case):
    a = cases[case].astype(np.float32)
    values, vectors = openvino_plugin_model({0: a}).values()
    value_error, projector_error, orthonormality_error = _errors(a, values, vectors, cluster_tol=1e-3)
    assert value_error < 1e-4
    assert projector_error < 1e-4
    assert orthonormality_error < 2e-5


def test_fp16_standard_is_finite_and_close(cases):
    for case, a in cases.items():
        values, vectors = _run(a.astype(np.float32), "standard", fp16=True)
        scale = max(1.0, np.abs(a).max())
        value_error, projector_error, orthonormality_error = _errors(a, values, vectors, cluster_tol=0.1)
        assert value_error < 2e-2 * scale, case
        assert projector_error < 5e-2, case
        assert orthonormality_error < 3e-2, case


@pytest.mark.parametrize("mode", ["standard", "plugin"])
def test_reads_only_the_lower_triangle(mode):
    rng = np.random.default_rng(1)
    a = rng.standard_normal((2, 3, N, N)).astype(np.float32)
    values, vectors = _run(a, mode)
    symmetrised = np.tril(a) + np.swapaxes(np.tril(a, -1), -1, -2)
    value_error, projector_error, _ = _errors(symmetrised, values, vectors, cluster_tol=1e-3)
    assert value_error < 1e-4 and projector_error < 1e-4


@pytest.mark.parametrize("n", [1, 4, 5])
def test_standard_small_sizes(n):
    rng = np.random.default_rng(n)
    a = np.concatenate([_random_symmetric(rng, (2, 3), n), np.zeros((1, 3, n, n))]).astype(np.float32)
    values, vectors = _run(a, "standard")
    value_error, projector_error, orthonormality_error = _errors(a, values, vectors, cluster_tol=1e-3)
    assert value_error < 1e-5 and projector_error < 1e-5 and orthonormality_error < 1e-6


def test_standard_graph_uses_only_standard_ops():
    model = _model("standard")
    onnx.checker.check_model(model, full_check=True)
    assert {opset.domain for opset in model.opset_import} <= {"", "ai.onnx"}
    nodes = list(_all_nodes(model.graph))
    assert all(node.domain in ("", "ai.onnx") for node in nodes)
    assert [node.op_type for node in nodes].count("Loop") == 1


def test_plugin_graph_is_one_custom_node():
    model = _model("plugin")
    custom = [node for node in model.graph.node if node.domain not in ("", "ai.onnx")]
    assert len(custom) == 1
    (node,) = custom
    assert (node.domain, node.op_type) == ("ai.onnx.contrib", "SymmetricEigh")
    assert len(node.input) == 1 and len(node.output) == 2
    attributes = {attribute.name: onnx.helper.get_attribute_value(attribute) for attribute in node.attribute}
    assert attributes == {"plugin_namespace": b"brr"}


def test_translations_cover_every_registry_mode():
    for mode in registry.OPS_MODES:
        assert set(eigh_onnx.translations(mode)) == {torch.ops.brr.eigh.default}
    with pytest.raises(ValueError):
        eigh_onnx.translations("fast")


def test_round_robin_meets_every_pair_once():
    for n in (2, 4, 5, 19):
        rounds = eigh_onnx.round_robin_schedule(n)
        pairs = [pair for round_pairs in rounds for pair in round_pairs]
        assert sorted(pairs) == [(p, q) for p in range(n) for q in range(p + 1, n)]
        assert all(
            len({i for pair in round_pairs for i in pair}) == 2 * len(round_pairs) for round_pairs in rounds
        )


# ---------------------------------------------------------------------------------------- gradient


def _sign_invariant_loss(a, weights):
    values, vectors = eigh(a)
    return (values * weights[0]).sum() + (vectors.square() * weights).sum()


def test_gradcheck_float64():
    rng = np.random.default_rng(2)
    x = torch.tensor(_random_symmetric(rng, (2,), 5), requires_grad=True)
    weights = torch.tensor(rng.standard_normal((5, 5)))
    # Symmetrising inside keeps finite differences on the symmetric manifold the gradient lives on.
    assert torch.autograd.gradcheck(lambda x: _sign_invariant_loss((x + x.mT) / 2, weights), (x,))


def test_backward_is_finite_on_degenerate_matrix():
    a = torch.diag(torch.tensor([1.0, 1.0, 1.0, 2.0, 2.0], dtype=torch.float64)).requires_grad_(True)
    _sign_invariant_loss(a, torch.arange(25.0, dtype=torch.float64).reshape(5, 5)).backward()
    assert torch.isfinite(a.grad).all()


# ---------------------------------------------------------------------------------------- TensorRT


def test_trt_output_shapes_and_dtypes():
    assert eigh_trt.output_shapes((4, 192, 19, 19)) == ((4, 192, 19), (4, 192, 19, 19))
    assert eigh_trt.output_shapes([7, 7]) == ((7,), (7, 7))
    symbolic = ("batch", "graphs", 19, 19)
    assert eigh_trt.output_shapes(symbolic) == (("batch", "graphs", 19), symbolic)
    with pytest.raises(ValueError):
        eigh_trt.output_shapes((19,))
    with pytest.raises(ValueError):
        eigh_trt.output_shapes((2, 19, 18))
    assert eigh_trt.output_dtypes("float32") == ("float32", "float32")


def test_trt_plugin_id_matches_the_onnx_node():
    (node,) = [node for node in _model("plugin").graph.node if node.domain == "ai.onnx.contrib"]
    namespace = next(a.s.decode() for a in node.attribute if a.name == "plugin_namespace")
    # TensorRT's ONNX parser looks the plugin up by (op_type, plugin_namespace attribute).
    assert eigh_trt.PLUGIN_ID == f"{namespace}::{node.op_type}"


def test_register_plugin_without_tensorrt_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt.plugin", None)
    monkeypatch.setattr(eigh_trt, "_registered", False)
    with pytest.raises(ImportError, match=r"pip install \.\[gpu\]"):
        eigh_trt.register_plugin()


@pytest.mark.gpu
def test_trt_engine_matches_lapack(tmp_path):
    trt = pytest.importorskip("tensorrt", reason="TensorRT is not installed (pip install .[gpu])")
    if not torch.cuda.is_available():
        pytest.skip("TensorRT engine test needs CUDA")
    eigh_trt.register_plugin()
    path = tmp_path / "eigh_plugin.onnx"
    onnx.save(_model("plugin"), path)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    assert parser.parse_from_file(str(path)), [str(parser.get_error(i)) for i in range(parser.num_errors)]
    input_name = network.get_input(0).name
    config = builder.create_builder_config()
    profile = builder.create_optimization_profile()
    profile.set_shape(input_name, (1, 1, N, N), (4, 192, N, N), (8, 192, N, N))
    config.add_optimization_profile(profile)
    runtime = trt.Runtime(logger)
    engine = runtime.deserialize_cuda_engine(builder.build_serialized_network(network, config))
    context = engine.create_execution_context()

    a = _model_laplacians(np.random.default_rng(3), (4, 192)).astype(np.float32)
    buffers = {input_name: torch.from_numpy(a).cuda()}
    context.set_input_shape(input_name, tuple(a.shape))
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    for name in names:
        if name not in buffers:
            buffers[name] = torch.empty(tuple(context.get_tensor_shape(name)), device="cuda")
        context.set_tensor_address(name, buffers[name].data_ptr())
    stream = torch.cuda.current_stream()
    assert context.execute_async_v3(stream.cuda_stream)
    stream.synchronize()
    values, vectors = (buffers[name].cpu().numpy() for name in names if name != input_name)
    value_error, projector_error, _ = _errors(a, values, vectors, cluster_tol=1e-3)
    assert value_error < 1e-4 and projector_error < 1e-4
