"""The V3 dual-stream seizure detector in pure PyTorch: one file per stage, formula at its top.

The tensor contract (``brr.model.contract``) and the configuration import without PyTorch; the
network and its checkpoints import it on first use, so that serving an exported engine never does.
"""

import importlib

from brr.model.config import PRESETS, ConfigError, DetectorConfig, MambaConfig, resolve_config
from brr.model.contract import GRAPH_OUTPUT_NAMES, INPUT_NAME, OUTPUT_NAME, PROBE_NAMES, PROBE_SHAPES

# name -> the module that defines it, imported when the name is first asked for.
_NEEDS_TORCH = {
    "CheckpointError": "brr.model.checkpoint", "build_detector": "brr.model.checkpoint",
    "load_checkpoint": "brr.model.checkpoint", "save_checkpoint": "brr.model.checkpoint",
    "NonFiniteInputError": "brr.model.detector", "V3Detector": "brr.model.detector",
    "summarize_probes": "brr.model.detector",
}

__all__ = [
    "GRAPH_OUTPUT_NAMES", "INPUT_NAME", "OUTPUT_NAME", "PRESETS", "PROBE_NAMES", "PROBE_SHAPES", "CheckpointError", "ConfigError", "DetectorConfig",
    "MambaConfig", "NonFiniteInputError", "V3Detector", "build_detector", "load_checkpoint", "resolve_config", "save_checkpoint", "summarize_probes",
]


def __getattr__(name: str):
    if name in _NEEDS_TORCH:
        return getattr(importlib.import_module(_NEEDS_TORCH[name]), name)
    raise AttributeError(f"module 'brr.model' has no attribute {name!r}")
