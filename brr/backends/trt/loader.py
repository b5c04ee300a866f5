"""TensorRT engines through Polygraphy's loaders: one build configuration for export, diff and calibration.

``TensorRTBuild`` holds everything that decides how TensorRT turns the exported ONNX graph into an
engine: the precision flags, one optimisation profile over the batch, the precision plan's fp32
nodes (their layers pinned to fp32, with precision constraints "obey"), and, given at build time,
the int8 calibrator and the timing cache. ``engine_loader`` is the one loader chain made from it:

    NetworkFromOnnxPath (plugins of ``brr.ops.*.trt`` registered first)
    -> PostprocessNetwork(edit_network: the plan's pins; debug tensors when asked)
    -> CreateConfig(**TensorRTBuild.config_arguments(...)) -> EngineBytesFromNetwork

``brr-export`` builds the served engine with it and keeps the calibration cache (int8) and the
timing cache beside it; ``brr-diff`` rebuilds edited copies from the manifest's ``TensorRTBuild``
and those caches (``TensorRTRebuild``), so a marked or debug-tensor engine is built as the engine
under test was, down to the kernels TensorRT timed for it; ``brr-calibrate`` builds its int8
engine with it too. The pure parts (flags, profile, pins, debug marks) are testable without TensorRT.
"""

from __future__ import annotations

import importlib
import re
import shutil
import tempfile
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np

from brr.backends.base import EngineBuildError
from brr.errors import DependencyUnavailable
from brr.model import INPUT_NAME
from brr.ops.registry import OP_PACKAGES

MODEL_FILE = "model.engine"
CALIBRATION_CACHE_FILE = "int8.cache"
# Tactic timings of the export's build: a rebuild that loads them picks the same kernels for the same layers.
TIMING_CACHE_FILE = "timing.cache"
# The edited copy of the ONNX graph a rebuild parses (in a temporary folder).
EDITED_ONNX_FILE = "edited.onnx"
INSTALL_HINT = "install the GPU extras on a CUDA machine: pip install .[gpu]"
# TensorRT 10 records the ONNX node(s) a layer came from in layer.metadata as "[ONNX Layer: <name>]".
_ONNX_LAYER = re.compile(r"\[ONNX Layer: ([^\]]+)\]")
# CreateConfig flags per precision (fp16 also enabled for int8's fallbacks).
PRECISION_FLAGS: dict[str, dict[str, bool]] = {
    "fp32": {}, "fp16": {"fp16": True}, "bf16": {"bf16": True}, "int8": {"int8": True, "fp16": True}}


class TensorRTUnavailable(DependencyUnavailable):
    """TensorRT or a CUDA GPU is missing; the message is the one line the CLI prints."""


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


def config_flags(precision: str, pinned: bool) -> dict[str, object]:
    """CreateConfig keyword arguments for ``precision``; "obey" precision constraints when layers are pinned."""
    if precision not in PRECISION_FLAGS:
        raise EngineBuildError(f"TensorRT engine precision must be one of {sorted(PRECISION_FLAGS)}, got {precision!r}")
    result: dict[str, object] = dict(PRECISION_FLAGS[precision])
    if pinned:
        result["precision_constraints"] = "obey"
    return result


def layer_nodes(name: str, metadata: str | None) -> set[str]:
    """The ONNX nodes a layer implements: its name, and those its metadata names."""
    return {name, *_ONNX_LAYER.findall(metadata or "")}


@dataclass(frozen=True)
class TensorRTBuild:
    """How TensorRT builds an engine of the exported graph (what the manifest records of it)."""

    precision: str
    batch: tuple[int, int, int]
    n_channels: int
    window: int
    fp32_nodes: tuple[str, ...] = ()

    def __post_init__(self):
        config_flags(self.precision, False)  # EngineBuildError for a precision TensorRT is not built for

    @classmethod
    def from_manifest(cls, manifest: dict) -> TensorRTBuild:
        """The build of a TensorRT artifact, from its manifest."""
        batch, config = manifest["batch"], manifest["config"]
        return cls(manifest["precision"], (batch["min"], batch["opt"], batch["max"]), config["n_channels"],
                   config["window_samples"], tuple(manifest["fp32_pinned_nodes"]))

    def config_arguments(self, calibrator=None, timing_cache: Path | None = None) -> dict[str, object]:
        """Keyword arguments of Polygraphy's ``CreateConfig``: flags, constraints, profile, calibrator, cache."""
        from polygraphy.backend.trt import Profile

        if (self.precision == "int8") != (calibrator is not None):
            raise EngineBuildError("a TensorRT int8 build needs a calibrator (calibration windows, or the calibration "
                                   "cache of the engine rebuilt), and only int8 takes one")
        profile = Profile()
        for name, (lo, opt, hi) in profile_shapes(self.batch, self.n_channels, self.window).items():
            profile.add(name, min=lo, opt=opt, max=hi)
        arguments = config_flags(self.precision, pinned=bool(self.fp32_nodes)) | {"profiles": [profile]}
        if calibrator is not None:
            arguments["calibrator"] = calibrator
        if timing_cache is not None:
            arguments["load_timing_cache"] = str(timing_cache)
        return arguments


@dataclass
class NetworkEdits:
    """What ``edit_network`` did to the parsed network (filled in when the engine is built)."""

    fp32_layers: list[str] = field(default_factory=list)
    fp32_nodes_without_layer: list[str] = field(default_factory=list)  # folded by the parser (constants)
    debug_tensors: list[str] = field(default_factory=list)  # marked with mark_debug
    unfused_debug_tensors: bool = False  # mark_unfused_tensors_as_debug_tensors took effect


def unfused_debug_supported(network_class) -> bool:
    """TensorRT >= 10.12: unfused tensors can be debug tensors without changing what is fused."""
    return hasattr(network_class, "mark_unfused_tensors_as_debug_tensors")


def edit_network(network, build: TensorRTBuild, float32, edits: NetworkEdits, debug_tensors: Collection[str] = (),
                 unfused_debug: bool = False) -> None:
    """Pin the plan's layers to fp32, then mark the debug tensors asked for; record what was done.

    A pinned layer computes in fp32 and also keeps its float outputs in fp32: a value that needs fp32's
    range there needs it where it is stored too. ``debug_tensors`` that the network does not hold
    (folded by the parser) are left out of ``edits.debug_tensors``.
    """
    layers = [network.get_layer(i) for i in range(network.num_layers)]
    pins, matched = set(build.fp32_nodes), set()
    for layer in layers:
        implemented = pins & layer_nodes(layer.name, getattr(layer, "metadata", None))
        if not implemented:
            continue
        matched |= implemented
        layer.precision = float32
        for index in range(layer.num_outputs):
            if layer.get_output(index).dtype == float32:
                layer.set_output_type(index, float32)
        edits.fp32_layers.append(layer.name)
    edits.fp32_nodes_without_layer = [n for n in build.fp32_nodes if n not in matched]
    wanted = set(debug_tensors)
    for layer in layers:
        for index in range(layer.num_outputs):
            tensor = layer.get_output(index)
            if tensor.name in wanted and tensor.name not in edits.debug_tensors and network.mark_debug(tensor):
                edits.debug_tensors.append(tensor.name)
    if unfused_debug:
        edits.unfused_debug_tensors = bool(network.mark_unfused_tensors_as_debug_tensors())


def import_tensorrt():
    """tensorrt, once a CUDA GPU is known to be there; else TensorRTUnavailable with the one line to print."""
    try:
        import tensorrt
    except ImportError as exc:
        raise TensorRTUnavailable(f"TensorRT is not installed (no 'tensorrt' module); {INSTALL_HINT}") from exc
    try:
        import torch
        gpu = torch.cuda.is_available()
    except ImportError:
        gpu = False
    if not gpu:
        raise TensorRTUnavailable(f"TensorRT needs a CUDA GPU and none is visible; {INSTALL_HINT}")
    return tensorrt


def register_plugins() -> None:
    for package in OP_PACKAGES:
        importlib.import_module(f"{package}.trt").register_plugin()


def engine_loader(build: TensorRTBuild, onnx_path: Path, *, calibrator=None, load_timing_cache: Path | None = None,
                  save_timing_cache: Path | None = None, debug_tensors: Collection[str] = (),
                  unfused_debug: bool = False):
    """(Polygraphy loader of the serialized engine, the ``NetworkEdits`` it fills when called)."""
    trt = import_tensorrt()
    from polygraphy.backend.trt import (
        CreateConfig,
        EngineBytesFromNetwork,
        NetworkFromOnnxPath,
        PostprocessNetwork,
    )

    register_plugins()  # the parser finds brr's plugins in TensorRT's registry
    edits = NetworkEdits()
    edit = partial(edit_network, build=build, float32=trt.float32, edits=edits, debug_tensors=tuple(debug_tensors),
                   unfused_debug=unfused_debug)
    network = PostprocessNetwork(NetworkFromOnnxPath(str(onnx_path), strongly_typed=False), edit, name="brr-edits")
    config = CreateConfig(**build.config_arguments(calibrator, load_timing_cache))
    saved = None if save_timing_cache is None else str(save_timing_cache)
    return EngineBytesFromNetwork(network, config=config, save_timing_cache=saved), edits


def build_engine(
    onnx_path: Path, directory: Path, precision: str, fp32_nodes: list[str],
    batch: tuple[int, int, int], n_channels: int, window: int,
    calibration: Iterable[np.ndarray] | None = None,
) -> dict:
    """Write model.engine (with its timing cache, and the calibration cache for int8) into ``directory``;
    returns settings."""
    import_tensorrt()
    from polygraphy.backend.common import SaveBytes
    from polygraphy.backend.trt import Calibrator

    build = TensorRTBuild(precision, batch, n_channels, window, tuple(fp32_nodes))
    calibrator = None
    if precision == "int8":
        if calibration is None:
            raise EngineBuildError("int8 needs calibration windows (brr-export --data)")
        batches = [{INPUT_NAME: np.asarray(b, dtype=np.float32)} for b in calibration]
        calibrator = Calibrator(batches, cache=str(directory / CALIBRATION_CACHE_FILE))
    directory.mkdir(parents=True, exist_ok=True)
    for stale in (CALIBRATION_CACHE_FILE, TIMING_CACHE_FILE):  # a cache found there would be read, not made anew
        (directory / stale).unlink(missing_ok=True)
    loader, edits = engine_loader(build, onnx_path, calibrator=calibrator,
                                  save_timing_cache=directory / TIMING_CACHE_FILE)
    SaveBytes(loader, str(directory / MODEL_FILE))()
    return {"device": "cuda", "fp32_layers": len(edits.fp32_layers),
            "fp32_nodes_without_layer": edits.fp32_nodes_without_layer, "batch_profile": list(batch),
            "timing_cache": TIMING_CACHE_FILE}


class TensorRTRebuild:
    """Engines of edited copies of an artifact's ONNX graph, built exactly as the artifact's engine was:
    the manifest's ``TensorRTBuild``, the artifact's calibration cache (int8: the same scales, no new
    calibration) and the timing cache its build saved (the same kernels for the same layers)."""

    def __init__(self, build: TensorRTBuild, artifact: Path):
        self.build = build
        self.calibration_cache = artifact / CALIBRATION_CACHE_FILE if build.precision == "int8" else None
        if self.calibration_cache is not None and not self.calibration_cache.is_file():
            raise EngineBuildError(f"{artifact}: an int8 engine without its {CALIBRATION_CACHE_FILE}: a rebuild "
                                   "would calibrate anew and not be the engine under test")
        timing = artifact / TIMING_CACHE_FILE
        self.timing_cache = timing if timing.is_file() else None

    def engine_bytes(self, model, debug_tensors: Collection[str] = (), unfused_debug: bool = False
                     ) -> tuple[bytes, NetworkEdits]:
        """The serialized engine of ``model`` (an ``onnx.ModelProto``), and what was edited in its network."""
        import onnx

        import_tensorrt()  # before any work
        with tempfile.TemporaryDirectory(prefix="brr-trt-") as tmp:
            path = Path(tmp) / EDITED_ONNX_FILE
            onnx.save(model, str(path))
            calibrator = None
            if self.calibration_cache is not None:
                from polygraphy.backend.trt import Calibrator

                cache = Path(tmp) / CALIBRATION_CACHE_FILE
                shutil.copyfile(self.calibration_cache, cache)  # TensorRT may write it back: never into the artifact
                calibrator = Calibrator([], cache=str(cache))  # read from the cache: no batch is asked for
            loader, edits = engine_loader(self.build, path, calibrator=calibrator, load_timing_cache=self.timing_cache,
                                          debug_tensors=debug_tensors, unfused_debug=unfused_debug)
            return loader(), edits

    def runner_for(self, model, name: str):
        """Polygraphy's TrtRunner over an engine of ``model`` built with the artifact's settings."""
        from polygraphy.backend.trt import EngineFromBytes, TrtRunner

        engine, _ = self.engine_bytes(model)
        return TrtRunner(EngineFromBytes(engine), name=name)
