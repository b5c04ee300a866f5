"""The folder ``brr-export --out`` wrote is accepted where an engine is: brr-infer serves its one (or its
verified, or fastest verified, or its asked-for) engine and lists the candidates when the choice is not obvious; brr-diff
compares every artifact in it, each reduced-precision engine paired with the fp32 ONNX beside it."""

from __future__ import annotations

import shutil

import pytest
import torch

from brr.artifact.load import select_engine
from brr.artifact.manifest import ManifestError, record_verification
from brr.cli.export import main as export_main
from brr.cli.infer import main as infer_main
from brr.diff import SyntheticWindows, run_diff
from brr.model import build_detector, save_checkpoint

WINDOW = 1920
FP16 = "onnxruntime-fp16-standard"


@pytest.fixture(scope="module")
def export_root(tmp_path_factory):
    torch.manual_seed(3)
    model = build_detector({"base": "v3-small", "window_samples": WINDOW}).eval()
    checkpoint = save_checkpoint(model, tmp_path_factory.mktemp("checkpoint"))
    root = tmp_path_factory.mktemp("export")
    assert export_main([str(checkpoint), "--out", str(root), "--engine", "fp16", "--backend", "onnxruntime",
                        "--precision-plan", "none", "--no-verify"]) == 0
    return checkpoint, root


def test_an_export_folder_with_one_engine_is_that_engine(export_root):
    _, root = export_root
    assert select_engine(root) == root / FP16  # the fp32 ONNX beside it is its reference, not a second engine
    assert select_engine(root, "fp16") == root / FP16
    assert select_engine(root / FP16) == root / FP16
    assert select_engine(root, "fp32") == root / "onnx-standard"  # the reference, asked for by its precision
    with pytest.raises(ManifestError, match=r"no bf16 engine in this export; it holds onnx-standard \(fp32\), "
                                            rf"{FP16} \(fp16\)"):
        select_engine(root, "bf16")
    with pytest.raises(ManifestError, match="nor a brr-export artifact or export folder"):
        select_engine(root.parent)


def test_several_engines_are_listed_and_the_verified_one_is_served(export_root, tmp_path, capsys):
    _, original = export_root
    root = shutil.copytree(original, tmp_path / "export")
    shutil.copytree(root / FP16, root / "onnxruntime-fp16-again")
    with pytest.raises(ManifestError, match=f"holds 2 engines: onnxruntime-fp16-again, {FP16}; pass one of these "
                                            "folders or --precision"):
        select_engine(root)
    assert infer_main([str(root), str(tmp_path / "missing.edf"), "--out", str(tmp_path / "out")]) == 2
    assert "holds 2 engines" in capsys.readouterr().err
    record_verification(root / FP16, {"passed": True, "verdict": "pass"})
    assert select_engine(root) == root / FP16


def test_the_fastest_verified_engine_is_served_when_timed_on_one_machine(export_root, tmp_path, caplog):
    _, original = export_root
    root = shutil.copytree(original, tmp_path / "export")
    slow = shutil.copytree(root / FP16, root / "onnxruntime-fp16-slow")
    timed = {"passed": True, "verdict": "pass", "timed_on": "cpu A, 2 threads"}
    record_verification(root / FP16, timed | {"serving_s_per_window": 0.4})
    record_verification(slow, timed | {"serving_s_per_window": 0.9})
    with caplog.at_level("INFO"):
        assert select_engine(root) == root / FP16
    assert f"serving {FP16}, the fastest of its verified engines" in caplog.text and "0.9" in caplog.text
    # Times from two machines, or a verification that timed nothing, rank nothing: the user chooses.
    record_verification(slow, timed | {"serving_s_per_window": 0.1, "timed_on": "cpu B, 64 threads"})
    with pytest.raises(ManifestError, match="holds 2 verified engines"):
        select_engine(root)
    record_verification(slow, {"passed": True, "verdict": "pass"})
    with pytest.raises(ManifestError, match="holds 2 verified engines"):
        select_engine(root)


def test_verification_times_a_passing_engine_as_it_is_served(export_root, tmp_path):
    from brr.artifact.manifest import read_manifest
    from brr.diff.verify import verify_engine
    from brr.machine import describe

    checkpoint, original = export_root
    root = shutil.copytree(original, tmp_path / "export")
    # The fp32 ONNX passes; the fp16 engine exported without a plan fails, and is not timed.
    passing = verify_engine(checkpoint, root / "onnx-standard", "fp32", tmp_path / "fp32", WINDOW, synthetic_windows=1)
    recorded = read_manifest(root / "onnx-standard")["verification"]
    assert passing.passed and recorded["passed"]
    assert 0 < recorded["serving_s_per_window"] < 60 and recorded["timed_on"] == describe()
    failing = verify_engine(checkpoint, root / FP16, "fp16", tmp_path / "fp16", WINDOW, synthetic_windows=1)
    recorded = read_manifest(root / FP16)["verification"]
    assert not failing.passed and not recorded["passed"] and "serving_s_per_window" not in recorded


def test_diff_takes_every_artifact_of_an_export_folder(export_root):
    checkpoint, root = export_root
    report = run_diff(checkpoint, [root], SyntheticWindows(1, WINDOW))
    assert [e.name for e in report.engines] == ["onnx-standard", FP16]
    fp16 = report.engines[1]
    assert fp16.node_level_note is None  # paired with the export's fp32 ONNX: localisable node by node
    assert fp16.inputs[0].node_level is not None and fp16.inputs[0].node_level.runs >= 2
