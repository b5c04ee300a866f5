"""A folder on disk as a runner: ``load_runner(path)`` is the one place that reads one and picks the runner.

``path`` is a checkpoint folder (run by PyTorch) or an artifact written by ``brr-export`` (its folder
or its model file); the artifact's manifest is verified first and names the backend, precision and
file, so callers never branch on the backend. Every runner takes ``{"eeg": (B, 19, N)}`` and returns
``{"logits": ...}``, plus every probe of ``brr.model.PROBE_NAMES`` when ``probes=True``.
``load_split_runners`` reads the same folders as the detector's front and rest (``brr.model.front``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from brr.artifact.files import MANIFEST_FILE, artifact_folders, is_checkpoint, is_reference
from brr.artifact.manifest import (
    ManifestError,
    read_manifest,
    served_split,
    served_verification,
    verify_manifest,
)
from brr.backends import BACKENDS, Backend
from brr.backends.split import SplitRunners
from brr.model.checkpoint import read_checkpoint_meta
from brr.model.contract import GraphPart

log = logging.getLogger(__name__)


def tuned_postprocess(path: str | Path) -> dict[str, Any] | None:
    """The post-processing brr-train chose on validation data for this model (a checkpoint's
    ``training.postprocess``, carried into an artifact's manifest by brr-export), or None."""
    path = Path(path)
    if is_checkpoint(path):
        return read_checkpoint_meta(path).get("training", {}).get("postprocess")
    return read_manifest(path if path.is_dir() else path.parent).get("source", {}).get("postprocess")


def fastest_engine(candidates: list[Path], manifests: dict[Path, dict]) -> Path | None:
    """The candidate with the lowest serving time its verification measured, or None when one has no such
    time or they were timed on different machines (their times would not compare)."""
    timings = [(manifest.get("verification") or {}) for manifest in map(manifests.get, candidates)]
    seconds = [t.get("serving_s_per_window") for t in timings]
    if None in seconds or len({t.get("timed_on") for t in timings}) != 1:
        return None
    return min(zip(seconds, candidates))[1]


def select_engine(path: str | Path, precision: str | None = None, split: bool = False) -> Path:
    """The one engine ``path`` names: a checkpoint, an artifact folder or model file as given; in an
    export's ``--out`` folder, its engine of ``precision`` (any precision when None) that holds the front and
    rest graphs when ``split`` (overlap inference), a verified one (its front and rest verified, with ``split``)
    before an unverified one, the fastest of several verified ones (as timed by their verification on
    one machine), the fp32 ONNX only when the export has no other engine. Several candidates that
    nothing ranks are a ``ManifestError`` that lists them, so the choice is never silent."""
    path = Path(path)
    if not path.exists():
        raise ManifestError(f"{path}: does not exist")
    if is_checkpoint(path) or path.is_file() or (path / MANIFEST_FILE).is_file():
        return path
    artifacts = artifact_folders(path)
    if not artifacts:
        raise ManifestError(f"{path}: neither a checkpoint directory nor a brr-export artifact or export folder "
                            f"(no {MANIFEST_FILE} in it or in its sub-folders)")
    # Choosing reads the manifests (their own digest checked); load_runner hashes the chosen engine's files.
    manifests = {a: read_manifest(a) for a in artifacts}
    if split:
        artifacts = [a for a in artifacts if manifests[a].get("split")]
        if not artifacts:
            raise ManifestError(f"{path}: no engine in this export holds the front and rest graphs that overlap "
                                "inference serves; export with brr-export --split")
    if precision is not None:
        held = ", ".join(f"{a.name} ({manifests[a]['precision']})" for a in artifacts)
        artifacts = [a for a in artifacts if manifests[a]["precision"] == precision]
        if not artifacts:
            raise ManifestError(f"{path}: no {precision} engine in this export; it holds {held}")
    engines = [a for a in artifacts if not is_reference(manifests[a])] or artifacts
    verified = [a for a in engines if (_split_refusal(a, manifests[a]) if split
                                       else served_verification(a, manifests[a])) is None]
    candidates = verified or engines
    if len(candidates) > 1 and verified and (fastest := fastest_engine(candidates, manifests)) is not None:
        speeds = ", ".join(f"{a.name} {manifests[a]['verification']['serving_s_per_window']:.3g}" for a in candidates)
        log.info(f"{path}: serving {fastest.name}, the fastest of its verified engines (s/window at export: {speeds})")
        return fastest
    if len(candidates) > 1:
        raise ManifestError(f"{path} holds {len(candidates)} {'verified ' if verified else ''}engines: "
                            f"{', '.join(a.name for a in candidates)}; pass one of these folders"
                            + ("" if precision else " or --precision"))
    return candidates[0]


def _split_refusal(directory: Path, manifest: dict[str, Any]) -> str | None:
    """Why the front and rest of an artifact are not to be served, or None."""
    try:
        served_split(directory, manifest)
    except ManifestError as refusal:
        return str(refusal)
    return None


def load_runner(path: str | Path, probes: bool = False, threads: int | None = None, device: str = "cpu",
                name: str | None = None, require_verified: bool = False, lean: bool = False):
    """A runner for a checkpoint directory or a checked brr-export artifact (directory or model file).

    It returns ``logits``, and every probe too when ``probes``. ``require_verified`` refuses an
    artifact whose model did not pass its verification (see ``served_verification``). ``threads`` and
    ``device`` go to the engine where its backend takes them; ``lean``: see ``Backend.runner``.
    """
    path = Path(path)
    if is_checkpoint(path):
        import torch

        from brr.backends.torch.runner import TorchRunner  # only checkpoints need PyTorch

        if threads is not None:
            torch.set_num_threads(threads)  # PyTorch's pool is per process: this is the only place to set it
        return TorchRunner(path, probes=probes, device=device, name=name)
    directory, manifest, backend = _checked_artifact(path)
    if require_verified and (refusal := served_verification(directory, manifest)) is not None:
        raise ManifestError(refusal)
    return backend.runner(directory / manifest["model_file"], manifest, probes=probes, name=name, device=device,
                          threads=threads, lean=lean)


def load_split_runners(path: str | Path, probes: bool = False, threads: int | None = None, device: str = "cpu",
                       name: str | None = None, require_verified: bool = False) -> SplitRunners:
    """The front and rest runners of a checkpoint directory (PyTorch) or of a checked brr-export artifact that
    holds the two graphs (``ManifestError`` when it holds none). ``require_verified`` refuses graphs whose
    composition did not pass its verification; the other arguments are ``load_runner``'s."""
    path = Path(path)
    name = name or path.name
    if is_checkpoint(path):
        import torch

        from brr.backends.torch.loader import DetectorFromCheckpoint
        from brr.backends.torch.runner import TorchRunner
        from brr.model.front import FrontGeometry

        if threads is not None:
            torch.set_num_threads(threads)
        model = DetectorFromCheckpoint(path)()
        front, rest = (TorchRunner(model, probes=probes, device=device, name=f"{name}-{part}", part=part)
                       for part in GraphPart)
        return SplitRunners(front, rest, FrontGeometry.of(model.config))
    directory, manifest, backend = _checked_artifact(path)
    files, geometry = served_split(directory, manifest, require_verified)
    front, rest = (backend.part_runner(files[part], part, manifest, probes=probes, name=f"{name}-{part}",
                                       device=device, threads=threads) for part in GraphPart)
    return SplitRunners(front, rest, geometry)


def _checked_artifact(path: Path) -> tuple[Path, dict[str, Any], Backend]:
    """The folder of an artifact (given as its folder or its model file), its checked manifest and its backend."""
    directory = path if path.is_dir() else path.parent
    if not (directory / MANIFEST_FILE).is_file():
        raise ManifestError(f"{path}: neither a checkpoint directory nor a brr-export artifact (no {MANIFEST_FILE})")
    manifest = verify_manifest(directory)
    if path.is_file() and path.name != manifest["model_file"]:
        raise ManifestError(f"{path}: not the model file of the artifact in {directory}")
    backend = BACKENDS.get(manifest["backend"])
    if backend is None:
        raise ManifestError(f"{directory / MANIFEST_FILE}: unknown backend {manifest['backend']!r}")
    return directory, manifest, backend
