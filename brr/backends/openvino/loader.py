"""OpenVINO engines (CPU): the fp32 export converted to IR; the precision is a compile-time hint.

A plugin-mode export (``--ops plugin``) converts with brr's OpenVINO extension
(``brr.ops.registry.openvino_extension()``): each custom node becomes the extension's operation, run
by the ops' native CPU kernels, and ``CompiledModel`` adds the same extension before reading the IR.

The IR keeps fp32 weights (no fp16 compression) so one IR serves every precision; the manifest's
``settings.inference_precision`` is the ``INFERENCE_PRECISION_HINT`` the engine is compiled with
(bf16 runs on AMX/AVX512-BF16 CPUs, f16 where the CPU has it). The build compiles it once to prove
the hint is accepted here.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import openvino as ov
from polygraphy.backend.base import BaseLoader

from brr.backends.base import EngineBuildError
from brr.ops import registry

MODEL_FILE = "model.xml"
PRECISION_HINTS = {"fp32": "f32", "bf16": "bf16", "fp16": "f16"}


def openvino_extensions(ops: str) -> list[str]:
    """The extension libraries an OpenVINO engine of an ``ops``-mode export needs (none for standard ops)."""
    if ops == "standard":
        return []
    try:
        return [str(registry.openvino_extension())]
    except ImportError as error:
        raise EngineBuildError(f"an OpenVINO engine of the plugin-mode export needs brr's extension: {error}") from error


class CompiledModel(BaseLoader):
    """IR path -> ``openvino.CompiledModel`` with ``inference_precision`` (an OpenVINO hint), extensions first."""

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

    def call_impl(self) -> ov.CompiledModel:
        core = ov.Core()
        for extension in self.extensions:
            core.add_extension(extension)
        return core.compile_model(str(self.model_path), self.device, self.config)


def build_engine(onnx_path: Path, ops: str, directory: Path, precision: str) -> dict:
    """Write model.xml/.bin (every probe an output, as in the ONNX) into ``directory``; returns settings."""
    if precision not in PRECISION_HINTS:
        raise EngineBuildError(f"OpenVINO engines are {sorted(PRECISION_HINTS)}, not {precision!r}")
    extensions = openvino_extensions(ops)
    directory.mkdir(parents=True, exist_ok=True)
    ov.save_model(ov.convert_model(str(onnx_path), extension=extensions or None), str(directory / MODEL_FILE),
                  compress_to_fp16=False)
    compiled = CompiledModel(directory / MODEL_FILE, PRECISION_HINTS[precision], extensions=extensions)()
    return {"device": "CPU", "inference_precision": PRECISION_HINTS[precision],
            "compiled_precision": str(compiled.get_property("INFERENCE_PRECISION_HINT"))}
