"""Resumable training state next to a model checkpoint: tensors as safetensors, the rest as JSON.

``training_state.safetensors``: AdamW moments and step counts (``optimizer.<index>.<key>``, indices
in parameter-group order) and the torch CPU RNG state. ``training_state.json``: the optimizer's
hyperparameters per group, the loop position (epoch, batch within the epoch, global step), the
metrics history, the skipped-step count, the Python and NumPy RNG states. Never pickle.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save

from brr.atomic import atomic_write_bytes, atomic_write_text
from brr.errors import InputError

TENSORS_FILE = "training_state.safetensors"
JSON_FILE = "training_state.json"


class TrainingStateError(InputError):
    """A training state that cannot be resumed from; the message names the file."""


def capture_rng() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    np_state = np.random.get_state()
    py_version, py_internal, py_gauss = random.getstate()
    tensors = {"rng.torch": torch.get_rng_state()}
    meta = {
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "python": [py_version, list(py_internal), py_gauss],
    }
    return tensors, meta


def restore_rng(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    torch.set_rng_state(tensors["rng.torch"])
    name, keys, pos, has_gauss, gauss = meta["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = meta["python"]
    random.setstate((version, tuple(internal), gauss_next))


def save_training_state(directory: str | Path, optimizer: torch.optim.Optimizer, loop: dict[str, Any]) -> None:
    """Write the optimizer, RNG and loop state into ``directory`` (tensors first, JSON last)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    for index, param_state in state["state"].items():
        for key, value in param_state.items():
            tensors[f"optimizer.{index}.{key}"] = torch.as_tensor(value).detach().cpu().contiguous()
    rng_tensors, rng_meta = capture_rng()
    tensors.update(rng_tensors)
    atomic_write_bytes(directory / TENSORS_FILE, save(tensors))
    meta = {"param_groups": state["param_groups"], "rng": rng_meta, "loop": loop}
    atomic_write_text(directory / JSON_FILE, json.dumps(meta, indent=2, allow_nan=False) + "\n")


def load_training_state(directory: str | Path, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Restore the optimizer and RNG states; return the loop state saved with them."""
    directory = Path(directory)
    json_path, tensors_path = directory / JSON_FILE, directory / TENSORS_FILE
    for path in (json_path, tensors_path):
        if not path.is_file():
            raise TrainingStateError(f"{path}: missing; cannot resume from {directory}")
    try:
        meta = json.loads(json_path.read_text())
        tensors = load_file(str(tensors_path))
    except Exception as exc:  # safetensors raises its own error types for corrupt files
        raise TrainingStateError(f"{directory}: unreadable training state: {exc}") from exc
    per_param: dict[int, dict[str, torch.Tensor]] = {}
    for name, tensor in tensors.items():
        if name.startswith("optimizer."):
            _, index, key = name.split(".", 2)
            per_param.setdefault(int(index), {})[key] = tensor
    try:
        optimizer.load_state_dict({"state": per_param, "param_groups": meta["param_groups"]})
        restore_rng(tensors, meta["rng"])
        return meta["loop"]
    except (KeyError, ValueError) as exc:
        raise TrainingStateError(f"{json_path}: does not match this model and optimizer: {exc}") from exc
