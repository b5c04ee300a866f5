"""The custom ops as a set: how the exporter translates them and how runtimes load their kernels.

Each op folder provides the same files (see ``brr/ops/<op>/__init__.py`` for the spec):
``onnx.py`` with ``translations(mode) -> {torch op overload: onnxscript function}`` for
``mode in OPS_MODES``; ``ort.py`` whose import registers the ONNX Runtime kernel of the custom node;
``trt.py`` with the TensorRT plugin; ``csrc/openvino.cpp`` with its OpenVINO operation and ONNX frontend
conversion, compiled into the one extension library of ``openvino_extension()``. Adding an op means adding
its folder and its name below.
"""

from __future__ import annotations

import importlib
from pathlib import Path

OP_PACKAGES: tuple[str, ...] = ("brr.ops.selective_scan", "brr.ops.eigh")
OPS_MODES: tuple[str, ...] = ("standard", "plugin")
ONNX_OPSET = 18
OPENVINO_EXTENSION_FILE = "libbrr_openvino.so.1"


def translation_table(mode: str) -> dict:
    """All ops' ONNX translations for ``mode``: only standard ops, or one custom node per op."""
    if mode not in OPS_MODES:
        raise ValueError(f"ops mode must be one of {OPS_MODES}, got {mode!r}")
    table: dict = {}
    for package in OP_PACKAGES:
        table.update(importlib.import_module(f"{package}.onnx").translations(mode))
    return table


def load_ort_kernels() -> None:
    """Import every op's ONNX Runtime kernel so that sessions made afterwards can run custom nodes."""
    for package in OP_PACKAGES:
        importlib.import_module(f"{package}.ort")


def openvino_extension() -> Path:
    """The OpenVINO extension library of every op, built by ``pip install`` beside the native module.

    Raises ``NativeKernelMissing`` (an ImportError) saying what to do when it is absent or was built
    against another openvino release than the one imported here (its libraries' sonames carry the release).
    """
    import openvino

    from brr.ops.selective_scan import native

    module = native.require()
    path = Path(module.__file__).parent.parent / OPENVINO_EXTENSION_FILE
    if not path.is_file():
        raise native.NativeKernelMissing(f"{path}: brr's OpenVINO extension is missing; {native.BUILD_HINT}")
    built, running = module.OPENVINO_VERSION, openvino.get_version()
    if built != running:
        raise native.NativeKernelMissing(
            f"{path} was built against openvino {built} but openvino {running} is installed; reinstall brr "
            f"(pip install -e .) or install the openvino release it was built with")
    return path
