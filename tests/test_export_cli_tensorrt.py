"""brr-export's TensorRT path without TensorRT: the CLI's exit code and the builder's pure logic."""

from __future__ import annotations

import pytest

from brr.cli.export import main
from brr.errors import EXIT_UNUSABLE
from brr.export.engines.onnxruntime import EngineBuildError
from brr.export.engines.tensorrt import (
    TensorRTUnavailable,
    config_flags,
    import_tensorrt,
    parse_batch_range,
    pinned_layers,
    profile_shapes,
)
from brr.model import build_detector, save_checkpoint


def _tensorrt_usable() -> bool:
    try:
        import_tensorrt()
    except TensorRTUnavailable:
        return False
    return True


@pytest.mark.skipif(_tensorrt_usable(), reason="TensorRT and a GPU are present: the missing-TensorRT path cannot run")
def test_cli_without_tensorrt_exits_2_with_one_line(tmp_path, capsys):
    save_checkpoint(build_detector("v3-small"), tmp_path / "ckpt")
    assert main([str(tmp_path / "ckpt"), "--out", str(tmp_path / "out"), "--backend", "tensorrt"]) == EXIT_UNUSABLE
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "TensorRT" in err[0] and "pip install .[gpu]" in err[0]
    assert not (tmp_path / "out").exists()  # refused before any work


def test_batch_range_parsing():
    assert parse_batch_range("1:4:8") == (1, 4, 8)
    assert parse_batch_range("2") == (2, 2, 2)
    for bad in ("8:4:1", "0:1:2", "1:2", "a:b:c"):
        with pytest.raises(ValueError, match="MIN:OPT:MAX"):
            parse_batch_range(bad)


def test_profile_shapes():
    assert profile_shapes((1, 4, 8), 19, 15360) == {"eeg": ((1, 19, 15360), (4, 19, 15360), (8, 19, 15360))}


def test_config_flags():
    assert config_flags("fp32", pinned=False) == {}
    assert config_flags("fp16", pinned=True) == {"fp16": True, "precision_constraints": "obey"}
    assert config_flags("bf16", pinned=False) == {"bf16": True}
    assert config_flags("int8", pinned=False) == {"int8": True, "fp16": True}
    with pytest.raises(EngineBuildError):
        config_flags("fp8", pinned=False)


def test_plan_nodes_map_to_layers_by_name_and_onnx_metadata():
    layers = [("node_Exp_3", ""), ("node_Exp_30", ""), ("ForeignNode[a...b]", "[ONNX Layer: node_Softplus_1]"),
              ("Conv_7", "[ONNX Layer: node_conv1d]"), ("other", None)]
    assert pinned_layers(layers, ["node_Exp_3", "node_Softplus_1"]) == ["node_Exp_3", "ForeignNode[a...b]"]
    assert pinned_layers(layers, []) == []
