"""Training settings: a YAML file, then command-line overrides, validated with errors naming the key.

Every key of :class:`TrainSettings` may appear in the file; ``postprocess`` is a mapping of
:class:`brr.events.postprocess.PostprocessConfig` fields used for validation events.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from brr.errors import UsageError
from brr.events.postprocess import PostprocessConfig
from brr.train.precision import TrainPrecision

SELECTION_METRICS = ("sensitivity_at_fa", "f1")


class SettingsError(UsageError):
    """Training settings that cannot be used; the message names the key (and the file)."""


@dataclass(frozen=True)
class TrainSettings:
    data: str = ""
    out: str = ""
    model: str = "v3-small"
    guards: bool = True
    seed: int = 0
    device: str = "cpu"
    threads: int = 0  # torch intra-op threads; 0 keeps torch's default
    precision: str = "fp32"  # fp32, or bf16 / fp16 autocast (brr.train.precision); weights stay fp32
    init: str = ""  # a checkpoint whose weights start a new run (fresh optimizer and schedule)
    # Schedule
    epochs: int = 4
    steps_per_epoch: int = 0  # 0: one pass over the training windows (after oversampling)
    batch_size: int = 4
    lr: float = 2e-3
    min_lr_ratio: float = 0.05  # the cosine decays to lr * min_lr_ratio
    warmup_steps: int = 10
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    # Focal loss: alpha weighs the seizure class, gamma down-weights easy samples.
    focal_alpha: float = 0.75
    focal_gamma: float = 2.0
    # Data. Validation windows are the model's (window_samples / sampling_rate); training windows
    # may be shorter crops (crop_s > 0): every stage is length-agnostic and a step's cost grows
    # faster than its length (the SSD's chunk intermediates leave the cache), so short crops buy
    # many more optimizer steps per minute. 0 trains on full windows.
    crop_s: float = 0.0
    stride_s: float = 10.0
    val_stride_s: float = 30.0
    val_fraction: float = 0.2
    positive_fraction: float = 0.5  # share of seizure windows in the drawn training windows
    mains_hz: float = 60.0
    # Processes reading the training windows from the store beside the training process (0: none).
    loader_workers: int = 2
    # Validation and checkpoints
    selection: str = "sensitivity_at_fa"
    max_fa_per_24h: float = 10.0
    tune_threshold: bool = False  # choose the hysteresis enter threshold on validation data
    postprocess: dict = field(default_factory=dict)
    max_minutes: float = 0.0  # wall-clock budget; 0: none
    # Skipped non-finite steps in a row that end training (the fp16 loss scaler's own skips not counted):
    # enough to ride out a rare bad batch, few enough that a broken run stops within minutes.
    max_consecutive_nonfinite: int = 10
    resume: bool = False
    progress: bool = True

    def postprocess_config(self) -> PostprocessConfig:
        return PostprocessConfig(**self.postprocess)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_FIELDS = {f.name: f for f in dataclasses.fields(TrainSettings)}
_DEFAULTS = TrainSettings()


def _check_types(values: dict[str, Any], where: str) -> dict[str, Any]:
    out = {}
    for key, value in values.items():
        if key not in _FIELDS:
            raise SettingsError(f"{where}: unknown key {key!r}; known keys: {sorted(_FIELDS)}")
        expected = type(getattr(_DEFAULTS, key))
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, expected) or (expected in (int, float) and isinstance(value, bool)):
            raise SettingsError(f"{where}: {key} must be {expected.__name__}, got {value!r}")
        out[key] = value
    return out


def _validate(s: TrainSettings, where: str) -> None:
    def need(condition: bool, key: str, why: str) -> None:
        if not condition:
            raise SettingsError(f"{where}: {key} {why}")

    need(bool(s.data), "data", "is required (a folder of EDF files with .csv_bi annotations)")
    need(bool(s.out), "out", "is required (the checkpoint folder)")
    need(s.epochs >= 1, "epochs", "must be >= 1")
    need(s.steps_per_epoch >= 0, "steps_per_epoch", "must be >= 0 (0: one pass over the windows)")
    need(s.batch_size >= 1, "batch_size", "must be >= 1")
    need(s.lr > 0, "lr", "must be > 0")
    need(0 <= s.min_lr_ratio <= 1, "min_lr_ratio", "must be in [0, 1]")
    need(s.warmup_steps >= 0, "warmup_steps", "must be >= 0")
    need(s.weight_decay >= 0, "weight_decay", "must be >= 0")
    need(s.grad_clip > 0, "grad_clip", "must be > 0")
    need(0 < s.focal_alpha < 1, "focal_alpha", "must be in (0, 1)")
    need(s.focal_gamma >= 0, "focal_gamma", "must be >= 0")
    need(s.crop_s >= 0, "crop_s", "must be >= 0 (0: train on full windows)")
    need(s.stride_s > 0, "stride_s", "must be > 0")
    need(s.val_stride_s > 0, "val_stride_s", "must be > 0")
    need(0 < s.val_fraction < 1, "val_fraction", "must be in (0, 1)")
    need(0 <= s.positive_fraction < 1, "positive_fraction", "must be in [0, 1)")
    need(s.precision in {str(p) for p in TrainPrecision}, "precision", f"must be one of {[str(p) for p in TrainPrecision]}")
    need(s.max_consecutive_nonfinite >= 1, "max_consecutive_nonfinite", "must be >= 1")
    need(s.loader_workers >= 0, "loader_workers", "must be >= 0 (0: read windows in the training process)")
    need(s.selection in SELECTION_METRICS, "selection", f"must be one of {SELECTION_METRICS}")
    need(s.max_fa_per_24h >= 0, "max_fa_per_24h", "must be >= 0")
    need(s.max_minutes >= 0, "max_minutes", "must be >= 0 (0: no budget)")
    need(s.threads >= 0, "threads", "must be >= 0")
    need(s.device == "cpu" or s.device.startswith("cuda"), "device", "must be 'cpu' or 'cuda[:N]'")
    known = {f.name for f in dataclasses.fields(PostprocessConfig)}
    unknown = set(s.postprocess) - known
    need(not unknown, "postprocess", f"has unknown key(s) {sorted(unknown)}; known: {sorted(known)}")
    try:
        s.postprocess_config()
    except (TypeError, ValueError) as exc:
        raise SettingsError(f"{where}: postprocess: {exc}") from exc


def read_settings_file(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise SettingsError(f"{path}: training config file not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise SettingsError(f"{path}: not valid YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SettingsError(f"{path}: a training config must be a mapping of keys to values")
    return data


def make_settings(config_file: str | Path | None = None, **overrides: Any) -> TrainSettings:
    """File values (if any) on top of the defaults, then ``overrides`` (``None`` values are ignored)."""
    values: dict[str, Any] = {}
    where = "training settings"
    if config_file is not None:
        where = str(config_file)
        values.update(_check_types(read_settings_file(config_file), where))
    given = {k: v for k, v in overrides.items() if v is not None}
    values.update(_check_types(given, "command line" if config_file is None else f"{where} + command line"))
    settings = TrainSettings(**values)
    _validate(settings, where)
    return settings
