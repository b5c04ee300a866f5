"""``manifest.json``: what an artifact directory holds and where it came from; checked before use.

Written beside every artifact by ``write_manifest``; ``verify_manifest`` refuses (``ManifestError``)
a directory whose files are missing, changed or unlisted-but-named, so that no runtime loads an engine
other than the one that was verified.
"""

from __future__ import annotations

import json
from importlib import metadata
from pathlib import Path
from typing import Any

import brr
from brr.atomic import atomic_write_text
from brr.errors import InputError
from brr.model import PROBE_NAMES, PROBE_SHAPES, DetectorConfig
from brr.model.checkpoint import file_sha256
from brr.model.detector import INPUT_NAME, OUTPUT_NAME

MANIFEST_FILE = "manifest.json"
FORMAT_VERSION = 1
BACKENDS = ("onnxruntime", "openvino", "tensorrt")
PRECISIONS = ("fp32", "fp16", "bf16", "int8")
_VERSIONED_PACKAGES = ("torch", "onnx", "onnxscript", "onnx-ir", "onnxruntime", "onnxruntime-extensions",
                       "openvino", "polygraphy", "tensorrt")


class ManifestError(InputError):
    """An artifact that must not be used; the message names the directory and what is wrong."""


def package_versions() -> dict[str, str]:
    versions = {"brr": brr.__version__}
    for name in _VERSIONED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def write_manifest(
    directory: str | Path, *, source: dict[str, Any], config: DetectorConfig, backend: str, precision: str,
    ops: str, opset: int, model_file: str, probed_model_file: str | None, pinned_nodes: list[str],
    batch: tuple[int, int, int] | None = None, settings: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Hash every file of ``directory`` (but the manifest) and write its manifest; returns it."""
    directory = Path(directory)
    if backend not in BACKENDS or precision not in PRECISIONS:
        raise ValueError(f"backend must be in {BACKENDS} and precision in {PRECISIONS}, got {backend}, {precision}")
    files = {p.name: file_sha256(p) for p in sorted(directory.iterdir()) if p.is_file() and p.name != MANIFEST_FILE}
    for named in (model_file, probed_model_file):
        if named is not None and named not in files:
            raise ValueError(f"{directory}: {named} is not in the artifact")
    window = config.window_samples
    manifest = {
        "format_version": FORMAT_VERSION,
        "source": source,
        "config": config.to_dict(),
        "config_digest": config.digest(),
        "versions": package_versions(),
        "backend": backend,
        "precision": precision,
        "ops": ops,
        "opset": opset,
        "inputs": {INPUT_NAME: {"dtype": "float32", "shape": ["batch", config.n_channels, window]}},
        "outputs": {OUTPUT_NAME: {"dtype": "float32", "shape": ["batch", window]}},
        "probes": {name: PROBE_SHAPES[name] for name in PROBE_NAMES},
        "batch": None if batch is None else {"min": batch[0], "opt": batch[1], "max": batch[2]},
        "fp32_pinned_nodes": pinned_nodes,
        "model_file": model_file,
        "probed_model_file": probed_model_file,
        "settings": settings or {},
        "files": files,
    }
    atomic_write_text(directory / MANIFEST_FILE, json.dumps(manifest, indent=1, sort_keys=True))
    return manifest


def read_manifest(directory: str | Path) -> dict[str, Any]:
    path = Path(directory) / MANIFEST_FILE
    if not path.is_file():
        raise ManifestError(f"{directory}: no {MANIFEST_FILE}: not an artifact written by brr-export")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ManifestError(f"{path}: invalid JSON: {exc}") from exc
    if not isinstance(manifest, dict) or manifest.get("format_version") != FORMAT_VERSION:
        raise ManifestError(f"{path}: unsupported manifest format (want format_version {FORMAT_VERSION})")
    for key in ("backend", "precision", "ops", "model_file", "files", "config"):
        if key not in manifest:
            raise ManifestError(f"{path}: missing key {key!r}")
    return manifest


def verify_manifest(directory: str | Path) -> dict[str, Any]:
    """Read the manifest and check every listed file's sha256; returns the manifest or raises ManifestError."""
    directory = Path(directory)
    manifest = read_manifest(directory)
    problems = []
    for name, digest in sorted(manifest["files"].items()):
        path = directory / name
        if not path.is_file():
            problems.append(f"{name} is missing")
        elif file_sha256(path) != digest:
            problems.append(f"{name} does not match its sha256 (changed after export)")
    for key in ("model_file", "probed_model_file"):
        if manifest.get(key) is not None and manifest[key] not in manifest["files"]:
            problems.append(f"{key} {manifest[key]} is not among the hashed files")
    if problems:
        raise ManifestError(f"{directory}: artifact refused: " + "; ".join(problems))
    return manifest
