"""Checkpoints: a directory with ``model.safetensors`` and ``config.json``. Never pickle.

``config.json`` holds the full detector config, its digest and the package version; loading
rebuilds the model from it and refuses weights whose names or shapes differ, saying which.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

import brr
from brr.model.config import ConfigError, resolve_config
from brr.model.detector import V3Detector

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"


class CheckpointError(ValueError):
    """A checkpoint directory that cannot be loaded; the message says which file and what differs."""


def build_detector(name_or_config: Any = "v3", guards: bool | None = None) -> V3Detector:
    """Build the detector from a preset name, a config file, a dict or a DetectorConfig.

    ``guards`` overrides the config's guards setting when given.
    """
    overrides = {} if guards is None else {"guards": bool(guards)}
    return V3Detector(resolve_config(name_or_config, **overrides))


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_checkpoint(model: V3Detector, directory: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """Write weights and config atomically enough for a rerun: weights first, config last."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    tmp_weights = directory / (WEIGHTS_FILE + ".tmp")
    save_file(state, str(tmp_weights), metadata={"brr_version": brr.__version__})
    tmp_weights.replace(directory / WEIGHTS_FILE)
    meta = {
        "config": model.config.to_dict(),
        "config_digest": model.config.digest(),
        "brr_version": brr.__version__,
        "weights_sha256": file_sha256(directory / WEIGHTS_FILE),
        **(extra or {}),
    }
    tmp_config = directory / (CONFIG_FILE + ".tmp")
    tmp_config.write_text(json.dumps(meta, indent=2, sort_keys=True))
    tmp_config.replace(directory / CONFIG_FILE)
    return directory


def read_checkpoint_meta(directory: str | Path) -> dict[str, Any]:
    path = Path(directory) / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(f"{directory}: not a checkpoint directory (no {CONFIG_FILE})")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: invalid JSON: {exc}") from exc


def load_checkpoint(directory: str | Path, map_location: str | torch.device = "cpu") -> V3Detector:
    """Rebuild the model from ``config.json`` and load ``model.safetensors``; returns it in eval mode."""
    directory = Path(directory)
    meta = read_checkpoint_meta(directory)
    try:
        cfg = resolve_config(meta["config"])
    except (KeyError, ConfigError) as exc:
        raise CheckpointError(f"{directory / CONFIG_FILE}: {exc}") from exc
    if meta.get("config_digest") not in (None, cfg.digest()):
        raise CheckpointError(f"{directory / CONFIG_FILE}: config digest does not match its config")
    weights = directory / WEIGHTS_FILE
    if not weights.is_file():
        raise CheckpointError(f"{directory}: missing {WEIGHTS_FILE}")
    try:
        state = load_file(str(weights), device=str(map_location))
    except Exception as exc:  # safetensors raises its own error types for corrupt headers
        raise CheckpointError(f"{weights}: unreadable safetensors file: {exc}") from exc
    model = V3Detector(cfg)
    expected = model.state_dict()
    problems = [f"missing {k}" for k in expected if k not in state]
    problems += [f"unexpected {k}" for k in state if k not in expected]
    problems += [
        f"{k}: shape {tuple(state[k].shape)} != expected {tuple(v.shape)}"
        for k, v in expected.items() if k in state and state[k].shape != v.shape
    ]
    if problems:
        shown = "; ".join(problems[:8]) + (f"; ... ({len(problems)} in all)" if len(problems) > 8 else "")
        raise CheckpointError(f"{weights} does not fit config {cfg.name!r}: {shown}")
    model.load_state_dict(state)
    return model.eval()
