"""TensorRT engines through Polygraphy's loaders; the pure logic is separate and testable without TensorRT.

Chain: NetworkFromOnnxPath (plugins of ``brr.ops.*.trt`` registered first) -> SetLayerPrecisions
(plan nodes -> fp32) -> CreateConfig(precision flags, one profile over the batch, precision
constraints "obey" when anything is pinned) -> EngineFromNetwork -> SaveEngine, for ``model.onnx``
and ``model.probed.onnx``. int8 uses Polygraphy's Calibrator over the given windows.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from brr.errors import DependencyUnavailable
from brr.export.engines.onnxruntime import EngineBuildError
from brr.export.onnx_export import OnnxExport
from brr.ops.registry import OP_PACKAGES
from brr.model.detector import INPUT_NAME

MODEL_FILE = "model.engine"
PROBED_MODEL_FILE = "model.probed.engine"
INSTALL_HINT = "install the GPU extras on a CUDA machine: pip install .[gpu]"
# TensorRT 10 records the ONNX node(s) a layer came from in layer.metadata as "[ONNX Layer: <name>]".
_ONNX_LAYER = re.compile(r"\[ONNX Layer: ([^\]]+)\]")


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
    """CreateConfig keyword arguments for ``precision`` (fp16 and bf16 also enabled for int8 fallbacks)."""
    flags = {"fp32": {}, "fp16": {"fp16": True}, "bf16": {"bf16": True},
             "int8": {"int8": True, "fp16": True}}
    if precision not in flags:
        raise EngineBuildError(f"TensorRT engine precision must be one of {sorted(flags)}, got {precision!r}")
    result = dict(flags[precision])
    if pinned:
        result["precision_constraints"] = "obey"
    return result


def pinned_layers(layers: Iterable[tuple[str, str]], fp32_nodes: Iterable[str]) -> list[str]:
    """Layer names (from (name, metadata) pairs) that implement a pinned ONNX node."""
    nodes = set(fp32_nodes)
    return [name for name, meta in layers
            if name in nodes or nodes.intersection(_ONNX_LAYER.findall(meta or ""))]


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


def build_tensorrt_engine(
    reference: OnnxExport, directory: Path, precision: str, fp32_nodes: list[str],
    batch: tuple[int, int, int], n_channels: int, window: int,
    calibration: Iterable[np.ndarray] | None = None,
) -> dict:
    """Write model.engine and model.probed.engine into ``directory``; returns settings."""
    trt = import_tensorrt()
    from polygraphy.backend.trt import (
        Calibrator,
        CreateConfig,
        EngineFromNetwork,
        NetworkFromOnnxPath,
        Profile,
        SaveEngine,
        SetLayerPrecisions,
    )

    register_plugins()
    profile = Profile()
    for name, (lo, opt, hi) in profile_shapes(batch, n_channels, window).items():
        profile.add(name, min=lo, opt=opt, max=hi)
    calibrator = None
    if precision == "int8":
        if calibration is None:
            raise EngineBuildError("int8 needs calibration windows (--calibration-data)")
        batches = [{INPUT_NAME: np.asarray(b, dtype=np.float32)} for b in calibration]
        calibrator = Calibrator(batches, cache=str(directory / "int8.cache"))
    directory.mkdir(parents=True, exist_ok=True)
    layer_count = 0
    for source, target in ((reference.model, MODEL_FILE), (reference.probed_model, PROBED_MODEL_FILE)):
        network = NetworkFromOnnxPath(str(source), strongly_typed=False)
        builder, net, parser = network()
        names = pinned_layers(((layer.name, getattr(layer, "metadata", "")) for layer in net), fp32_nodes)
        layer_count = max(layer_count, len(names))
        network = SetLayerPrecisions((builder, net, parser), {n: trt.float32 for n in names})
        config = CreateConfig(profiles=[profile], calibrator=calibrator, **config_flags(precision, bool(names)))
        SaveEngine(EngineFromNetwork(network, config=config), str(directory / target))()
    return {"device": "cuda", "fp32_layers": layer_count, "batch_profile": list(batch)}
