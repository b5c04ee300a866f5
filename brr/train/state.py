"""Resumable training state next to a model checkpoint: tensors as safetensors, the rest as JSON.

``training_state.safetensors``: AdamW moments and step counts (``optimizer.<index>.<key>``, indices
in parameter-group order) and the torch CPU RNG state. ``training_state.json``: the optimizer's
hyperparameters per group, the loop position (epoch, batch within the epoch, global step), the
metrics history, the skipped-step count, the Python and NumPy RNG states. Never pickle.
"""

from __future__ import annotations

import dataclasses
import json
import random
from dataclasses import dataclass, field
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


@dataclass
class LoopState:
    """Where a training run stands, saved beside each ``last`` checkpoint so that a resumed run goes on
    exactly where it stopped (``training_state.json``'s ``loop``, these fields in this order)."""

    epoch: int = 0  # epochs finished
    batch: int = 0  # batches consumed in the current epoch
    step: int = 0  # batches consumed over the run, skipped ones included: the learning rate's clock
    # {"step", "stage"} of each skipped step; the first of a run of them also its "incident" and "finding"
    skipped: list[dict[str, Any]] = field(default_factory=list)
    history: list[dict[str, Any]] = field(default_factory=list)  # one row per finished epoch
    best_key: list | None = None  # ``selection_key`` of the best epoch so far
    best_metrics: dict[str, Any] | None = None  # that epoch's history row
    # The current epoch's applied steps (and the sum of their losses) and skipped steps.
    epoch_loss_sum: float = 0.0
    epoch_applied: int = 0
    epoch_skipped: int = 0
    settings: dict[str, Any] = field(default_factory=dict)  # ``TrainSettings.to_dict()`` of the run

    def record_step(self, loss: float | None, stage: str | None, detail: dict[str, Any] | None = None) -> None:
        """Count one batch: its loss where it was applied, else the stage where it went non-finite (and what
        was found and saved of it, ``detail``)."""
        if stage is None:
            self.epoch_loss_sum += loss
            self.epoch_applied += 1
        else:
            self.skipped.append({"step": self.step, "stage": stage, **(detail or {})})
            self.epoch_skipped += 1
        self.batch += 1
        self.step += 1

    def next_epoch(self) -> None:
        self.epoch += 1
        self.batch, self.epoch_loss_sum, self.epoch_applied, self.epoch_skipped = 0, 0.0, 0, 0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LoopState:
        """The saved state; a missing field is a KeyError, one not known a ValueError."""
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(data) - set(names))
        if unknown:
            raise ValueError(f"unknown loop state fields {unknown}")
        return cls(**{name: data[name] for name in names})


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


def save_training_state(directory: str | Path, optimizer: torch.optim.Optimizer, loop: LoopState) -> None:
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
    meta = {"param_groups": state["param_groups"], "rng": rng_meta, "loop": loop.to_dict()}
    atomic_write_text(directory / JSON_FILE, json.dumps(meta, indent=2, allow_nan=False) + "\n")


def load_training_state(directory: str | Path, optimizer: torch.optim.Optimizer) -> LoopState:
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
        return LoopState.from_dict(meta["loop"])
    except (KeyError, ValueError) as exc:
        raise TrainingStateError(f"{json_path}: does not match this model and optimizer: {exc}") from exc
