"""The files and folders of an export, by name.

``brr-export CKPT --out OUT`` writes::

    OUT/onnx-<ops>/                    the fp32 reference: model.onnx, model.stages.json, manifest.json;
                                       also the ONNX Runtime fp32 engine
    OUT/<backend>-<precision>-<ops>/   an engine and its manifest, which names the reference it was built from

A checkpoint folder (``brr.model.checkpoint``) holds ``config.json`` and ``model.safetensors``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from brr.backends.onnxrt import ONNXRUNTIME
from brr.model.checkpoint import CONFIG_FILE, WEIGHTS_FILE

MANIFEST_FILE = "manifest.json"
# The fp32 reference is an ONNX Runtime artifact of precision fp32: its model is that engine's file.
REFERENCE_BACKEND = ONNXRUNTIME.name
ONNX_FILE = ONNXRUNTIME.model_file
STAGES_FILE = "model.stages.json"


def reference_folder(out: Path, ops: str) -> Path:
    return out / f"onnx-{ops}"


def engine_folder(out: Path, backend: str, precision: str, ops: str) -> Path:
    return out / f"{backend}-{precision}-{ops}"


def is_reference(manifest: Mapping[str, Any]) -> bool:
    """Whether an artifact is an fp32 reference export (its model the fp32 ONNX graph)."""
    return manifest["backend"] == REFERENCE_BACKEND and manifest["precision"] == "fp32"


def artifact_folders(path: Path) -> list[Path]:
    """The artifact folders ``path`` stands for: itself when it holds a manifest, else (the folder
    ``brr-export --out`` wrote) its sub-folders that do, in name order; [] when neither."""
    if (path / MANIFEST_FILE).is_file():
        return [path]
    if not path.is_dir():
        return []
    return sorted(child for child in path.iterdir() if (child / MANIFEST_FILE).is_file())


def is_checkpoint(path: Path) -> bool:
    return path.is_dir() and (path / CONFIG_FILE).is_file() and (path / WEIGHTS_FILE).is_file()
