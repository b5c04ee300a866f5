"""TensorRT engines, strongly typed: the precision is in the ONNX graph, never in the builder.

A TensorRT engine is built from the typed graph brr writes for the ONNX Runtime engine of the same
precision and plan (``write_network``: the same function, the same bytes): fp16/bf16 weights and
storage with fp32 arithmetic and the plan's fp32 islands, all as explicit Casts; int8 as the explicit
Q/DQ graph of brr's quantizer; fp32 the fp32 export itself. The artifact keeps that graph as
``model.onnx`` beside ``model.engine``, and the manifest hashes both. TensorRT takes every tensor's type
from the graph (``STRONGLY_TYPED``, TensorRT >= 10.12; every network of 11.x), so no builder precision
flag, layer precision or calibrator exists here; TF32 is off, so that what the graph computes in fp32
the engine computes in fp32, not with 10-bit mantissas.

``engine_loader`` is the one loader chain; export, the diff's rebuilds and calibration all use it:

    NetworkFromTypedOnnx (STRONGLY_TYPED | PREFER_AOT_PYTHON_PLUGINS, brr's plugins registered first)
    -> PostprocessNetwork(edit_network: serving outputs, probe and debug marks, which plugin kernels)
    -> CreateConfig(**TensorRTBuild.config_arguments(...)) -> EngineBytesFromNetwork

A serving engine has ``logits`` as its only output: the parsed graph's other outputs (the probes) are
unmarked and marked as debug tensors instead, so the diff reads them from the engine that is served
(``brr.backends.trt.runner``), at no cost to a run that does not turn them on. brr's plugins define an
ahead-of-time implementation (a PTX kernel the engine embeds) beside the JIT one (Python, run inside
the engine); ``PREFER_AOT_PYTHON_PLUGINS`` makes the ONNX parser create the AOT one wherever it exists,
and ``settings.plugins`` records what each plugin got. After the build, ``check_plan_applied`` reads
what the engine stores (engine inspector) and refuses an engine that holds in reduced precision a
tensor of a node the plan keeps in fp32.
"""

from __future__ import annotations

import importlib
import logging
import shutil
import tempfile
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import onnx
from polygraphy.backend.base import BaseLoader

from brr.backends.base import EngineBuildError
from brr.backends.onnxrt.loader import MODEL_FILE as NETWORK_FILE
from brr.backends.onnxrt.loader import build_engine as write_onnxruntime_engine
from brr.backends.trt.inspector import (
    EngineInformation,
    check_plan_applied,
    nodes_without_layer,
    parse_engine_information,
)
from brr.backends.trt.trtexec import trtexec_record
from brr.errors import DependencyUnavailable
from brr.model.checkpoint import file_sha256
from brr.model.contract import INPUT_NAME, OUTPUT_NAME
from brr.ops.registry import OP_PACKAGES
from brr.ops.trt_plugin import PluginImplementation

log = logging.getLogger(__name__)

MODEL_FILE = "model.engine"
# Tactic timings of the export's build: a rebuild that loads them picks the same kernels for the same layers.
TIMING_CACHE_FILE = "timing.cache"
# The edited copy of the typed graph a rebuild parses (in a temporary folder).
EDITED_ONNX_FILE = "edited.onnx"
INSTALL_HINT = "install the GPU extras on a CUDA machine: pip install .[gpu]"
# Strongly typed networks without weak typing's builder flags: TensorRT 10.12 and later.
MIN_TENSORRT = (10, 12)
PRECISIONS = ("fp32", "fp16", "bf16", "int8")
# Network creation flags of every build: types from the graph; AOT kernels for Python plugins that have one.
NETWORK_FLAGS = ("STRONGLY_TYPED", "PREFER_AOT_PYTHON_PLUGINS")


class TensorRTUnavailable(DependencyUnavailable):
    """TensorRT, a recent enough one, or a CUDA GPU is missing; the message is the one line the CLI prints."""


def parse_batch_range(text: str) -> tuple[int, int, int]:
    """'MIN:OPT:MAX' (or one number N for N:N:N) -> (min, opt, max) with 1 <= min <= opt <= max."""
    parts = text.split(":")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        values = []
    if len(values) == 1:
        values *= 3
    if len(values) != 3 or not 1 <= values[0] <= values[1] <= values[2]:
        raise ValueError(f"batch range must be MIN:OPT:MAX with 1 <= MIN <= OPT <= MAX, got {text!r}")
    return values[0], values[1], values[2]


def profile_shapes(batch: tuple[int, int, int], n_channels: int, window: int) -> dict[str, tuple[tuple[int, ...], ...]]:
    """The optimisation profile: input name -> (min, opt, max) shapes."""
    return {INPUT_NAME: tuple((b, n_channels, window) for b in batch)}


def version_major(version: str) -> int:
    return int(version.split(".")[0])


def too_old(version: str) -> bool:
    """Whether TensorRT ``version`` predates the strongly typed builds brr makes."""
    return tuple(int(part) for part in version.split(".")[:2]) < MIN_TENSORRT


def tensorrt_version() -> str | None:
    """The installed TensorRT's version (importable without a GPU), or None."""
    try:
        import tensorrt
    except (ImportError, OSError):
        return None
    return tensorrt.__version__


def import_tensorrt():
    """tensorrt (>= 10.12), once a CUDA GPU is known to be there; else TensorRTUnavailable with the line to print."""
    try:
        import tensorrt
    except ImportError as exc:
        raise TensorRTUnavailable(f"TensorRT is not installed (no 'tensorrt' module); {INSTALL_HINT}") from exc
    if too_old(tensorrt.__version__):
        minimum = ".".join(map(str, MIN_TENSORRT))
        raise TensorRTUnavailable(f"TensorRT {tensorrt.__version__} is installed, and brr's strongly typed engines "
                                  f"need TensorRT >= {minimum}; {INSTALL_HINT}")
    try:
        import torch
        gpu = torch.cuda.is_available()
    except ImportError:
        gpu = False
    if not gpu:
        raise TensorRTUnavailable(f"TensorRT needs a CUDA GPU and none is visible; {INSTALL_HINT}")
    return tensorrt


def network_flags(trt) -> int:
    """``create_network`` flags: ``NETWORK_FLAGS``, each one TensorRT must have."""
    flags = 0
    for name in NETWORK_FLAGS:
        flag = getattr(trt.NetworkDefinitionCreationFlag, name, None)
        if flag is None:
            raise TensorRTUnavailable(f"TensorRT {trt.__version__} has no NetworkDefinitionCreationFlag.{name}; "
                                      f"{INSTALL_HINT}")
        flags |= 1 << int(flag)
    return flags


def plugin_implementation(plugin, trt) -> tuple[str, PluginImplementation]:
    """(plugin id "namespace::name", the implementation the parser created) of a plugin layer's plugin."""
    core = plugin.get_capability_interface(trt.PluginCapabilityType.CORE)
    build = plugin.get_capability_interface(trt.PluginCapabilityType.BUILD)
    kind = PluginImplementation.AOT if isinstance(build, trt.IPluginV3QuickAOTBuild) else PluginImplementation.JIT
    return f"{core.plugin_namespace}::{core.plugin_name}", kind


@dataclass(frozen=True)
class TensorRTBuild:
    """How TensorRT builds an engine of a typed graph (what the manifest records of it). ``precision`` and
    ``fp32_nodes`` say what the graph holds, which the built engine is checked against."""

    precision: str
    batch: tuple[int, int, int]
    n_channels: int
    window: int
    fp32_nodes: tuple[str, ...] = ()

    def __post_init__(self):
        if self.precision not in PRECISIONS:
            raise EngineBuildError(f"TensorRT engine precision must be one of {PRECISIONS}, got {self.precision!r}")

    @classmethod
    def from_manifest(cls, manifest: dict) -> TensorRTBuild:
        """The build of a TensorRT artifact, from its manifest."""
        batch, config = manifest["batch"], manifest["config"]
        return cls(manifest["precision"], (batch["min"], batch["opt"], batch["max"]), config["n_channels"],
                   config["window_samples"], tuple(manifest["fp32_pinned_nodes"]))

    def config_arguments(self, profiling_verbosity, timing_cache: Path | None = None) -> dict[str, object]:
        """Keyword arguments of Polygraphy's ``CreateConfig``: the batch profile, TF32 off, the profiling
        verbosity (``ProfilingVerbosity.DETAILED``: the engine inspector describes every layer), the timing
        cache. Nothing about precision: the graph's types are the engine's."""
        from polygraphy.backend.trt import Profile

        profile = Profile()
        for name, (lo, opt, hi) in profile_shapes(self.batch, self.n_channels, self.window).items():
            profile.add(name, min=lo, opt=opt, max=hi)
        arguments: dict[str, object] = {"profiles": [profile], "tf32": False,
                                        "profiling_verbosity": profiling_verbosity}
        if timing_cache is not None:
            arguments["load_timing_cache"] = str(timing_cache)
        return arguments


@dataclass
class NetworkEdits:
    """What ``edit_network`` did to the parsed network (filled in when the engine is built)."""

    probes: list[str] = field(default_factory=list)  # outputs unmarked for serving, kept as debug tensors
    debug_tensors: list[str] = field(default_factory=list)  # further tensors marked with mark_debug
    unfused_debug_tensors: bool = False  # mark_unfused_tensors_as_debug_tensors took effect
    plugins: dict[str, str] = field(default_factory=dict)  # plugin id -> PluginImplementation value


def edit_network(network, trt, edits: NetworkEdits, serving: bool, debug_tensors: Collection[str] = (),
                 unfused_debug: bool = False) -> None:
    """Shape the parsed network and record what was done.

    ``serving``: ``logits`` becomes the only output and every other graph output (the probes) a debug
    tensor; else the outputs stay as the graph has them (an edited copy's marked tensors). Then the
    ``debug_tensors`` the network holds are marked (those folded by the parser are left out of
    ``edits.debug_tensors``), and each plugin layer's implementation is recorded.
    """
    outputs = [network.get_output(i) for i in range(network.num_outputs)]
    if OUTPUT_NAME not in [t.name for t in outputs]:
        raise EngineBuildError(f"the graph has no {OUTPUT_NAME!r} output (outputs: {[t.name for t in outputs]})")
    if serving:
        for tensor in outputs:
            if tensor.name != OUTPUT_NAME:
                network.unmark_output(tensor)
                network.mark_debug(tensor)
                edits.probes.append(tensor.name)
    wanted = set(debug_tensors) - set(edits.probes)
    layers = [network.get_layer(i) for i in range(network.num_layers)]
    for layer in layers:
        for index in range(layer.num_outputs):
            tensor = layer.get_output(index)
            if tensor.name in wanted and tensor.name not in edits.debug_tensors and network.mark_debug(tensor):
                edits.debug_tensors.append(tensor.name)
    if unfused_debug:
        edits.unfused_debug_tensors = bool(network.mark_unfused_tensors_as_debug_tensors())
    for layer in layers:
        if layer.type == trt.LayerType.PLUGIN_V3:
            layer.__class__ = trt.IPluginV3Layer  # get_layer gives the base class; the plugin is on the subclass
            plugin_id, kind = plugin_implementation(layer.plugin, trt)
            edits.plugins[plugin_id] = kind.value


class NetworkFromTypedOnnx(BaseLoader):
    """ONNX file -> (builder, network, parser): a strongly typed network whose Python plugins prefer AOT.

    Polygraphy's ``NetworkFromOnnxPath`` sets STRONGLY_TYPED but no plugin preference, which is a network
    creation flag: hence this loader.
    """

    def __init__(self, path: Path):
        super().__init__()
        self.path = Path(path)

    def call_impl(self):
        from polygraphy.backend.trt import util as trt_util

        trt = import_tensorrt()
        logger = trt_util.get_trt_logger()
        builder = trt.Builder(logger)
        network = builder.create_network(network_flags(trt))
        parser = trt.OnnxParser(network, logger)
        if not parser.parse_from_file(str(self.path)):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise EngineBuildError(f"{self.path}: TensorRT's ONNX parser refused the graph: {errors}")
        return builder, network, parser


def register_plugins() -> None:
    for package in OP_PACKAGES:
        importlib.import_module(f"{package}.trt").register_plugin()


def engine_loader(build: TensorRTBuild, onnx_path: Path, *, serving: bool = True,
                  load_timing_cache: Path | None = None, save_timing_cache: Path | None = None,
                  debug_tensors: Collection[str] = (), unfused_debug: bool = False):
    """(Polygraphy loader of the serialized engine of the typed graph ``onnx_path``, the ``NetworkEdits`` it
    fills when called)."""
    trt = import_tensorrt()
    from polygraphy.backend.trt import CreateConfig, EngineBytesFromNetwork, PostprocessNetwork

    register_plugins()  # the parser finds brr's plugins in TensorRT's registry
    edits = NetworkEdits()
    edit = partial(edit_network, trt=trt, edits=edits, serving=serving, debug_tensors=tuple(debug_tensors),
                   unfused_debug=unfused_debug)
    network = PostprocessNetwork(NetworkFromTypedOnnx(onnx_path), edit, name="brr-edits")
    config = CreateConfig(**build.config_arguments(trt.ProfilingVerbosity.DETAILED, load_timing_cache))
    saved = None if save_timing_cache is None else str(save_timing_cache)
    return EngineBytesFromNetwork(network, config=config, save_timing_cache=saved), edits


def write_network(fp32_onnx: Path, ops: str, directory: Path, precision: str, fp32_nodes: list[str],
                  calibration: Iterable[np.ndarray] | None) -> Path:
    """The typed graph of a ``precision`` engine in ``directory``: the fp32 export itself, or what ONNX Runtime's
    engine of that precision and plan is (fp16/bf16 Casts, int8 Q/DQ), by the same function."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / NETWORK_FILE
    if precision == "fp32":
        shutil.copyfile(fp32_onnx, path)
        return path
    if precision == "int8" and ops != "standard":
        raise EngineBuildError("a TensorRT int8 engine is built from the Q/DQ graph of ONNX Runtime's quantizer, "
                               "which needs --ops standard (its calibrator cannot load brr's custom ops)")
    write_onnxruntime_engine(fp32_onnx, ops, directory, precision, fp32_nodes, calibration)
    return path


def served_probes(model: onnx.ModelProto) -> list[str]:
    """The graph outputs a serving engine keeps as debug tensors: all but the logits."""
    return [output.name for output in model.graph.output if output.name != OUTPUT_NAME]


def network_settings(directory: Path, ops: str, build: TensorRTBuild, probes: list[str]) -> dict:
    """What a manifest records of any TensorRT artifact, built or not: its typed graph, how it is built, and
    the trtexec lines."""
    return {"network": NETWORK_FILE, "network_sha256": file_sha256(directory / NETWORK_FILE),
            "strongly_typed": True, "tf32": False, "batch_profile": list(build.batch), "debug_tensors": probes,
            "trtexec": trtexec_record(directory, ops, NETWORK_FILE, MODEL_FILE, TIMING_CACHE_FILE, build.batch,
                                      build.n_channels, build.window, probes)}


def prepare_engine(onnx_path: Path, ops: str, directory: Path, precision: str, fp32_nodes: list[str],
                   batch: tuple[int, int, int], n_channels: int, window: int,
                   calibration: Iterable[np.ndarray] | None = None) -> dict:
    """Everything of the artifact but the engine (where TensorRT or a GPU is missing): the typed graph, and the
    settings that say how its engine is built; returns them."""
    build = TensorRTBuild(precision, batch, n_channels, window, tuple(fp32_nodes))
    for stale in (MODEL_FILE, TIMING_CACHE_FILE):  # an engine left there would not be this graph's
        (directory / stale).unlink(missing_ok=True)
    network = write_network(onnx_path, ops, directory, precision, fp32_nodes, calibration)
    probes = served_probes(onnx.load(str(network), load_external_data=False))
    return network_settings(directory, ops, build, probes) | {"tensorrt_version": tensorrt_version()}


def engine_information(engine_bytes: bytes) -> EngineInformation:
    """What the serialized engine runs, as its engine inspector describes it."""
    trt = import_tensorrt()
    from polygraphy.backend.trt import EngineFromBytes

    engine = EngineFromBytes(engine_bytes)()
    inspector = engine.create_engine_inspector()
    return parse_engine_information(inspector.get_engine_information(trt.LayerInformationFormat.JSON))


def build_engine(onnx_path: Path, ops: str, directory: Path, precision: str, fp32_nodes: list[str],
                 batch: tuple[int, int, int], n_channels: int, window: int,
                 calibration: Iterable[np.ndarray] | None = None) -> dict:
    """Write the typed graph, then ``model.engine`` built from it with its timing cache, into ``directory``,
    once the engine is checked to store what the plan keeps in fp32 in fp32; returns the settings."""
    trt = import_tensorrt()  # before any work
    build = TensorRTBuild(precision, batch, n_channels, window, tuple(fp32_nodes))
    for stale in (MODEL_FILE, TIMING_CACHE_FILE):  # a cache found there would be read, not made anew
        (directory / stale).unlink(missing_ok=True)
    network = write_network(onnx_path, ops, directory, precision, fp32_nodes, calibration)
    typed = onnx.load(str(network))
    loader, edits = engine_loader(build, network, save_timing_cache=directory / TIMING_CACHE_FILE)
    engine = loader()
    info = engine_information(engine)
    if (outputs := info.outputs({INPUT_NAME})) != [OUTPUT_NAME]:
        raise EngineBuildError(f"the serving engine's outputs are {outputs}, not [{OUTPUT_NAME!r}] alone")
    check_plan_applied(info, typed, build.fp32_nodes, build.precision)
    for plugin, kind in edits.plugins.items():
        if kind == PluginImplementation.JIT.value:
            log.warning(f"{plugin}: no AOT implementation registered; the engine runs its JIT one (Python), so only "
                        "a Python process with brr runs it, not trtexec or C++")
    (directory / MODEL_FILE).write_bytes(engine)
    return network_settings(directory, ops, build, edits.probes) | {
        "device": "cuda", "tensorrt_version": trt.__version__, "plugins": edits.plugins,
        "timing_cache": TIMING_CACHE_FILE, "engine_layers": len(info.layers),
        "fp32_nodes_without_layer": nodes_without_layer(info, build.fp32_nodes)}


class TensorRTRebuild:
    """Engines of edited copies of an artifact's typed graph, built exactly as the artifact's engine was: the
    manifest's ``TensorRTBuild`` and the timing cache its build saved (the same kernels for the same layers)."""

    def __init__(self, build: TensorRTBuild, artifact: Path):
        self.build = build
        self.network = artifact / NETWORK_FILE
        if not self.network.is_file():
            raise EngineBuildError(f"{artifact}: no {NETWORK_FILE}: its engine was built weakly typed by an older "
                                   "brr-export; export it again to rebuild it as it was built")
        timing = artifact / TIMING_CACHE_FILE
        self.timing_cache = timing if timing.is_file() else None

    def network_model(self) -> onnx.ModelProto:
        """The typed graph the artifact's engine was built from."""
        return onnx.load(str(self.network))

    def engine_bytes(self, model, debug_tensors: Collection[str] = (), unfused_debug: bool = False,
                     serving: bool = True) -> tuple[bytes, NetworkEdits]:
        """The serialized engine of ``model`` (an ``onnx.ModelProto``), and what was edited in its network;
        ``serving``: its outputs as the served engine's (the probes as debug tensors)."""
        import_tensorrt()  # before any work
        with tempfile.TemporaryDirectory(prefix="brr-trt-") as tmp:
            path = Path(tmp) / EDITED_ONNX_FILE
            onnx.save(model, str(path))
            loader, edits = engine_loader(self.build, path, serving=serving, load_timing_cache=self.timing_cache,
                                          debug_tensors=debug_tensors, unfused_debug=unfused_debug)
            return loader(), edits

    def runner_for(self, model, name: str):
        """Polygraphy's TrtRunner over an engine of ``model`` built with the artifact's settings, every output
        of ``model`` kept."""
        from polygraphy.backend.trt import EngineFromBytes, TrtRunner

        engine, _ = self.engine_bytes(model, serving=False)
        return TrtRunner(EngineFromBytes(engine), name=name)
