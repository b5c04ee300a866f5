"""ONNX's numpy reference evaluator as a runner: true fp16 arithmetic on any CPU, for small graphs."""

from __future__ import annotations

import numpy as np
import onnx
from polygraphy.backend.base import BaseRunner

from brr.onnx.edit import topologically_sorted


class OnnxReferenceRunner(BaseRunner):
    """ONNX's numpy reference evaluator behind Polygraphy's runner interface.

    Every node computes in its graph's dtype and rounds its output there, so an fp16-typed graph shows
    the overflows and underflows of true fp16 arithmetic on any CPU. Slow: for small graphs.
    """

    def __init__(self, model: onnx.ModelProto, name: str | None = None):
        super().__init__(name=name, prefix="onnx-reference-runner")
        self.model = model
        self.evaluator = None

    def activate_impl(self):
        from onnx.reference import ReferenceEvaluator

        self.evaluator = ReferenceEvaluator(topologically_sorted(self.model))

    def get_input_metadata_impl(self):
        from polygraphy.backend.onnx.util import get_input_metadata

        return get_input_metadata(self.model.graph)

    def infer_impl(self, feed_dict):
        names = [o.name for o in self.model.graph.output]
        with np.errstate(all="ignore"):  # overflow to inf is what this runner is for
            return dict(zip(names, self.evaluator.run(names, feed_dict)))

    def deactivate_impl(self):
        self.evaluator = None
