"""The V3 dual-stream seizure detector in pure PyTorch: one file per stage, formula at its top."""

from brr.model.checkpoint import CheckpointError, build_detector, load_checkpoint, save_checkpoint
from brr.model.config import PRESETS, ConfigError, DetectorConfig, MambaConfig, resolve_config
from brr.model.detector import (INPUT_NAME, OUTPUT_NAME, PROBE_NAMES, PROBE_SHAPES, NonFiniteInputError,
                                V3Detector, summarize_probes)

__all__ = [
    "INPUT_NAME", "OUTPUT_NAME", "PRESETS", "PROBE_NAMES", "PROBE_SHAPES", "CheckpointError", "ConfigError", "DetectorConfig",
    "MambaConfig", "NonFiniteInputError", "V3Detector", "build_detector", "load_checkpoint", "resolve_config", "save_checkpoint", "summarize_probes",
]
