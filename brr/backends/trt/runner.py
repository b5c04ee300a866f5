"""The runner of a TensorRT engine file: ``logits``, and for the diff the probes of the same engine.

A serving engine's only output is ``logits``; its probes are debug tensors (``brr.backends.trt.loader``),
which cost nothing while they are off. Serving turns every debug tensor off; with ``probes`` the runner
turns those on and copies them out as the engine writes them, so the engine the diff verifies is the
engine file ``brr-infer`` serves. A probe that an engine (an older export) has as an output is read there.
"""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path

from polygraphy.backend.common import BytesFromPath
from polygraphy.backend.trt import EngineFromBytes, TrtRunner

from brr.backends.trt.loader import import_tensorrt, register_plugins
from brr.model.contract import OUTPUT_NAME


class TensorRTEngineRunner(TrtRunner):
    """Polygraphy's TrtRunner returning ``logits``, and each of ``probes`` from the engine's outputs or its
    debug tensors."""

    def __init__(self, engine, name: str | None = None, probes: Collection[str] = ()):
        self.probes = tuple(probes)
        self.copies = None
        listener = None
        if self.probes:
            # Copies on the GPU stream that made each tensor need PyTorch: the diff has it, serving does not.
            from brr.backends.trt.debug import DebugTensorCopies, debug_listener

            self.copies = DebugTensorCopies(self.probes)
            listener = debug_listener(import_tensorrt(), self.copies)
        super().__init__(engine, name=name, debug_listener=listener)

    def activate(self):
        super().activate()
        # Polygraphy turns every debug tensor on at activation: serving reads none, the diff the probes only.
        self.context.set_all_tensors_debug_state(False)
        for name in self.probes:
            if self.engine.is_debug_tensor(name):
                self.context.set_tensor_debug_state(name, True)

    def infer(self, feed_dict, check_inputs=True, *args, **kwargs):
        if self.copies is not None:
            self.copies.clear()
        results = super().infer(feed_dict, check_inputs, *args, **kwargs)
        selected = {OUTPUT_NAME: results[OUTPUT_NAME]}
        if self.copies is None:
            return selected
        self.copies.check()
        found = {name: results[name] for name in self.probes if name in results} | self.copies.arrays
        missing = [name for name in self.probes if name not in found]
        if missing:
            raise RuntimeError(f"{self.name}: the engine gave no {missing}, neither as outputs nor as debug tensors")
        return selected | {name: found[name] for name in self.probes}


def tensorrt_runner(engine_path: str | Path, name: str | None = None, probes: Collection[str] = ()
                    ) -> TensorRTEngineRunner:
    """The runner of the engine file; its deserialisation waits for activation."""
    import_tensorrt()
    # Plugins that run their JIT implementation (Python) must be registered before deserialising.
    register_plugins()
    return TensorRTEngineRunner(EngineFromBytes(BytesFromPath(str(engine_path))), name=name, probes=probes)
