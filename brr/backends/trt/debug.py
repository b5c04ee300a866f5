"""An engine's intermediate tensors as TensorRT debug tensors, reduced on the GPU as they are made.

Marking tensors as engine outputs changes what TensorRT fuses, so a marked engine can pass where
the engine under test fails (TensorRT#4338), and every marked tensor is kept to the end of the run
(TensorRT#3161). Debug tensors (TensorRT >= 10) are handed to an ``IDebugListener`` while the
engine runs instead. The diff's listener reduces each one, on the stream that made it, to the four
statistics of ``brr.onnx.statistics.TensorRange`` and keeps only those scalars
(``DebugTensorRanges``); the probe runner's copies the served engine's probes to the host
(``DebugTensorCopies``, ``brr.backends.trt.runner``).

``TensorRTDebugStatistics`` reads them in one of two ways, and says which:

``debug_tensors``
    ``INetworkDefinition.mark_unfused_tensors_as_debug_tensors`` (TensorRT >= 10.12) on an engine
    built as the engine under test (``TensorRTRebuild``, from the artifact's typed graph): fusion is
    unchanged, every tensor TensorRT still stores is reported under its network (ONNX) name, and a
    tensor computed inside a fused kernel is not observable.
``marked_debug_tensors``
    ``INetworkDefinition.mark_debug`` on each listed tensor: each is observable, and TensorRT does
    not fuse across it. The diff asks for this only for the few tensors fused into the kernel where
    a non-finite value was first seen, or where TensorRT could not mark the unfused tensors.

Either way the run's own outputs come back too, so the diff checks that the engine reproduced the
logits of the engine under test.
"""

from __future__ import annotations

import ctypes
import math
from collections.abc import Iterable

import numpy as np
import torch

from brr.backends.trt.loader import TensorRTRebuild, import_tensorrt
from brr.onnx.statistics import ObservedRanges, TensorRange, tensor_range

# TensorRT DataType names of the types a debug tensor's values can be read in; others (int8, fp8: stored
# quantised, without their scales here; integer and boolean tensors) give no range.
FLOAT_TYPES = {"FLOAT": torch.float32, "HALF": torch.float16, "BF16": torch.bfloat16}

_capsule_name = ctypes.PYFUNCTYPE(ctypes.c_char_p, ctypes.py_object)(("PyCapsule_GetName", ctypes.pythonapi))
_capsule_pointer = ctypes.PYFUNCTYPE(ctypes.c_void_p, ctypes.py_object, ctypes.c_char_p)(
    ("PyCapsule_GetPointer", ctypes.pythonapi))


def buffer_address(addr) -> int:
    """The address of a debug tensor's buffer: an int from the TensorRT 10 bindings, a PyCapsule as their
    documentation gives the argument's type."""
    if isinstance(addr, int):
        return addr
    return _capsule_pointer(addr, _capsule_name(addr)) or 0


class CudaBuffer:
    """Device bytes described by ``__cuda_array_interface__``, which torch maps without a copy."""

    def __init__(self, address: int, nbytes: int):
        # Bytes, not the tensor's own type: the interface has no bfloat16, and a view gives any float type.
        self.__cuda_array_interface__ = {"shape": (nbytes,), "typestr": "|u1", "data": (address, False),
                                         "version": 2}


def debug_tensor_view(address: int, type_name: str, shape: Iterable[int], on_device: bool) -> torch.Tensor | None:
    """A zero-copy torch view of a debug tensor (valid during the callback), or None for a non-float type."""
    dtype = FLOAT_TYPES.get(type_name)
    if dtype is None:
        return None
    shape = tuple(int(d) for d in shape)
    nbytes = math.prod(shape) * dtype.itemsize
    device = "cuda" if on_device else "cpu"
    if nbytes == 0:
        return torch.empty(shape, dtype=dtype, device=device)
    if on_device:
        raw = torch.as_tensor(CudaBuffer(address, nbytes), device=device)
    else:
        raw = torch.frombuffer((ctypes.c_uint8 * nbytes).from_address(address), dtype=torch.uint8)
    return raw.view(dtype).reshape(shape)


class DebugTensorCollector:
    """What a listener hands the wanted debug tensors to, while the callback holds their buffers; errors are
    kept and raised after the run (``check``), since TensorRT swallows what a listener raises."""

    def __init__(self, wanted: Iterable[str]):
        self.wanted = set(wanted)
        self.errors: list[str] = []

    def keep(self, name: str, values: torch.Tensor) -> None:
        raise NotImplementedError

    def unreadable(self, name: str, type_name: str) -> None:
        """A wanted tensor of a type whose values cannot be read here (``FLOAT_TYPES`` are)."""

    def add(self, name: str, addr, type_name: str, shape: Iterable[int], on_device: bool, stream: int) -> None:
        if name not in self.wanted:
            return
        try:
            values = debug_tensor_view(buffer_address(addr), type_name, shape, on_device)
            if values is None:
                self.unreadable(name, type_name)
            elif on_device:
                # Queued on the stream that made the tensor, after the kernel that wrote it; reading the
                # result back waits for it, so the buffer is read while the callback still holds it.
                with torch.cuda.stream(torch.cuda.ExternalStream(stream)):
                    self.keep(name, values)
            else:
                self.keep(name, values)
        except Exception as error:  # noqa: BLE001 - TensorRT swallows a listener's exceptions; raised after the run
            self.errors.append(f"{name}: {type(error).__name__}: {error}")

    def check(self) -> None:
        if self.errors:
            shown = "; ".join(self.errors[:3])
            raise RuntimeError(f"{len(self.errors)} TensorRT debug tensor(s) could not be read: {shown}")


class DebugTensorRanges(DebugTensorCollector):
    """What the diff's listener keeps: the ``TensorRange`` of each wanted debug tensor, and nothing else.
    Tensors stored quantised (int8, fp8) or of integer types give no range."""

    def __init__(self, wanted: Iterable[str]):
        super().__init__(wanted)
        self.ranges: dict[str, TensorRange] = {}

    def keep(self, name: str, values: torch.Tensor) -> None:
        self.ranges[name] = tensor_range(values)


class DebugTensorCopies(DebugTensorCollector):
    """What the probe runner's listener keeps: a float32 host copy of each wanted debug tensor of the last run."""

    def __init__(self, wanted: Iterable[str]):
        super().__init__(wanted)
        self.arrays: dict[str, np.ndarray] = {}

    def clear(self) -> None:
        self.arrays.clear()
        self.errors.clear()

    def keep(self, name: str, values: torch.Tensor) -> None:
        self.arrays[name] = values.float().cpu().numpy().copy()  # a copy: the buffer is TensorRT's

    def unreadable(self, name: str, type_name: str) -> None:
        self.errors.append(f"{name}: a {type_name} debug tensor has no values to copy")


def debug_listener(trt, collector: DebugTensorCollector):
    """A ``tensorrt.IDebugListener`` handing every debug tensor to ``collector``."""

    class CollectingListener(trt.IDebugListener):
        def __init__(self):
            trt.IDebugListener.__init__(self)

        def process_debug_tensor(self, addr, location, type, shape, name, stream):
            collector.add(name, addr, type.name, tuple(shape), location == trt.TensorLocation.DEVICE, stream)
            return True

    return CollectingListener()


def output_ranges(names: Iterable[str], ranges: dict[str, TensorRange], outputs: dict[str, np.ndarray]
                  ) -> dict[str, TensorRange]:
    """``ranges`` completed from the run's outputs for wanted tensors that are engine outputs (probes) and
    that the listener was not given."""
    completed = dict(ranges)
    for name in names:
        if name not in completed and name in outputs:
            completed[name] = tensor_range(torch.as_tensor(np.asarray(outputs[name])))
    return completed


class TensorRTDebugStatistics:
    """``Engine.tensor_statistics`` of a TensorRT artifact: (names, feed, materialise) -> ``ObservedRanges``.

    ``materialise=False`` reads the engine as built (``debug_tensors``; built once, run for every
    input); ``materialise=True``, or a network whose unfused tensors TensorRT could not mark, marks each
    named tensor (``marked_debug_tensors``; built for those names, kept while the same names are asked for).
    """

    def __init__(self, model, rebuild: TensorRTRebuild):
        self.model = model  # the typed graph the artifact's engine was built from
        self.rebuild = rebuild
        self._as_built: bytes | None = None
        self._unfused = True  # until a build shows that TensorRT cannot mark unfused tensors
        self._marked: tuple[tuple[str, ...], bytes] | None = None  # the last names marked, and their engine

    def __call__(self, names: list[str], feed: dict, materialise: bool = False) -> ObservedRanges:
        trt = import_tensorrt()
        if not materialise and self._unfused:
            if self._as_built is None:
                engine, edits = self.rebuild.engine_bytes(self.model, unfused_debug=True)
                self._unfused = edits.unfused_debug_tensors
                self._as_built = engine if self._unfused else None
            if self._as_built is not None:
                ranges, outputs = run_with_listener(trt, self._as_built, feed, names, unfused=True)
                return ObservedRanges(output_ranges(names, ranges, outputs), outputs, "debug_tensors")
        if self._marked is None or self._marked[0] != tuple(names):
            self._marked = (tuple(names), self.rebuild.engine_bytes(self.model, debug_tensors=names)[0])
        ranges, outputs = run_with_listener(trt, self._marked[1], feed, names, unfused=False)
        return ObservedRanges(output_ranges(names, ranges, outputs), outputs, "marked_debug_tensors")


def run_with_listener(trt, engine: bytes, feed: dict, names: Iterable[str], unfused: bool
                      ) -> tuple[dict[str, TensorRange], dict[str, np.ndarray]]:
    """One run of the serialized ``engine`` with its debug tensors on: (ranges of ``names``, outputs)."""
    from polygraphy.backend.trt import EngineFromBytes, TrtRunner

    collector = DebugTensorRanges(names)
    listener = debug_listener(trt, collector)
    with TrtRunner(EngineFromBytes(engine), name="brr-debug-tensors", debug_listener=listener) as runner:
        runner.context.set_all_tensors_debug_state(True)
        if unfused:
            runner.context.unfused_tensors_debug_state = True
        # Copies: the runner reuses its host buffers.
        outputs = {name: np.array(value) for name, value in runner.infer(feed).items()}
    collector.check()
    return collector.ranges, outputs
