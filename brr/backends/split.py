"""A detector exported as two graphs, its front and its rest (``brr.model.front``), as runners.

``SplitRunners`` holds a runner for each part and the front's geometry: ``brr-infer --window-mode overlap``
runs the front over a recording in chunks and the rest per window. ``ComposedRunner`` runs the two one
after the other on whole windows, so that the pair is one runner of the whole detector (``{"eeg": (B, 19,
N)}`` in, the logits and with probes every probe out): what verifies the pair against PyTorch fp32.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Self

import numpy as np
from polygraphy.backend.base import BaseRunner
from polygraphy.common import TensorMetadata
from polygraphy.datatype import DataType

from brr.model.contract import FRONT_OUTPUT_NAME, INPUT_NAME, OUTPUT_NAME, PROBE_NAMES
from brr.model.front import FrontGeometry


@dataclass
class SplitRunners:
    """The runners of a detector's front (``eeg`` -> ``electrodes``) and rest (``electrodes`` -> ``logits``)."""

    front: BaseRunner
    rest: BaseRunner
    geometry: FrontGeometry

    def activate(self) -> None:
        self.front.activate()
        try:
            self.rest.activate()
        except BaseException:
            self.front.deactivate()
            raise

    def deactivate(self) -> None:
        for runner in (self.front, self.rest):
            if runner.is_active:
                runner.deactivate()

    def __enter__(self) -> Self:
        self.activate()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.deactivate()

    def run_front(self, eeg: np.ndarray) -> np.ndarray:
        """(B, 19, N) float32 -> the electrode features (B, 19, N // downsample, D)."""
        return np.asarray(self.front.infer({INPUT_NAME: eeg})[FRONT_OUTPUT_NAME])

    def run_rest(self, electrodes: np.ndarray) -> np.ndarray:
        """(B, 19, T, D) electrode features of whole windows -> their logits (B, window)."""
        return np.asarray(self.rest.infer({FRONT_OUTPUT_NAME: electrodes})[OUTPUT_NAME])


class ComposedRunner(BaseRunner):
    """The front then the rest on whole windows: one runner of the detector, its outputs the parts' outputs
    (both parts' probes when their runners return them)."""

    def __init__(self, split: SplitRunners, name: str | None = None):
        super().__init__(name=name, prefix="composed-runner")
        self.split = split

    def activate_impl(self):
        self.split.activate()

    def get_input_metadata_impl(self):
        return TensorMetadata().add(INPUT_NAME, DataType.FLOAT32, (-1, 19, self.split.geometry.window))

    def infer_impl(self, feed_dict):
        start = time.perf_counter()
        front = self.split.front.infer({INPUT_NAME: feed_dict[INPUT_NAME]})
        rest = self.split.rest.infer({FRONT_OUTPUT_NAME: front[FRONT_OUTPUT_NAME]})
        outputs = {**front, **rest}
        self.inference_time = time.perf_counter() - start
        return {name: outputs[name] for name in PROBE_NAMES if name in outputs}

    def deactivate_impl(self):
        self.split.deactivate()
