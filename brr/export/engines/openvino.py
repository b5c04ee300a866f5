"""OpenVINO engines (CPU): the reference ONNX converted to IR; precision is a compile-time hint.

A plugin-mode export (``--ops plugin``) converts with brr's OpenVINO extension
(``brr.ops.registry.openvino_extension()``): each custom node becomes the extension's operation, run by
the ops' native CPU kernels, and the runner loads the same extension before reading the IR.

The IR keeps fp32 weights (no fp16 compression) so one IR serves every precision; the manifest's
``settings.inference_precision`` is the ``INFERENCE_PRECISION_HINT`` the runner compiles it with
(bf16 runs on AMX/AVX512-BF16 CPUs, f16 where the CPU has it). The build compiles it once to prove
the hint is accepted here.
"""

from __future__ import annotations

from pathlib import Path

import openvino as ov

from brr.export.engines.onnxruntime import EngineBuildError
from brr.export.onnx_export import OnnxExport
from brr.ops import registry

PRECISION_HINTS = {"fp32": "f32", "bf16": "bf16", "fp16": "f16"}
MODEL_FILE = "model.xml"


def build_openvino_engine(reference: OnnxExport, directory: Path, precision: str) -> dict:
    """Write model.xml/.bin (every probe an output, as in the ONNX) into ``directory``; returns settings."""
    if precision not in PRECISION_HINTS:
        raise EngineBuildError(f"OpenVINO engines are {sorted(PRECISION_HINTS)}, not {precision!r}")
    extensions = openvino_extensions(reference.ops)
    directory.mkdir(parents=True, exist_ok=True)
    core = ov.Core()
    for extension in extensions:
        core.add_extension(extension)
    ov.save_model(ov.convert_model(str(reference.model), extension=extensions or None), str(directory / MODEL_FILE),
                  compress_to_fp16=False)
    compiled = core.compile_model(str(directory / MODEL_FILE), "CPU",
                                  {"INFERENCE_PRECISION_HINT": PRECISION_HINTS[precision]})
    return {"device": "CPU", "inference_precision": PRECISION_HINTS[precision],
            "compiled_precision": str(compiled.get_property("INFERENCE_PRECISION_HINT"))}


def openvino_extensions(ops: str) -> list[str]:
    """The extension libraries an OpenVINO engine of an ``ops``-mode export needs (none for standard ops)."""
    if ops == "standard":
        return []
    try:
        return [str(registry.openvino_extension())]
    except ImportError as error:
        raise EngineBuildError(f"an OpenVINO engine of the plugin-mode export needs brr's extension: {error}") from error
