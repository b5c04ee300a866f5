"""Detector configuration: the two named presets and validation of user configs.

A config is a frozen dataclass tree; ``resolve_config`` accepts a preset name, a YAML/JSON path or
a dict (a partial dict is applied on top of the ``base`` preset it names, default ``v3``). Any
unknown key or invalid value raises ``ConfigError`` naming the key.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from brr.errors import InputError


class ConfigError(InputError):
    """A detector config that cannot be used, with the offending key in the message."""


@dataclass(frozen=True)
class MambaConfig:
    d_model: int
    d_state: int
    d_conv: int = 4
    expand: int = 2
    headdim: int = 8
    layers: int = 2
    # Only rounding depends on it; 16 measured fastest for the CPU reference at l = 960.
    chunk_size: int = 16
    dropout: float = 0.1


@dataclass(frozen=True)
class DetectorConfig:
    name: str = "v3"
    n_channels: int = 19
    window_samples: int = 15360
    sampling_rate: int = 256
    # TCN encoder
    tcn_channels: tuple[int, ...] = (64, 128, 256, 512, 64, 128, 256, 512)
    tcn_kernel: int = 7
    tcn_dropout: float = 0.15
    tcn_out: int = 512
    downsample: int = 16
    # Electrode features and streams
    electrode_dim: int = 64
    node_mamba: MambaConfig = field(default_factory=lambda: MambaConfig(d_model=64, d_state=16, headdim=8, layers=6))
    edge_metric: str = "cosine"
    edge_lift_dim: int = 16
    edge_mamba: MambaConfig = field(default_factory=lambda: MambaConfig(d_model=16, d_state=8, headdim=4, layers=2))
    # Adjacency
    edge_top_k: int = 3
    edge_threshold: float = 1e-4
    # Graph network and positional encoding
    gnn_layers: int = 2
    ssgconv_alpha: float = 0.05
    ssgconv_hops: int = 2
    use_dynamic_pe: bool = True
    semi_dynamic_interval: int = 5
    k_eigenvectors: int = 16
    degree_clamp: float = 1e-6
    laplacian_shift: float = 1e-4
    # Safeguards of the reference training code; see brr.model.guards.
    guards: bool = True

    @property
    def steps(self) -> int:
        return self.window_samples // self.downsample

    @property
    def tcn_dilations(self) -> tuple[int, ...]:
        """The dilation of each of the encoder's convolutions: doubling from 1, one per ``tcn_channels``."""
        return tuple(2**i for i in range(len(self.tcn_channels)))

    @property
    def n_edges(self) -> int:
        return self.n_channels * (self.n_channels - 1) // 2

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def digest(self) -> str:
        """Stable hash of every setting: checkpoints and artifacts record it."""
        blob = json.dumps(self.to_dict(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()


PRESETS: dict[str, DetectorConfig] = {
    "v3": DetectorConfig(),
    # Every stage and every hazard of v3, at a size a 2-core CI machine trains in minutes.
    "v3-small": DetectorConfig(
        name="v3-small",
        tcn_channels=(16, 32, 32, 64),
        tcn_out=64,
        electrode_dim=32,
        node_mamba=MambaConfig(d_model=32, d_state=16, headdim=8, layers=2),
        edge_mamba=MambaConfig(d_model=16, d_state=8, headdim=4, layers=1),
    ),
}


def _validate(cfg: DetectorConfig) -> None:
    def need(condition: bool, key: str, why: str) -> None:
        if not condition:
            raise ConfigError(f"config {cfg.name!r}: {key} {why}")

    need(cfg.n_channels == 19, "n_channels", "must be 19: the model's montage is fixed")
    need(cfg.window_samples > 0 and cfg.window_samples % cfg.downsample == 0, "window_samples",
         f"must be a positive multiple of downsample={cfg.downsample}")
    need(len(cfg.tcn_channels) >= 1 and all(c > 0 for c in cfg.tcn_channels), "tcn_channels",
         "must be a non-empty list of positive ints")
    need(cfg.tcn_kernel % 2 == 1, "tcn_kernel", "must be odd for 'same' padding")
    need(cfg.edge_metric in ("cosine", "correlation"), "edge_metric", "must be 'cosine' or 'correlation'")
    need(1 <= cfg.edge_top_k < cfg.n_channels, "edge_top_k", f"must be in [1, {cfg.n_channels - 1}]")
    need(cfg.edge_threshold >= 0, "edge_threshold", "must be >= 0")
    need(cfg.gnn_layers >= 1, "gnn_layers", "must be >= 1")
    need(0.0 <= cfg.ssgconv_alpha <= 1.0, "ssgconv_alpha", "must be in [0, 1]")
    need(cfg.ssgconv_hops >= 1, "ssgconv_hops", "must be >= 1")
    need(1 <= cfg.k_eigenvectors <= cfg.n_channels, "k_eigenvectors", f"must be in [1, {cfg.n_channels}]")
    need(cfg.semi_dynamic_interval >= 1 and cfg.steps % cfg.semi_dynamic_interval == 0,
         "semi_dynamic_interval", f"must divide the {cfg.steps} steps")
    need(cfg.node_mamba.d_model == cfg.electrode_dim, "node_mamba.d_model",
         f"must equal electrode_dim={cfg.electrode_dim}")
    need(cfg.edge_mamba.d_model == cfg.edge_lift_dim, "edge_mamba.d_model",
         f"must equal edge_lift_dim={cfg.edge_lift_dim}")
    for key, m, min_layers in (("node_mamba", cfg.node_mamba, 1), ("edge_mamba", cfg.edge_mamba, 0)):
        need(m.layers >= min_layers, f"{key}.layers", f"must be >= {min_layers}")
        need((m.expand * m.d_model) % m.headdim == 0, f"{key}.headdim", "must divide expand * d_model")
        need(m.chunk_size >= 1 and m.d_state >= 1 and m.d_conv >= 1, key,
             "chunk_size, d_state and d_conv must be >= 1")


def _from_dict(data: dict[str, Any], base: DetectorConfig, where: str) -> DetectorConfig:
    known = {f.name for f in dataclasses.fields(DetectorConfig)}
    changes: dict[str, Any] = {}
    for key, value in data.items():
        if key == "base":
            continue
        if key not in known:
            raise ConfigError(f"{where}: unknown key {key!r}; known keys: {sorted(known)}")
        if key in ("node_mamba", "edge_mamba"):
            if not isinstance(value, dict):
                raise ConfigError(f"{where}: {key} must be a mapping")
            mamba_known = {f.name for f in dataclasses.fields(MambaConfig)}
            unknown = set(value) - mamba_known
            if unknown:
                raise ConfigError(f"{where}: unknown key(s) {sorted(unknown)} in {key}; known: {sorted(mamba_known)}")
            value = dataclasses.replace(getattr(base, key), **value)
        elif key == "tcn_channels":
            value = tuple(value)
        expected = type(getattr(base, key))
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
            raise ConfigError(f"{where}: {key} must be {expected.__name__}, got {value!r}")
        changes[key] = value
    cfg = dataclasses.replace(base, **changes)
    _validate(cfg)
    return cfg


def resolve_config(name_or_config: str | Path | dict | DetectorConfig, **overrides: Any) -> DetectorConfig:
    """A preset name, a YAML/JSON file, a dict or a config -> a validated DetectorConfig."""
    if isinstance(name_or_config, DetectorConfig):
        cfg, where = name_or_config, name_or_config.name
    elif isinstance(name_or_config, str) and name_or_config in PRESETS:
        cfg, where = PRESETS[name_or_config], name_or_config
    elif isinstance(name_or_config, dict):
        data = name_or_config
        base = data.get("base", data.get("name", "v3"))
        cfg = _from_dict(data, PRESETS.get(base, PRESETS["v3"]), "config dict")
        where = "config dict"
    else:
        path = Path(name_or_config)
        if not path.is_file():
            raise ConfigError(f"{name_or_config!r} is neither a preset ({', '.join(PRESETS)}) nor a config file")
        try:
            # YAML 1.1 reads JSON's "1e-06" as a string, so JSON files get the JSON parser.
            text = path.read_text()
            data = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
        except (yaml.YAMLError, json.JSONDecodeError) as exc:
            raise ConfigError(f"{path}: not valid YAML/JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: a config must be a mapping of keys to values")
        base = data.get("base", data.get("name", "v3"))
        cfg, where = _from_dict(data, PRESETS.get(base, PRESETS["v3"]), str(path)), str(path)
    if overrides:
        cfg = _from_dict(overrides, cfg, where)
    _validate(cfg)
    return cfg
