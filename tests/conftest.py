import numpy as np
import pytest
import torch

from brr.model import build_detector


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    np.random.seed(0)


@pytest.fixture(scope="session")
def small_model():
    torch.manual_seed(1)
    return build_detector("v3-small").eval()


@pytest.fixture(scope="session")
def small_exports(small_model, tmp_path_factory):
    """v3-small's fp32 ONNX export in both ops modes, for tests that only read it."""
    from brr.export.onnx_export import export_onnx

    return {ops: export_onnx(small_model, tmp_path_factory.mktemp(f"small-onnx-{ops}"), ops)
            for ops in ("standard", "plugin")}
