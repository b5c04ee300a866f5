"""``brr-export --backend tensorrt`` where TensorRT is missing: the artifact is written all but its engine.

The folder holds the typed graph (the bytes of the ONNX Runtime engine of that precision and plan) and a
manifest that says the engine is not built and how to build it; the command prints the lines that build
and run it, then exits 2 with the one-line missing-dependency error; brr-infer refuses the folder.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from fake_tensorrt import tensorrt_usable

from brr.artifact.load import load_runner
from brr.artifact.manifest import ManifestError, read_manifest
from brr.backends.onnxrt.loader import build_engine as write_onnxruntime_engine
from brr.backends.trt.trtexec import PLUGINS_NOT_BUILT
from brr.cli.export import main
from brr.cli.infer import main as infer_main
from brr.errors import EXIT_UNUSABLE
from brr.export.run import ExportRequest, export_command
from brr.model import OUTPUT_NAME, PROBE_NAMES, build_detector, save_checkpoint
from brr.model.checkpoint import file_sha256


@pytest.mark.skipif(tensorrt_usable(), reason="TensorRT and a GPU are present: the missing-TensorRT path cannot run")
def test_export_writes_the_artifact_prints_how_to_build_it_and_exits_2(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    save_checkpoint(build_detector("v3-small"), "ckpt")
    args = ["ckpt", "--out", "out", "--precision", "fp16", "--ops", "plugin", "--backend", "tensorrt", "-q"]
    assert main(args) == EXIT_UNUSABLE
    printed = capsys.readouterr()
    (error,) = printed.err.strip().splitlines()
    assert error.startswith("brr-export: TensorRT is not installed") and "pip install .[gpu]" in error
    assert error.endswith("out/tensorrt-fp16-plugin holds what its build needs")
    assert printed.out.splitlines() == [
        f"# {PLUGINS_NOT_BUILT} on a machine with TensorRT and a CUDA GPU:",
        "brr-export ckpt --out out --precision fp16 --ops plugin --backend tensorrt --trt-batch-range 1:4:8",
        "# runs and times the engine with trtexec without Python (each plugin's AOT kernel is in the engine):",
        "trtexec --loadEngine=out/tensorrt-fp16-plugin/model.engine --shapes=eeg:4x19x15360"]

    folder = Path("out/tensorrt-fp16-plugin")
    assert sorted(p.name for p in folder.iterdir()) == ["manifest.json", "model.onnx"]
    manifest = read_manifest(folder)
    assert manifest["model_file"] == "model.engine" and "TensorRT is not installed" in manifest["unbuilt"]
    settings = manifest["settings"]
    assert settings["network_sha256"] == manifest["files"]["model.onnx"] == file_sha256(folder / "model.onnx")
    assert (settings["strongly_typed"], settings["tf32"], settings["batch_profile"]) == (True, False, [1, 4, 8])
    assert settings["debug_tensors"] == [name for name in PROBE_NAMES if name != OUTPUT_NAME]
    assert settings["trtexec"]["build"] is None and printed.out.splitlines()[-1] == settings["trtexec"]["run"]
    # The typed graph is the ONNX Runtime fp16 engine of the same plan, byte for byte.
    pinned = manifest["fp32_pinned_nodes"]
    assert pinned  # the default plan's fp32 islands
    write_onnxruntime_engine(Path("out/onnx-plugin/model.onnx"), "plugin", Path("ort"), "fp16", pinned)
    assert file_sha256(Path("ort/model.onnx")) == manifest["files"]["model.onnx"]

    with pytest.raises(ManifestError, match="its engine model.engine was never built"):
        load_runner(folder)
    assert infer_main(["out", "recording.edf", "--out", "events"]) == EXIT_UNUSABLE
    refusal = capsys.readouterr().err.strip().splitlines()[-1]
    assert "tensorrt-fp16-plugin: artifact refused: its engine model.engine was never built" in refusal


def test_export_command_makes_the_export_again():
    request = ExportRequest(Path("runs/best"), Path("engines"), engine="int8", ops="standard", backend="tensorrt",
                            batch=(1, 2, 4), precision_plan=Path("cal/precision_plan.json"),
                            calibration_data=Path("my data/"))
    assert export_command(request, "tensorrt") == (
        "brr-export runs/best --out engines --precision int8 --ops standard --backend tensorrt "
        "--trt-batch-range 1:2:4 --precision-plan cal/precision_plan.json --data 'my data' "
        "--calibration-windows 8")
