"""The trtexec lines of a TensorRT artifact, for each precision, ops mode and TensorRT major."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from brr.artifact.files import engine_folder
from brr.backends.trt.loader import MODEL_FILE, NETWORK_FILE, TIMING_CACHE_FILE
from brr.backends.trt.trtexec import PLUGINS_NOT_BUILT, printed_lines, trtexec_record

PROBES = ["tcn", "electrodes", "decoder"]
EXPORT = "brr-export ckpt --out out --precision fp16 --ops plugin --backend tensorrt --trt-batch-range 1:4:8"


def record(precision: str, ops: str, batch=(1, 4, 8)) -> dict:
    directory = engine_folder(Path("out"), "tensorrt", precision, ops)
    return trtexec_record(directory, ops, NETWORK_FILE, MODEL_FILE, TIMING_CACHE_FILE, batch, 19, 15360, PROBES)


@pytest.mark.parametrize("precision", ["fp32", "fp16", "bf16", "int8"])
@pytest.mark.parametrize("major", [10, 11])
def test_standard_ops_build_line(precision, major):
    folder = f"out/tensorrt-{precision}-standard"
    args = shlex.split(record(precision, "standard")["build"][f"{major}.x"])
    strongly = ["--stronglyTyped"] if major == 10 else []  # 11.x: every network is strongly typed
    assert args == ["trtexec", f"--onnx={folder}/model.onnx", *strongly, "--minShapes=eeg:1x19x15360",
                    "--optShapes=eeg:4x19x15360", "--maxShapes=eeg:8x19x15360", "--noTF32",
                    "--markDebug=tcn,electrodes,decoder", "--profilingVerbosity=detailed",
                    f"--timingCacheFile={folder}/timing.cache", f"--saveEngine={folder}/model.engine",
                    "--skipInference"]
    # The precision is in the typed graph: no weak-typing flag, whatever the engine's precision.
    assert not {"--fp16", "--bf16", "--int8", "--best", "--precisionConstraints=obey"} & set(args)
    assert not any(a.startswith(("--calib", "--layerPrecisions", "--layerOutputTypes")) for a in args)


@pytest.mark.parametrize("precision", ["fp32", "fp16", "bf16", "int8"])
@pytest.mark.parametrize("ops", ["standard", "plugin"])
def test_run_line_loads_the_engine_at_the_optimum_batch(precision, ops):
    folder = f"out/tensorrt-{precision}-{ops}"
    assert shlex.split(record(precision, ops, (2, 3, 5))["run"]) == [
        "trtexec", f"--loadEngine={folder}/model.engine", "--shapes=eeg:3x19x15360"]


@pytest.mark.parametrize("precision", ["fp32", "fp16", "bf16", "int8"])
def test_plugin_mode_is_not_built_by_trtexec(precision):
    plugin = record(precision, "plugin")
    assert plugin["build"] is None and plugin["build_note"] == PLUGINS_NOT_BUILT
    assert "build_note" not in record(precision, "standard")


def test_printed_lines_follow_the_tensorrt_found():
    standard = record("fp16", "standard")
    both = printed_lines(standard, None, EXPORT)  # no TensorRT here: each major's line
    assert both == ["# builds the engine with trtexec (TensorRT 10.x):", standard["build"]["10.x"],
                    "# builds the engine with trtexec (TensorRT 11.x):", standard["build"]["11.x"],
                    "# runs and times the engine with trtexec:", standard["run"]]
    assert printed_lines(standard, 10, EXPORT)[1] == standard["build"]["10.x"]
    assert printed_lines(standard, 11, EXPORT)[1] == standard["build"]["11.x"] and len(
        printed_lines(standard, 11, EXPORT)) == 4
    assert all(line.startswith(("#", "trtexec ")) for line in both)


def test_printed_lines_of_plugin_mode():
    plugin = record("fp16", "plugin")
    lines = printed_lines(plugin, None, EXPORT)
    assert lines == [f"# {PLUGINS_NOT_BUILT} on a machine with TensorRT and a CUDA GPU:", EXPORT,
                     ("# runs and times the engine with trtexec without Python (each plugin's AOT kernel is in the "
                      "engine):"), plugin["run"]]
    jit = printed_lines(plugin, 11, EXPORT, jit_plugins=["brr::SymmetricEigh"])
    assert plugin["run"] not in jit and "brr::SymmetricEigh got its JIT (Python) implementation" in jit[-1]
