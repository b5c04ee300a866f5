"""brr::eigh: every implementation (standard-op ONNX, ORT custom kernel, fp16 ONNX, the OpenVINO extension's
Jacobi kernel, the Triton kernel in Triton's interpreter and as PTX, TensorRT plugin) held to the reference
(LAPACK through torch.linalg.eigh, in float64), plus its gradient."""

from __future__ import annotations

import functools
import itertools
import os
import re
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import onnxruntime_extensions
import pytest
import torch
from onnxruntime.transformers.float16 import convert_float_to_float16

from brr.model.config import PRESETS
from brr.ops import ptx, registry, trt_plugin
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

    from brr.backends.openvino.loader import compile_model

    extension = str(registry.openvino_extension())
    path = tmp_path_factory.mktemp("eigh") / "plugin.onnx"
    onnx.save(_model("plugin"), str(path))
    converted = ov.convert_model(str(path), extension=[extension])
    assert [op.get_type_name() for op in converted.get_ordered_ops() if op.get_type_name() == "SymmetricEigh"]
    core = ov.Core()
    core.add_extension(extension)
    return compile_model(core, converted, "CPU")


@pytest.mark.parametrize("case", CASES)
def test_openvino_extension_matches_lapack(cases, openvino_plugin_model, case):
    a = cases[case].astype(np.float32)
    values, vectors = openvino_plugin_model({0: a}).values()
    value_error, projector_error, orthonormality_error = _errors(a, values, vectors, cluster_tol=1e-3)
    assert value_error < 1e-4
    assert projector_error < 1e-4
    assert orthonormality_error < 2e-5


def test_openvino_extension_solves_each_matrix_as_if_alone(cases, openvino_plugin_model):
    """The kernel rotates a vector of matrices at once, each in its own lane, until every one has converged: a
    matrix's result must not depend on its neighbours (how fast they converge, a NaN among them) nor on where
    it falls in a batch, to the bit."""
    a = np.concatenate([cases[case].astype(np.float32).reshape(-1, N, N)
                        for case in ("identity", "model_laplacian", "random", "repeated")])[:23]
    a[9, 4, 2] = np.nan  # lower triangle: read
    values, vectors = openvino_plugin_model({0: a[None]}).values()
    assert np.isnan(values[0, 9]).any()
    for i in range(len(a)):
        alone_values, alone_vectors = openvino_plugin_model({0: a[None, i:i + 1]}).values()
        np.testing.assert_array_equal(values[0, i], alone_values[0, 0])
        np.testing.assert_array_equal(vectors[0, i], alone_vectors[0, 0])


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
    with pytest.raises(ImportError, match=r"pip install \.\[gpu\]"):
        eigh_trt.register_plugin.__wrapped__()  # bypass the cache: a real registration may be cached


@pytest.mark.gpu
@pytest.mark.parametrize("implementation", list(trt_plugin.PluginImplementation), ids=lambda i: i.value)
def test_trt_engine_matches_lapack(tmp_path, implementation):
    trt = pytest.importorskip("tensorrt", reason="TensorRT is not installed (pip install .[gpu])")
    if not torch.cuda.is_available():
        pytest.skip("TensorRT engine test needs CUDA")
    aot = implementation is trt_plugin.PluginImplementation.AOT
    eigh_trt.register_plugin()
    if implementation not in trt_plugin.registered_implementations(eigh_trt.PLUGIN_ID):
        pytest.skip("no AOT plugin here: TensorRT without AOT plugins, no triton, or a GPU brr.ops.ptx lacks")
    path = tmp_path / "eigh_plugin.onnx"
    onnx.save(_model("plugin"), path)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(trt_plugin.preference_flag(trt, implementation))
    parser = trt.OnnxParser(network, logger)
    assert parser.parse_from_file(str(path)), [str(parser.get_error(i)) for i in range(parser.num_errors)]
    input_name = network.get_input(0).name
    config = builder.create_builder_config()
    profile = builder.create_optimization_profile()
    profile.set_shape(input_name, (1, 1, N, N), (4, 192, N, N), (8, 192, N, N))
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if aot:
        # An AOT engine carries its kernel: a process that never registered brr's plugins deserialises it.
        (tmp_path / "eigh.engine").write_bytes(serialized)
        load = ("import sys, tensorrt as trt; runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING)); "
                "sys.exit(runtime.deserialize_cuda_engine(open(sys.argv[1], 'rb').read()) is None)")
        subprocess.run([sys.executable, "-c", load, tmp_path / "eigh.engine"], check=True, timeout=300)
    runtime = trt.Runtime(logger)
    engine = runtime.deserialize_cuda_engine(serialized)
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


# ------------------------------------------------------------------------------------ Triton kernel

# Runs in a child process: Triton reads TRITON_INTERPRET when a kernel is decorated, so setting it here
# would turn every Triton kernel imported later in this process into an interpreted one.
_INTERPRETER_SCRIPT = """
import sys
import numpy as np
import torch
from brr.ops.eigh.triton import eigh_triton
inputs = np.load(sys.argv[1])
outputs = {}
for name in inputs.files:
    values, vectors = eigh_triton(torch.from_numpy(inputs[name]))
    outputs[name + "/values"], outputs[name + "/vectors"] = values.numpy(), vectors.numpy()
np.savez(sys.argv[2], **outputs)
"""


def _triton_inputs(cases) -> dict[str, np.ndarray]:
    """A few matrices of each parity case in their batch shapes (the interpreter takes about 0.05 s per
    sweep of a 19 x 19 matrix), plus what only the kernel must get right: tile edges, the NaN rule, fp16."""
    rng = np.random.default_rng(4)
    inputs = {
        "random": cases["random"][:1, :3],
        "zero": cases["zero"][:1, :2],
        "identity": cases["identity"][:1, :2],
        "disconnected": cases["disconnected"][:1, :3], "repeated": cases["repeated"][:1],
        "model_laplacian": cases["model_laplacian"][:2, :3],
        "lower_triangle": rng.standard_normal((2, N, N)),
        "nan": np.stack([np.eye(N), np.where(np.eye(N) > 0, np.nan, 0.5)]),
    }
    inputs.update({f"n{n}": _random_symmetric(rng, (2,), n) for n in (1, 2, 5, 16)})
    inputs["n33"] = _random_symmetric(rng, (1,), 33)
    inputs = {name: a.astype(np.float32) for name, a in inputs.items()}
    inputs["float16"] = _model_laplacians(rng, (2,)).astype(np.float16)
    return inputs


@pytest.fixture(scope="module")
def triton_interpreted(cases, tmp_path_factory):
    """(inputs, outputs) of ``eigh_triton`` run under TRITON_INTERPRET=1."""
    pytest.importorskip("triton")
    folder = tmp_path_factory.mktemp("eigh_triton")
    inputs = _triton_inputs(cases)
    np.savez(folder / "inputs.npz", **inputs)
    command = [sys.executable, "-c", _INTERPRETER_SCRIPT, folder / "inputs.npz", folder / "outputs.npz"]
    child = subprocess.run(command, check=False, capture_output=True, text=True, timeout=300,
                           env={**os.environ, "TRITON_INTERPRET": "1"})
    if child.returncode:
        pytest.fail(f"the interpreted Triton kernel failed:\n{child.stderr[-6000:]}")
    with np.load(folder / "outputs.npz") as outputs:
        return inputs, {name: (outputs[name + "/values"], outputs[name + "/vectors"]) for name in inputs}


def _triton_errors(a, values, vectors):
    """_errors with the eigenvalue error relative to the matrix norm (largest |eigenvalue|; 1e-30 for 0)."""
    value_error, projector_error, orthonormality_error = _errors(a, values, vectors, cluster_tol=1e-3)
    norm = np.abs(np.linalg.eigvalsh(np.asarray(a, np.float64))).max()
    return value_error / max(norm, 1e-30), projector_error, orthonormality_error


@pytest.mark.parametrize("case", CASES)
def test_triton_kernel_matches_lapack(triton_interpreted, case):
    inputs, outputs = triton_interpreted
    value_error, projector_error, orthonormality_error = _triton_errors(inputs[case], *outputs[case])
    assert value_error <= 1e-4
    assert projector_error < 1e-4
    assert orthonormality_error < 2e-5


def test_triton_kernel_reads_only_the_lower_triangle(triton_interpreted):
    inputs, outputs = triton_interpreted
    a = inputs["lower_triangle"]
    symmetrised = np.tril(a) + np.swapaxes(np.tril(a, -1), -1, -2)
    value_error, projector_error, _ = _triton_errors(symmetrised, *outputs["lower_triangle"])
    assert value_error <= 1e-4 and projector_error < 1e-4


@pytest.mark.parametrize("n", [1, 2, 5, 16, 33])
def test_triton_kernel_other_sizes(triton_interpreted, n):
    # 16 fills its tile exactly; the others leave padding, the odd ones (1, 5, 33) a padding player.
    inputs, outputs = triton_interpreted
    errors = _triton_errors(inputs[f"n{n}"], *outputs[f"n{n}"])
    value_error, projector_error, orthonormality_error = errors
    assert value_error <= 1e-5 and projector_error < 1e-4 and orthonormality_error < 1e-5


def test_triton_kernel_reports_nan_matrices_as_nan(triton_interpreted):
    _, outputs = triton_interpreted
    values, vectors = outputs["nan"]
    np.testing.assert_array_equal(values[0], np.ones(N))
    assert np.isnan(values[1]).all() and np.isnan(vectors[1]).all()


def test_triton_kernel_float16_io(triton_interpreted):
    inputs, outputs = triton_interpreted
    values, vectors = outputs["float16"]
    assert values.dtype == vectors.dtype == np.float16
    value_error, projector_error, orthonormality_error = _errors(
        inputs["float16"], values.astype(np.float32), vectors.astype(np.float32), cluster_tol=0.1
    )
    assert value_error < 2e-3 and projector_error < 2e-2 and orthonormality_error < 5e-3


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") == "1", reason="no PTX under TRITON_INTERPRET=1")
@pytest.mark.parametrize("capability", ptx.TARGETS)
def test_triton_ptx_and_aot_launch(capability):
    """The PTX TensorRT embeds for each target, launched over the v3 model's real batch of eigh calls."""
    pytest.importorskip("triton")
    config = PRESETS["v3"]
    matrices_per_window = config.steps // config.semi_dynamic_interval  # one Laplacian per held step
    batch = 16
    launch = eigh_trt.aot_launch((batch, matrices_per_window, N, N), capability)
    kernel = launch.kernel
    assert launch.grid == (batch * matrices_per_window, 1, 1) and launch.extra_args == (N,)
    assert re.search(rf"^\.target sm_{capability}a?$", kernel.ptx, re.MULTILINE)
    # Parameters as TensorRT passes them: input pointer, n (int32), the two output pointers, then Triton's
    # two scratch pointers, which the kernel must not use (compile_kernel checks) and TensorRT does not pass.
    entry = re.search(rf"\.entry {kernel.name}\((.*?)\)", kernel.ptx, re.DOTALL).group(1)
    assert re.findall(r"\.param \.(\w+)", entry) == ["u64", "u32", "u64", "u64", "u64", "u64"]
    assert kernel.block == (256, 1, 1) and kernel.shared_bytes <= 8192
    assert ".local" not in kernel.ptx  # no stack arrays: the tiles stay in registers
    with pytest.raises(ptx.LaunchError, match="grid extent"):
        eigh_trt.aot_launch((2**31, N, N), capability)
    assert eigh_trt.aot_launch((N, N), capability).grid == (1, 1, 1)


class _Symbol:
    """A stand-in for TensorRT's shape expressions: multiplies, is not a build-time constant."""

    is_constant = False

    def __init__(self, text):
        self.text = text

    def __mul__(self, other):
        return _Symbol(f"{self.text}*{other.text}")


def test_triton_aot_launch_keeps_dynamic_batch_symbolic():
    pytest.importorskip("triton")
    launch = eigh_trt.aot_launch((_Symbol("batch"), _Symbol("graphs"), N, N), 90)
    assert launch.grid[0].text == "batch*graphs" and launch.grid[1:] == (1, 1)
    with pytest.raises(ValueError, match="static n"):
        eigh_trt.aot_launch((_Symbol("batch"), N, _Symbol("n")), 90)
