"""``manifest.json``: what an artifact directory holds, where it came from, how it was verified.

Written beside every artifact by ``write_manifest``; ``verify_manifest`` refuses (``ManifestError``)
a directory whose files are missing or changed, or whose manifest was edited (it carries a digest of
its own content). An artifact holds one model file, which is both served and diffed (every probe
is an output of it). Verification against PyTorch fp32 is recorded by ``record_verification``: the
verdict and the sha256 of the model file it ran.
``served_verification`` is what a runtime checks before serving: a model that failed, was never
verified, or is not the file that was verified (replaced, and the file hashes rewritten to match)
is refused, unless the caller allows it explicitly. An artifact may also hold the detector split into two
graphs, its front and its rest (``split``: the files and the front's geometry, ``brr.model.front``), which
overlap inference serves; their composition is verified apart (``record_split_verification``, with the
sha256 of both files) and checked before serving the same way (``served_split``). An artifact whose engine
could not be built where it was exported (``unbuilt``: its dependency was missing; it holds what a build
needs) is refused by ``verify_manifest``, so by everything that reads one.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import brr
from brr.artifact.files import MANIFEST_FILE, is_reference
from brr.atomic import atomic_write_text
from brr.backends import BACKENDS
from brr.errors import InputError
from brr.model import PROBE_NAMES, PROBE_SHAPES, DetectorConfig
from brr.model.checkpoint import file_sha256
from brr.model.contract import INPUT_NAME, OUTPUT_NAME, GraphPart
from brr.model.front import FrontGeometry

FORMAT_VERSION = 2
PRECISIONS = ("fp32", "fp16", "bf16", "int8")
_VERSIONED_PACKAGES = ("torch", "onnx", "onnxscript", "onnx-ir", "onnxruntime", "onnxruntime-extensions",
                       "openvino", "polygraphy", "tensorrt")


class ManifestError(InputError):
    """An artifact that must not be used; the message names the directory and what is wrong."""


@dataclass(frozen=True)
class SplitGraphs:
    """What an artifact holds of the detector split into its front and rest (``brr.model.front``): the front's
    geometry and, per part, the file served, every file it reads (an OpenVINO IR's ``.bin`` beside its
    ``.xml``), the nodes its build kept in fp32 and the build's settings. The defaults are the fp32 ONNX
    graphs of a reference folder (``GraphPart.file``)."""

    geometry: FrontGeometry
    files: Mapping[GraphPart, tuple[str, ...]] = field(
        default_factory=lambda: {part: (part.file,) for part in GraphPart})
    pinned_nodes: Mapping[GraphPart, list[str]] = field(default_factory=dict)
    settings: Mapping[GraphPart, dict[str, Any]] = field(default_factory=dict)

    def to_manifest(self) -> dict[str, Any]:
        return {**{part.value: self.files[part][0] for part in GraphPart}, "geometry": self.geometry.to_dict(),
                "parts": {part.value: {"files": list(self.files[part]),
                                       "fp32_pinned_nodes": list(self.pinned_nodes.get(part, [])),
                                       "settings": dict(self.settings.get(part, {}))} for part in GraphPart},
                "verification": None}


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
    ops: str, opset: int, model_file: str, pinned_nodes: list[str],
    batch: tuple[int, int, int] | None = None, settings: dict[str, Any] | None = None,
    fp32_reference: str | Path | None = None, precision_plan: dict[str, Any] | None = None,
    unbuilt: str | None = None, split: SplitGraphs | None = None,
) -> dict[str, Any]:
    """Hash every file of ``directory`` (but the manifest) and write its manifest; returns it.

    ``fp32_reference``: the fp32 ONNX artifact directory the engine was built from (stored relative
    to ``directory``, with the sha256 of its model): the diff's node level compares against it.
    ``unbuilt``: why ``model_file`` is not there yet (the artifact holds what its build needs).
    ``split``: the front and the rest as two graphs, when the folder also holds them.
    """
    directory = Path(directory)
    if backend not in BACKENDS or precision not in PRECISIONS:
        raise ValueError(f"backend must be in {BACKENDS} and precision in {PRECISIONS}, got {backend}, {precision}")
    files = {p.name: file_sha256(p) for p in sorted(directory.iterdir()) if p.is_file() and p.name != MANIFEST_FILE}
    if model_file not in files and unbuilt is None:
        raise ValueError(f"{directory}: {model_file} is not in the artifact")
    reference = None
    if fp32_reference is not None:
        partner = read_manifest(fp32_reference)
        reference = {"path": os.path.relpath(Path(fp32_reference).resolve(), directory.resolve()),
                     "model_sha256": partner["files"][partner["model_file"]]}
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
        "fp32_reference": reference,
        "precision_plan": precision_plan,
        "settings": settings or {},
        "files": files,
        "verification": None,
    }
    if unbuilt is not None:
        manifest["unbuilt"] = unbuilt
    if split is not None:
        missing = [name for part in GraphPart for name in split.files[part] if name not in files]
        if missing:
            raise ValueError(f"{directory}: {', '.join(missing)} not in the artifact")
        manifest["split"] = split.to_manifest()
    rewrite_manifest(directory, manifest)
    return manifest


def _digest(manifest: dict[str, Any]) -> str:
    body = {k: v for k, v in manifest.items() if k != "manifest_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def rewrite_manifest(directory: str | Path, manifest: dict[str, Any]) -> None:
    """Write ``manifest`` with a digest of its own content, so that an edit by hand is refused on reading."""
    manifest["manifest_sha256"] = _digest(manifest)
    atomic_write_text(Path(directory) / MANIFEST_FILE, json.dumps(manifest, indent=1, sort_keys=True))


def read_manifest(directory: str | Path) -> dict[str, Any]:
    path = Path(directory) / MANIFEST_FILE
    if not path.is_file():
        raise ManifestError(f"{directory}: no {MANIFEST_FILE}: not an artifact written by brr-export")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ManifestError(f"{path}: invalid JSON: {exc}") from exc
    if not isinstance(manifest, dict) or manifest.get("format_version") != FORMAT_VERSION:
        raise ManifestError(f"{path}: unsupported manifest format (want format_version {FORMAT_VERSION}); "
                            "export the checkpoint again with this brr-export")
    for key in ("backend", "precision", "ops", "model_file", "files", "config", "manifest_sha256"):
        if key not in manifest:
            raise ManifestError(f"{path}: missing key {key!r}")
    if manifest["manifest_sha256"] != _digest(manifest):
        raise ManifestError(f"{path}: changed after brr-export wrote it (its content does not match its digest)")
    return manifest


def verify_manifest(directory: str | Path) -> dict[str, Any]:
    """Read the manifest and check every listed file's sha256; returns the manifest or raises ManifestError."""
    directory = Path(directory)
    manifest = read_manifest(directory)
    if manifest.get("unbuilt"):
        raise ManifestError(f"{directory}: artifact refused: its engine {manifest['model_file']} was never built "
                            f"({manifest['unbuilt']}); build it with brr-export on a machine that has what was "
                            "missing (its manifest's settings also give the commands that build it)")
    problems = []
    for name, digest in sorted(manifest["files"].items()):
        path = directory / name
        if not path.is_file():
            problems.append(f"{name} is missing")
        elif file_sha256(path) != digest:
            problems.append(f"{name} does not match its sha256 (changed after export)")
    if manifest["model_file"] not in manifest["files"]:
        problems.append(f"model_file {manifest['model_file']} is not among the hashed files")
    if problems:
        raise ManifestError(f"{directory}: artifact refused: " + "; ".join(problems))
    return manifest


def record_verification(directory: str | Path, verification: dict[str, Any]) -> dict[str, Any]:
    """Write the verification of the artifact's model into its manifest; returns the manifest.

    ``verification`` holds at least ``passed`` (bool) and ``verdict``; the sha256 of the model file
    it ran is added here from the (checked) file itself.
    """
    directory = Path(directory)
    manifest = verify_manifest(directory)
    manifest["verification"] = dict(verification) | {"model_sha256": manifest["files"][manifest["model_file"]]}
    rewrite_manifest(directory, manifest)
    return manifest


def served_verification(directory: str | Path, manifest: dict[str, Any]) -> str | None:
    """Why the artifact's model must not be served unasked (None when its passing verification ran it)."""
    verification = manifest.get("verification")
    if not verification:
        return f"{directory}: never verified against PyTorch fp32 (exported with --no-verify?)"
    if verification.get("model_sha256") != manifest["files"][manifest["model_file"]]:
        return (f"{directory}: {manifest['model_file']} is not the model that was verified "
                f"(verified sha256 {str(verification.get('model_sha256'))[:12]}, now "
                f"{manifest['files'][manifest['model_file']][:12]})")
    if not verification.get("passed"):
        return f"{directory}: its verification failed ({verification.get('verdict')}); see {verification.get('report')}"
    return None


def _split_hashes(manifest: dict[str, Any]) -> dict[str, str]:
    """The sha256 of every file the front and rest read, keyed ``<part>_sha256`` for the file served and
    ``<file>_sha256`` for each other file of a part."""
    split, hashes = manifest["split"], {}
    for part in GraphPart:
        served = split[part.value]
        hashes[f"{part.value}_sha256"] = manifest["files"][served]
        for name in split.get("parts", {}).get(part.value, {}).get("files", []):
            if name != served:
                hashes[f"{name}_sha256"] = manifest["files"][name]
    return hashes


def record_split_verification(directory: str | Path, verification: dict[str, Any]) -> dict[str, Any]:
    """Write the verification of the front and rest composed into the manifest (with both files' sha256)."""
    directory = Path(directory)
    manifest = verify_manifest(directory)
    if not manifest.get("split"):
        raise ManifestError(f"{directory}: holds no front and rest graphs to verify")
    manifest["split"]["verification"] = dict(verification) | _split_hashes(manifest)
    rewrite_manifest(directory, manifest)
    return manifest


def served_split(directory: str | Path, manifest: dict[str, Any], require_verified: bool = True
                 ) -> tuple[dict[GraphPart, Path], FrontGeometry]:
    """The front and rest graphs of a (checked) artifact and the front's geometry; ``ManifestError`` when it
    holds none, or (``require_verified``) when their composition failed, was never verified, or ran other files."""
    split = manifest.get("split")
    if not split:
        raise ManifestError(f"{directory}: holds no front and rest graphs for overlap inference; export them "
                            "with brr-export --split (ONNX Runtime and OpenVINO engines) and serve that folder")
    verification = split.get("verification")
    refusal = None
    if not verification:
        refusal = f"{directory}: its front and rest were never verified against PyTorch fp32"
    elif any(verification.get(key) != digest for key, digest in _split_hashes(manifest).items()):
        refusal = f"{directory}: its front and rest are not the files that were verified"
    elif not verification.get("passed"):
        refusal = (f"{directory}: the verification of its front and rest failed ({verification.get('verdict')}); "
                   f"see {verification.get('report')}")
    if refusal is not None and require_verified:
        raise ManifestError(refusal)
    return {part: Path(directory) / split[part.value] for part in GraphPart}, FrontGeometry.from_dict(split["geometry"])


def fp32_reference(directory: str | Path, manifest: dict[str, Any]) -> tuple[Path | None, str | None]:
    """The fp32 ONNX artifact an engine was built from, checked, or (None, why it cannot be used)."""
    reference = manifest.get("fp32_reference")
    if is_reference(manifest):
        return Path(directory), None
    if not reference:
        return None, "its manifest names no fp32 ONNX it was built from"
    path = (Path(directory) / reference["path"]).resolve()
    try:
        partner = verify_manifest(path)
    except ManifestError as error:
        return None, f"its fp32 ONNX {path} cannot be used: {error}"
    if partner["files"][partner["model_file"]] != reference["model_sha256"]:
        return None, f"{path} holds another fp32 model than the one the engine was built from"
    return path, None


def verification_line(directory: str | Path, split: bool = False) -> str:
    """One line on what verified an artifact's model (its front and rest with ``split``), or why it is not to
    be served."""
    manifest = verify_manifest(directory)
    if split:
        try:
            served_split(directory, manifest)
        except ManifestError as refusal:
            return f"UNVERIFIED: {refusal}"
    elif (refusal := served_verification(directory, manifest)) is not None:
        return f"UNVERIFIED: {refusal}"
    v = manifest["split"]["verification"] if split else manifest["verification"]
    return (f"verified against PyTorch fp32: {v['verdict']} on {len(v.get('inputs', []))} windows at atol "
            f"{v.get('atol')}/rtol {v.get('rtol')} (report {v.get('report')})")
