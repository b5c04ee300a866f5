"""brr-diff command: exit codes and reports on a small checkpoint against PyTorch bf16 autocast."""

from __future__ import annotations

import json

import pytest
import torch

from brr.cli.diff import main
from brr.diff import validate
from brr.model import build_detector, save_checkpoint


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(3)
    model = build_detector({"base": "v3-small", "window_samples": 1920}).eval()
    return str(save_checkpoint(model, tmp_path_factory.mktemp("ckpt")))


def test_usage_errors_exit_2(checkpoint, tmp_path, capsys):
    assert main([checkpoint]) == 2  # no engine: argparse's usage message, and 2
    assert main([str(tmp_path / "missing"), "torch:bf16"]) == 2
    assert main([checkpoint, str(tmp_path)]) == 2
    assert "no manifest.json" in capsys.readouterr().err
    assert main([checkpoint, "torch:int3"]) == 2


def test_bf16_autocast_against_fp32_writes_reports(checkpoint, tmp_path, capsys):
    report_dir = tmp_path / "report"
    code = main([checkpoint, "torch:bf16", "--synthetic", "1", "--no-adversarial", "--out", str(report_dir),
                 "--fail-on", "never"])
    assert code == 0
    document = json.loads((report_dir / "report.json").read_text())
    validate(document)
    engine = document["engines"][0]
    assert engine["name"] == "torch-bf16" and next(iter(engine["stages"])) == "tcn" and "logits" in engine["stages"]
    assert "no ONNX graph" in engine["node_level_notes"][0]  # PyTorch has no ONNX graph to mark
    assert "torch-bf16" in capsys.readouterr().out
    strict = main([checkpoint, "torch:bf16", "--synthetic", "1", "--no-adversarial", "--out", str(report_dir),
                   "--atol", "0", "--rtol", "0", "--fail-on", "divergence"])
    assert strict == 1  # bf16 is not bit-exact
