"""PyTorch runner: a checkpoint (or a model in memory) behind Polygraphy's runner interface.

Outputs ``logits``, and with ``probes=True`` every probe of ``brr.model.PROBE_NAMES``. ``autocast``
runs the fp32 weights under fp16/bf16 autocast, the reduced-precision reference of the diff;
``compile`` runs the forward through ``torch.compile``. ``part`` runs one part of the detector split into
front and rest (``brr.model.front``): its input, output and probes are the part's.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from polygraphy.backend.base import BaseRunner
from polygraphy.common import TensorMetadata
from polygraphy.datatype import DataType

from brr.backends.torch.loader import DetectorFromCheckpoint
from brr.model import INPUT_NAME, OUTPUT_NAME, PROBE_NAMES, V3Detector
from brr.model.contract import GraphPart

AUTOCAST_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


class TorchRunner(BaseRunner):
    def __init__(self, model: V3Detector | str | Path, probes: bool = False, autocast: str | None = None,
                 device: str = "cpu", compile: bool = False, name: str | None = None, part: GraphPart | None = None):
        super().__init__(name=name, prefix="torch-runner")
        self.source = model if isinstance(model, V3Detector) else DetectorFromCheckpoint(model)
        self.probes = probes
        if autocast is not None and autocast not in AUTOCAST_DTYPES:
            raise ValueError(f"autocast must be one of {sorted(AUTOCAST_DTYPES)}, got {autocast!r}")
        self.autocast = autocast
        self.device = torch.device(device)
        self.compile = compile
        self.part = part
        self.model: V3Detector | None = None
        self.forward = None

    def activate_impl(self):
        model = self.source if isinstance(self.source, V3Detector) else self.source()
        self.model = model.to(self.device).eval()
        method = {None: self.model, GraphPart.FRONT: self.model.forward_front,
                  GraphPart.REST: self.model.forward_rest}[self.part]
        forward = lambda x: method(x, return_probes=True)
        self.forward = torch.compile(forward, dynamic=True) if self.compile else forward

    def get_input_metadata_impl(self):
        cfg = self.model.config
        shape = {None: (-1, 19, cfg.window_samples), GraphPart.FRONT: (-1, 19, -1),
                 GraphPart.REST: (-1, 19, cfg.steps, cfg.electrode_dim)}[self.part]
        return TensorMetadata().add(self.input_name, DataType.FLOAT32, shape)

    @property
    def input_name(self) -> str:
        return INPUT_NAME if self.part is None else self.part.input_name

    def output_names(self) -> tuple[str, ...]:
        if self.part is not None:
            return self.part.probe_names if self.probes else (self.part.output_name,)
        return PROBE_NAMES if self.probes else (OUTPUT_NAME,)

    def infer_impl(self, feed_dict):
        x = torch.as_tensor(np.asarray(feed_dict[self.input_name], dtype=np.float32), device=self.device)
        start = time.perf_counter()
        with torch.inference_mode(), torch.autocast(
            self.device.type, dtype=AUTOCAST_DTYPES.get(self.autocast, torch.float32),
            enabled=self.autocast is not None,
        ):
            _, probes = self.forward(x)
        outputs = {name: probes[name].float().cpu().numpy() for name in self.output_names()}
        self.inference_time = time.perf_counter() - start
        return outputs

    def deactivate_impl(self):
        self.model = None
        self.forward = None
