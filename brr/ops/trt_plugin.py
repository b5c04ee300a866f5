"""What brr's TensorRT plugins share: their two implementations, when the ahead-of-time one is there, and
the GPU it is compiled for.

Each op's ``trt.py`` registers a TensorRT "quickly deployable" plugin (``tensorrt.plugin``) with a JIT
implementation (Python run inside the engine: the engine runs only in a Python process that registered
it) and, where ``aot_supported`` says so, an AOT one: a Triton kernel compiled to PTX (``brr.ops.ptx``)
that the engine embeds, so that trtexec, C++ and Triton Inference Server run it without Python. With both
registered, TensorRT's plugin creator takes the one the network's creation flag prefers
(``preference_flag``); with one, that one. The TensorRT loader prefers AOT on every network and records
what each plugin layer got.

``tensorrt``, ``torch`` and ``triton`` are imported by the functions that need them, never at import.
"""

from __future__ import annotations

import importlib.util
from enum import Enum

from brr.errors import DependencyUnavailable
from brr.ops import ptx

INSTALL_HINT = "install the GPU extras on a CUDA machine: pip install .[gpu]"


class PluginImplementation(Enum):
    """How an engine runs a brr plugin."""

    AOT = "aot"  # a compiled kernel embedded in the engine: runs without Python (trtexec, C++)
    JIT = "jit"  # Python called by the engine: runs only in a Python process that registered brr's plugins


# NetworkDefinitionCreationFlag that makes the ONNX parser create each implementation where both exist.
PREFERENCE_FLAGS = {PluginImplementation.AOT: "PREFER_AOT_PYTHON_PLUGINS",
                    PluginImplementation.JIT: "PREFER_JIT_PYTHON_PLUGINS"}

_registered: dict[str, tuple[PluginImplementation, ...]] = {}


def import_tensorrt_plugin(plugin_id: str):
    """(tensorrt, tensorrt.plugin), or ``DependencyUnavailable`` naming the plugin and what to install."""
    try:
        import tensorrt
        import tensorrt.plugin as trtp
    except ImportError as error:
        raise DependencyUnavailable(f"the TensorRT plugin {plugin_id} needs the 'tensorrt' package (>= 10.12, "
                                    f"with tensorrt.plugin); {INSTALL_HINT}") from error
    return tensorrt, trtp


def gpu_capability() -> int | None:
    """Compute capability (major * 10 + minor) of the current CUDA device, the one TensorRT builds on: from
    torch, else from cuda-python; None where neither finds a device."""
    try:
        import torch
    except ImportError:
        torch = None
    if torch is not None and torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability()
        return 10 * major + minor
    try:
        from cuda.bindings import runtime
    except ImportError:
        return None
    status, device = runtime.cudaGetDevice()
    if status != runtime.cudaError_t.cudaSuccess:
        return None
    values = []
    for attribute in (runtime.cudaDeviceAttr.cudaDevAttrComputeCapabilityMajor,
                      runtime.cudaDeviceAttr.cudaDevAttrComputeCapabilityMinor):
        status, value = runtime.cudaDeviceGetAttribute(attribute, device)
        if status != runtime.cudaError_t.cudaSuccess:
            return None
        values.append(value)
    return 10 * values[0] + values[1]


def aot_supported(tensorrt_has_aot: bool, triton_installed: bool, capability: int | None) -> bool:
    """Whether an AOT implementation can be built: TensorRT has AOT plugins, triton compiles the kernel and
    ``brr.ops.ptx`` has a target that runs on the GPU (None: no GPU)."""
    return tensorrt_has_aot and triton_installed and capability is not None and ptx.ptx_target(capability) is not None


def aot_supported_here(trt) -> bool:
    """``aot_supported`` for the installed TensorRT ``trt``, triton and the current GPU."""
    return aot_supported(hasattr(trt, "QuickPluginCreationRequest"), importlib.util.find_spec("triton") is not None,
                         gpu_capability())


def record_registration(plugin_id: str, implementations: tuple[PluginImplementation, ...]) -> None:
    _registered[plugin_id] = implementations


def registered_implementations(plugin_id: str) -> tuple[PluginImplementation, ...]:
    """The implementations of ``plugin_id`` registered in this process (none before its ``register_plugin()``)."""
    return _registered.get(plugin_id, ())


def preference_flag(trt, implementation: PluginImplementation) -> int:
    """``Builder.create_network`` flag bit that makes the ONNX parser create ``implementation`` where both are
    registered; OR it with the network's other flags."""
    return 1 << int(getattr(trt.NetworkDefinitionCreationFlag, PREFERENCE_FLAGS[implementation]))
