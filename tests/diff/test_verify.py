"""The verified graph is the served graph: brr-infer serves only a model whose verification passed.

One v3-small fp32 export is verified for real (the diff against PyTorch fp32 writes its verdict and
the model's sha256 into the manifest); copies of it are then left unverified, failed, or given
another model with file hashes rewritten to match, as a careless or hostile hand would.
"""

from __future__ import annotations

import shutil

import pytest
import torch

from brr.artifact.files import MANIFEST_FILE, ONNX_FILE
from brr.artifact.manifest import read_manifest, record_verification, rewrite_manifest, write_manifest
from brr.cli.infer import main as infer_main
from brr.data.synthetic import write_corpus
from brr.diff.verify import verify_engine
from brr.export.onnx_export import export_onnx
from brr.model import build_detector
from brr.model.checkpoint import file_sha256


def _export(directory, seed: int):
    torch.manual_seed(seed)
    model = build_detector("v3-small").eval()
    export = export_onnx(model, directory, "standard")
    write_manifest(directory, source={}, config=model.config, backend="onnxruntime", precision="fp32",
                   ops="standard", opset=export.opset, model_file=ONNX_FILE, pinned_nodes=[])
    return model


@pytest.fixture(scope="module")
def verified(tmp_path_factory):
    root = tmp_path_factory.mktemp("served")
    model = _export(root / "engine", seed=1)
    verification = verify_engine(model, root / "engine", "fp32", root / "report", model.config.window_samples,
                                 synthetic_windows=1)
    assert verification.passed
    _export(root / "other", seed=2)
    write_corpus(root / "edf", recordings=1, minutes=1.5, seed=5)
    return root


def _infer(engine, root, out, *flags, quiet=True):
    return infer_main([str(engine), str(root / "edf"), "--out", str(out), "--stride", "60",
                       *(["--quiet"] if quiet else []), *flags])


def test_a_verified_engine_is_served_and_its_verdict_printed(verified, tmp_path, capsys):
    assert _infer(verified / "engine", verified, tmp_path, quiet=False) == 0
    assert "verified against PyTorch fp32" in capsys.readouterr().err
    # --quiet: said only where it is a warning (below: an unverified engine served).
    assert _infer(verified / "engine", verified, tmp_path / "quiet") == 0
    assert "verified against PyTorch fp32" not in capsys.readouterr().err


def test_an_engine_never_verified_is_refused_unless_allowed(verified, tmp_path, capsys):
    copy = shutil.copytree(verified / "engine", tmp_path / "engine")
    manifest = read_manifest(copy)
    manifest["verification"] = None
    rewrite_manifest(copy, manifest)
    assert _infer(copy, verified, tmp_path / "out") == 2
    assert "never verified" in capsys.readouterr().err
    assert not (tmp_path / "out" / "summary.json").exists()
    assert _infer(copy, verified, tmp_path / "allowed", "--allow-unverified") == 0
    assert "WARNING: serving an unverified engine" in capsys.readouterr().err


def test_a_failed_verification_is_refused(verified, tmp_path, capsys):
    copy = shutil.copytree(verified / "engine", tmp_path / "engine")
    record_verification(copy, {"passed": False, "verdict": "nonfinite_precision", "report": "r"})
    assert _infer(copy, verified, tmp_path / "out") == 2
    assert "verification failed (nonfinite_precision)" in capsys.readouterr().err


def test_a_swapped_model_with_rewritten_hashes_is_refused(verified, tmp_path, capsys):
    """The manifest's file hashes (and its own digest) are rewritten to match the new model; the hash of
    the model that was verified is not, and says so."""
    copy = shutil.copytree(verified / "engine", tmp_path / "engine")
    shutil.copy(verified / "other" / ONNX_FILE, copy / ONNX_FILE)
    manifest = read_manifest(copy)
    manifest["files"][ONNX_FILE] = file_sha256(copy / ONNX_FILE)
    rewrite_manifest(copy, manifest)
    assert _infer(copy, verified, tmp_path / "out") == 2
    assert "is not the model that was verified" in capsys.readouterr().err


def test_a_hand_edited_manifest_is_refused(verified, tmp_path, capsys):
    copy = shutil.copytree(verified / "engine", tmp_path / "engine")
    text = (copy / MANIFEST_FILE).read_text()
    (copy / MANIFEST_FILE).write_text(text.replace('"passed": true', '"passed": false', 1))
    assert _infer(copy, verified, tmp_path / "out") == 2
    assert "changed after brr-export wrote it" in capsys.readouterr().err
