"""Checkpoints: a directory with ``model.safetensors`` and ``config.json``. Never pickle.

``config.json`` holds the full detector config and its digest, the SHA-256 of ``model.safetensors``,
the package version, what training recorded (e.g. the post-processing it chose), and ``meta_sha256``,
the SHA-256 of all of that (canonical JSON), so no byte of it can change unnoticed. Loading verifies
everything before a weight is used, and refuses (with :class:`CheckpointError`, naming the file) a
missing digest, a ``config.json`` or config that does not match its digest, weights that do not match
their hash, weights whose names or shapes differ from the config's model, and non-finite weights
(naming the tensors): a checkpoint that loads is the one that was saved.

PyTorch is imported by the functions that build, save or load a model, not by this module: reading
a checkpoint's metadata and hashing files are part of serving exported engines, which never need it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import brr
from brr.atomic import atomic_write_bytes, atomic_write_text
from brr.errors import InputError
from brr.model.config import ConfigError, resolve_config

if TYPE_CHECKING:
    import torch

    from brr.model.detector import V3Detector

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
META_DIGEST_KEY = "meta_sha256"


class CheckpointError(InputError):
    """A checkpoint directory that cannot be loaded; the message says which file and what differs."""


def build_detector(name_or_config: Any = "v3", guards: bool | None = None) -> V3Detector:
    """Build the detector from a preset name, a config file, a dict or a DetectorConfig.

    ``guards`` overrides the config's guards setting when given.
    """
    from brr.model.detector import V3Detector

    overrides = {} if guards is None else {"guards": bool(guards)}
    return V3Detector(resolve_config(name_or_config, **overrides))


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_checkpoint(model: V3Detector, directory: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """Write weights, then the config that vouches for them (digest and weights hash), each atomically."""
    from safetensors.torch import save

    directory = Path(directory)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    weights = save(state, metadata={"brr_version": brr.__version__})
    atomic_write_bytes(directory / WEIGHTS_FILE, weights)
    meta = {
        "config": model.config.to_dict(),
        "config_digest": model.config.digest(),
        "brr_version": brr.__version__,
        "weights_sha256": hashlib.sha256(weights).hexdigest(),
        **(extra or {}),
    }
    meta[META_DIGEST_KEY] = meta_digest(meta)
    atomic_write_text(directory / CONFIG_FILE, json.dumps(meta, indent=2, sort_keys=True))
    return directory


def meta_digest(meta: dict[str, Any]) -> str:
    """SHA-256 of the canonical JSON of ``meta`` without its own digest."""
    body = {key: value for key, value in meta.items() if key != META_DIGEST_KEY}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def read_checkpoint_meta(directory: str | Path) -> dict[str, Any]:
    path = Path(directory) / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(f"{directory}: not a checkpoint directory (no {CONFIG_FILE})")
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: invalid JSON: {exc}") from exc
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path}: not a checkpoint config (a JSON object is expected)")
    return meta


def load_checkpoint(directory: str | Path, map_location: str | torch.device = "cpu") -> V3Detector:
    """Rebuild the model from ``config.json`` and load ``model.safetensors``, verified (see the module
    docstring); returns it in eval mode."""
    import torch
    from safetensors.torch import load_file

    from brr.model.detector import V3Detector

    directory = Path(directory)
    meta = read_checkpoint_meta(directory)
    config_path = directory / CONFIG_FILE
    try:
        cfg = resolve_config(meta["config"])
    except (KeyError, ConfigError) as exc:
        raise CheckpointError(f"{config_path}: {exc}") from exc
    for key in (META_DIGEST_KEY, "config_digest", "weights_sha256"):
        if not isinstance(meta.get(key), str):
            raise CheckpointError(f"{config_path}: no {key}, so the checkpoint cannot be verified "
                                  "(write checkpoints with brr.model.save_checkpoint)")
    if meta[META_DIGEST_KEY] != meta_digest(meta):
        raise CheckpointError(f"{config_path}: does not match its {META_DIGEST_KEY} (edited after saving)")
    if meta["config_digest"] != cfg.digest():
        raise CheckpointError(f"{config_path}: config digest does not match its config (edited after saving)")
    weights = directory / WEIGHTS_FILE
    if not weights.is_file():
        raise CheckpointError(f"{directory}: missing {WEIGHTS_FILE}")
    if file_sha256(weights) != meta["weights_sha256"]:
        raise CheckpointError(f"{weights}: does not match the weights_sha256 recorded in {CONFIG_FILE} "
                              "(changed or replaced after saving)")
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
        raise CheckpointError(f"{weights} does not fit config {cfg.name!r}: {_shown(problems)}")
    nonfinite = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if nonfinite:
        raise CheckpointError(f"{weights}: non-finite weights in {_shown(nonfinite)}")
    model.load_state_dict(state)
    return model.eval()


def _shown(items: list[str], limit: int = 8) -> str:
    return "; ".join(items[:limit]) + (f"; ... ({len(items)} in all)" if len(items) > limit else "")
