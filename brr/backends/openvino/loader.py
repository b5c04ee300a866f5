"""OpenVINO engines (CPU): the fp32 export converted to IR; the precision is a compile-time hint.

A plugin-mode export (``--ops plugin``) converts with brr's OpenVINO extension
(``brr.ops.registry.openvino_extension()``): each custom node becomes the extension's operation, run
by the ops' native CPU kernels, and ``CompiledModel`` adds the same extension before reading the IR.
Before converting, in both modes, the build lowers the graph for OpenVINO (``lowering.lower_for_openvino``;
the package's docstring is the design: each rewrite, why, and the manifest setting that counts it).

The IR keeps fp32 weights (no fp16 compression); the manifest's
``settings.inference_precision`` is the ``INFERENCE_PRECISION_HINT`` the engine is compiled with
(bf16 runs on AMX/AVX512-BF16 CPUs, f16 where the CPU has it). The build compiles it once to prove
the hint is accepted here; under a bf16 hint it then types bf16 the scans whose tensors the plugin stores in
bf16 around them anyway (``scan_storage``) and compiles it again.

A precision plan's fp32 nodes are marked in the IR with OpenVINO's ``precise`` runtime attribute (what
``ov::disable_fp16_compression`` sets), under which the CPU plugin runs a layer in fp32 whatever the
hint. Python cannot create that attribute, so the build writes it into model.xml, where the IR reader
makes it. The ONNX frontend names the layers it makes from a node after the node (``<node>`` or
``<node>/<part>``), or after its output where that is a graph output (a probe): that is how a plan's
ONNX node names find their layers. The build then reads the compiled model's execution graph and fails
when a pinned layer ran in bf16/f16 (``execution.check_plan_applied``; ``settings.plan_applied``): in a
standard-ops build OpenVINO's own rewrites of the gated norms do (see ``execution``).
"""

from __future__ import annotations

import tempfile
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx
import openvino as ov
from polygraphy.backend.base import BaseLoader

from brr.backends.base import EngineBuildError, Int8Calibration
from brr.backends.openvino.execution import HINT_CAPABILITY, check_plan_applied, execution_graph
from brr.backends.openvino.lowering import lower_for_openvino
from brr.backends.openvino.scan_storage import scan_neighbours, store_scans_in_bf16
from brr.backends.openvino.signal_stack import kept_signal_stack
from brr.onnx.stages import node_stages
from brr.ops import registry

MODEL_FILE = "model.xml"
KEEP_PRECISION_ATTRIBUTE = {"name": "precise", "version": "0"}
PRECISION_HINTS = {"fp32": "f32", "bf16": "bf16", "fp16": "f16"}


def weights_file(model_file: str) -> str:
    """The .bin an IR's .xml reads its weights from."""
    return str(Path(model_file).with_suffix(".bin"))


def compile_model(core: ov.Core, model: ov.Model | str, device: str = "CPU",
                  config: Mapping[str, object] | None = None) -> ov.CompiledModel:
    """``core.compile_model``, the calling thread's alternate signal stack kept (``signal_stack``): how every
    OpenVINO model in brr is compiled, so that Ctrl-C and SIGTERM still reach Python's handlers."""
    with kept_signal_stack():
        return core.compile_model(model, device, dict(config or {}))


def openvino_extensions(ops: str) -> list[str]:
    """The extension libraries an OpenVINO engine of an ``ops``-mode export needs (none for standard ops)."""
    if ops == "standard":
        return []
    try:
        return [str(registry.openvino_extension())]
    except ImportError as error:
        raise EngineBuildError(f"an OpenVINO engine of the plugin-mode export needs brr's extension: {error}") from error


class CompiledModel(BaseLoader):
    """IR path -> ``openvino.CompiledModel`` with ``inference_precision`` (an OpenVINO hint), extensions first;
    called with ``input_shapes`` (input name -> shape), compiled for those static shapes."""

    def __init__(self, model_path: str | Path, inference_precision: str = "f32", threads: int | None = None,
                 extensions: Sequence[str | Path] = (), device: str = "CPU"):
        super().__init__()
        if inference_precision not in PRECISION_HINTS.values():
            raise ValueError(f"inference_precision must be one of {sorted(PRECISION_HINTS.values())}, "
                             f"got {inference_precision!r}")
        self.model_path = Path(model_path)
        self.config: dict[str, object] = {"INFERENCE_PRECISION_HINT": inference_precision}
        if threads is not None:
            self.config["INFERENCE_NUM_THREADS"] = int(threads)
        self.extensions = [str(e) for e in extensions]
        self.device = device

    def _core(self) -> ov.Core:
        core = ov.Core()
        for extension in self.extensions:
            core.add_extension(extension)
        return core

    def read(self) -> ov.Model:
        """The IR as written, its batch dimension dynamic."""
        return self._core().read_model(str(self.model_path))

    def call_impl(self, input_shapes: Mapping[str, Sequence[int]] | None = None,
                  edit: Callable[[ov.Model], None] | None = None) -> ov.CompiledModel:
        """``edit``, when given, changes the model before it is compiled (the diff adds outputs)."""
        core = self._core()
        model = core.read_model(str(self.model_path))
        if input_shapes:
            model.reshape({name: ov.PartialShape(list(shape)) for name, shape in input_shapes.items()})
        if edit is not None:
            edit(model)
        return compile_model(core, model, self.device, self.config)


def build_engine(onnx_path: Path, ops: str, directory: Path, precision: str,
                 fp32_nodes: Sequence[str] = (), model_file: str = MODEL_FILE,
                 calibration: Int8Calibration | None = None, validation: list[np.ndarray] | None = None
                 ) -> tuple[list[str], dict]:
    """Write ``model_file`` (.xml) and its .bin (every probe an output, as in the ONNX) into ``directory``, the
    layers of ``fp32_nodes`` kept in fp32; returns (the ONNX nodes pinned, settings). int8 quantizes the
    other layers of the stages ``calibration``'s scope names, calibrated on its windows and each kept int8 only
    where ``validation``'s windows allow (every one when None; ``brr.backends.openvino.quantize``), and runs
    the rest in the scope's unquantized precision."""
    if precision not in PRECISION_HINTS and precision != "int8":
        raise EngineBuildError(f"OpenVINO engines are {sorted(PRECISION_HINTS)} or int8, not {precision!r}")
    if precision == "int8" and calibration is None:
        raise EngineBuildError("an int8 engine needs calibration windows (brr-export --data)")
    hint = PRECISION_HINTS[calibration.scope.unquantized_precision if precision == "int8" else precision]
    extensions = openvino_extensions(ops)
    directory.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        lowered, lowered_counts = lower_for_openvino(onnx.load(str(onnx_path)), fp32_everywhere=hint == "f32",
                                                     fp32_nodes=fp32_nodes, scans=bool(extensions))
        source = Path(scratch) / onnx_path.name
        onnx.save(lowered, str(source))
        converted = ov.convert_model(str(source), extension=extensions or None)
    quantized = {}
    if precision == "int8":
        converted, quantized = quantize_engine(converted, onnx_path, fp32_nodes, calibration, validation)
    ov.save_model(converted, str(directory / model_file), compress_to_fp16=False)
    pinned, layers, without_layer = keep_in_fp32(directory / model_file, onnx_path, fp32_nodes)
    compiled = CompiledModel(directory / model_file, hint, extensions=extensions)()
    scans_in_bf16 = 0
    if hint == "bf16" and extensions:
        free = [scan.name for scan in scan_neighbours(converted, compiled)
                if scan.bf16_for_free and scan.name not in layers]
        if free:
            scans_in_bf16 = store_scans_in_bf16(converted, free)
            ov.save_model(converted, str(directory / model_file), compress_to_fp16=False)
            pinned, layers, without_layer = keep_in_fp32(directory / model_file, onnx_path, fp32_nodes)
            compiled = CompiledModel(directory / model_file, hint, extensions=extensions)()
    settings = {"device": "CPU", "inference_precision": hint,
                "compiled_precision": str(compiled.get_property("INFERENCE_PRECISION_HINT")),
                "scans_stored_in_bf16": scans_in_bf16}
    settings |= lowered_counts | quantized
    if fp32_nodes:
        # Nodes the frontend folded into constants or fused into another node's layer have no layer
        # of their own: named, so that a plan that pins nothing here is seen.
        settings |= {"fp32_layers": len(layers), "fp32_nodes_without_layer": without_layer}
        if hint in HINT_CAPABILITY:
            settings["plan_applied"] = check_plan_applied(
                execution_graph(compiled), layers, hint,
                ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))
    return pinned, settings


def quantize_engine(model: ov.Model, onnx_path: Path, fp32_nodes: Sequence[str], calibration: Int8Calibration,
                    validation: list[np.ndarray] | None) -> tuple[ov.Model, dict]:
    """``quantize.quantize_ir`` on the layers made from the ONNX nodes of ``onnx_path`` outside ``fp32_nodes`` in
    the stages that ``calibration.scope`` quantizes."""
    from brr.backends.openvino.quantize import quantize_ir

    stages = node_stages(onnx.load(str(onnx_path), load_external_data=False))
    free = {node for node, stage in stages.items() if calibration.scope.quantizes(stage)} - set(fp32_nodes)
    quantizable = layer_nodes((op.get_friendly_name() for op in model.get_ordered_ops()), onnx_path, free)
    quantized, settings = quantize_ir(model, list(quantizable), list(calibration.windows), validation)
    if "fp32_restored_layers" in settings:  # as ONNX nodes, which a plan for the split parts can name
        settings["fp32_restored_nodes"] = sorted({quantizable[layer] for layer in settings["fp32_restored_layers"]})
    return quantized, settings


def keep_in_fp32(model_xml: Path, onnx_path: Path, fp32_nodes: Sequence[str]
                 ) -> tuple[list[str], dict[str, str], list[str]]:
    """Mark the layers made from the ONNX nodes ``fp32_nodes`` of ``onnx_path`` with the ``precise``
    attribute in ``model_xml``; returns (the nodes with a layer, each marked layer's node, the nodes
    without a layer)."""
    if not fp32_nodes:
        return [], {}, []
    tree = ET.parse(model_xml)
    layers = {layer.get("name", ""): layer for layer in tree.getroot().iter("layer") if layer.get("type") != "Result"}
    marked = layer_nodes(layers, onnx_path, fp32_nodes)
    for name in marked:
        rt_info = layers[name].find("rt_info")
        if rt_info is None:
            rt_info = ET.Element("rt_info")
            layers[name].insert(0, rt_info)
        if not any(a.attrib == KEEP_PRECISION_ATTRIBUTE for a in rt_info.iter("attribute")):
            ET.SubElement(rt_info, "attribute", KEEP_PRECISION_ATTRIBUTE)
    tree.write(model_xml, encoding="utf-8", xml_declaration=True)
    found = set(marked.values())
    return sorted(found), marked, sorted(set(fp32_nodes) - found)


def layer_nodes(layer_names: Iterable[str], onnx_path: Path, nodes: Iterable[str]) -> dict[str, str]:
    """Each of ``layer_names`` made from one of the ONNX ``nodes`` of ``onnx_path``, and that node. The
    frontend names a node's layers ``<node>`` or ``<node>/<part>``, or after the node's output where that is a
    graph output (a probe)."""
    wanted = set(nodes)
    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    graph_outputs = {o.name for o in graph.output}
    node_of = {name: name for name in wanted}
    node_of |= {output: n.name for n in graph.node if n.name in wanted for output in n.output if output in graph_outputs}
    found = {}
    for layer in layer_names:
        parts = layer.split("/")
        node = next((node_of[n] for n in ("/".join(parts[:i]) for i in range(1, len(parts) + 1)) if n in node_of),
                    None)
        if node is not None:
            found[layer] = node
    return found
