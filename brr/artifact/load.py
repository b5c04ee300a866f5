"""A folder on disk as a runner: ``load_runner(path)`` is the one place that reads one and picks the runner.

``path`` is a checkpoint folder (run by PyTorch) or an artifact written by ``brr-export`` (its folder
or its model file); the artifact's manifest is verified first and names the backend, precision and
file, so callers never branch on the backend. Every runner takes ``{"eeg": (B, 19, N)}`` and returns
``{"logits": ...}``, plus every probe of ``brr.model.PROBE_NAMES`` when ``probes=True``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from brr.artifact.files import MANIFEST_FILE, is_checkpoint
from brr.artifact.manifest import ManifestError, read_manifest, served_verification, verify_manifest
from brr.backends import BACKENDS
from brr.backends.torch.runner import TorchRunner
from brr.model.checkpoint import read_checkpoint_meta


def tuned_postprocess(path: str | Path) -> dict[str, Any] | None:
    """The post-processing brr-train chose on validation data for this model (a checkpoint's
    ``training.postprocess``, carried into an artifact's manifest by brr-export), or None."""
    path = Path(path)
    if is_checkpoint(path):
        return read_checkpoint_meta(path).get("training", {}).get("postprocess")
    return read_manifest(path if path.is_dir() else path.parent).get("source", {}).get("postprocess")


def load_runner(path: str | Path, probes: bool = False, threads: int | None = None, device: str = "cpu",
                name: str | None = None, require_verified: bool = False, lean: bool = False):
    """A runner for a checkpoint directory or a checked brr-export artifact (directory or model file).

    It returns ``logits``, and every probe too when ``probes``. ``require_verified`` refuses an
    artifact whose model did not pass its verification (see ``served_verification``). ``threads`` and
    ``device`` go to the engine where its backend takes them; ``lean``: see ``Backend.runner``.
    """
    path = Path(path)
    if is_checkpoint(path):
        return TorchRunner(path, probes=probes, device=device, name=name)
    directory = path if path.is_dir() else path.parent
    if not (directory / MANIFEST_FILE).is_file():
        raise ManifestError(f"{path}: neither a checkpoint directory nor a brr-export artifact (no {MANIFEST_FILE})")
    manifest = verify_manifest(directory)
    if path.is_file() and path.name != manifest["model_file"]:
        raise ManifestError(f"{path}: not the model file of the artifact in {directory}")
    if require_verified and (refusal := served_verification(directory, manifest)) is not None:
        raise ManifestError(refusal)
    backend = BACKENDS.get(manifest["backend"])
    if backend is None:
        raise ManifestError(f"{directory / MANIFEST_FILE}: unknown backend {manifest['backend']!r}")
    return backend.runner(directory / manifest["model_file"], manifest, probes=probes, name=name, device=device,
                          threads=threads, lean=lean)
