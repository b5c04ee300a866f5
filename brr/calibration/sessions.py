"""ONNX Runtime sessions the calibration search reuses: one per distinct graph, a bounded number alive.

The search runs the same graphs again and again: the instrumented fp32 graph (the fp32 pass, then
the fp32 side of every node-level scan) and the instrumented engine of one pinned set (its
evaluation, then the scan that localises its failure). A session is keyed by the bytes of its graph,
so a graph built again the same way finds its session. The graphs marked ``keep`` (the fp32
statistics graph) stay for the whole search; of the others at most ``capacity`` stay, the least
recently used given up first. Sessions are lean (no memory arena: a run's tensors go back to the
system when it ends; priority-based order: statistics nodes run as soon as their tensor exists), so an
idle session holds its graph and weights, not a run's activations.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict

import onnx
import onnxruntime as ort

from brr.backends.onnxrt.loader import SessionWithCustomOps
from brr.backends.onnxrt.runner import SelectedOutputsRunner

DEFAULT_CAPACITY = 2


class SessionCache:
    def __init__(self, capacity: int = DEFAULT_CAPACITY):
        self.capacity = capacity
        self.kept: dict[str, ort.InferenceSession] = {}
        self.recent: OrderedDict[str, ort.InferenceSession] = OrderedDict()
        self.created = 0

    def runner(self, model: onnx.ModelProto, name: str, keep: bool = False) -> SelectedOutputsRunner:
        """A Polygraphy runner over the session of ``model`` (made on first activation, then reused)."""
        return SelectedOutputsRunner(lambda: self._session(model, keep), name=name)

    def _session(self, model: onnx.ModelProto, keep: bool) -> ort.InferenceSession:
        data = model.SerializeToString()
        key = hashlib.sha256(data).hexdigest()
        if key in self.kept:
            return self.kept[key]
        if key in self.recent:
            self.recent.move_to_end(key)
            return self.recent[key]
        session = SessionWithCustomOps(model, lean=True)()
        self.created += 1
        if keep:
            self.kept[key] = session
        else:
            self.recent[key] = session
            while len(self.recent) > self.capacity:
                self.recent.popitem(last=False)
        return session

    def close(self) -> None:
        self.kept.clear()
        self.recent.clear()
