"""The custom ops as a set: how the exporter translates them and how runtimes load their kernels.

Each op folder provides the same files (see ``brr/ops/<op>/__init__.py`` for the spec):
``onnx.py`` with ``translations(mode) -> {torch op overload: onnxscript function}`` for
``mode in OPS_MODES``; ``ort.py`` whose import registers the ONNX Runtime kernel of the custom node;
``trt.py`` with the TensorRT plugin. Adding an op means adding its folder and its name below.
"""

from __future__ import annotations

import importlib

OP_PACKAGES: tuple[str, ...] = ("brr.ops.selective_scan", "brr.ops.eigh")
OPS_MODES: tuple[str, ...] = ("standard", "plugin")
ONNX_OPSET = 18


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
