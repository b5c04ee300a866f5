"""The CUDA build of ONNX Runtime replaces the CPU one: the extras never install both, and a CUDA session
that finds the wrong build says which command fixes it."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from brr.backends.onnxrt.loader import (CUDA_ONNXRUNTIME_COMMAND, SessionWithCustomOps, installed_onnxruntime,
                                        missing_provider_message)

ROOT = Path(__file__).resolve().parents[2]


def test_no_extra_adds_onnxruntime_gpu_beside_onnxruntime():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert any(r.startswith("onnxruntime>") for r in project["dependencies"])
    for extra, requirements in project["optional-dependencies"].items():
        assert not [r for r in requirements if re.match(r"onnxruntime-gpu\b", r)], extra


@pytest.mark.parametrize("document", ["README.md", "docker/gpu.Dockerfile"])
def test_the_replacement_command_is_documented(document):
    text = re.sub(r"\\\n\s*", "", (ROOT / document).read_text())
    assert "pip uninstall -y onnxruntime onnxruntime-gpu && pip install" in text
    assert "onnxruntime-gpu>=1.20" in CUDA_ONNXRUNTIME_COMMAND and "onnxruntime-gpu>=1.20" in text


@pytest.mark.parametrize(("distributions", "says"), [
    (["onnxruntime"], "the installed build is the CPU one"),
    (["onnxruntime", "onnxruntime-gpu"], "both installed"),
])
def test_a_wrong_build_names_the_fix(distributions, says):
    message = missing_provider_message("CUDAExecutionProvider", distributions)
    assert says in message and message.endswith(CUDA_ONNXRUNTIME_COMMAND)


def test_the_cuda_build_without_a_device_does_not_ask_for_a_reinstall():
    message = missing_provider_message("CUDAExecutionProvider", ["onnxruntime-gpu"])
    assert "no CUDA device" in message and "pip" not in message


def test_a_cuda_session_on_this_install_says_what_to_do(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    onnx.save(model, tmp_path / "m.onnx")
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this machine's onnxruntime has CUDA")
    with pytest.raises(RuntimeError) as error:
        SessionWithCustomOps(tmp_path / "m.onnx", device="cuda")()
    assert str(error.value) == missing_provider_message("CUDAExecutionProvider", installed_onnxruntime())
    assert installed_onnxruntime() == ["onnxruntime"]
