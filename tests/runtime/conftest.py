"""Fixtures shared by the brr-infer tests."""

from __future__ import annotations

import pytest
import torch

from brr.model import build_detector, save_checkpoint


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory):
    """A randomly initialised v3-small checkpoint: real engine mechanics at the smallest cost."""
    torch.manual_seed(3)
    return save_checkpoint(build_detector("v3-small").eval(), tmp_path_factory.mktemp("ckpt") / "v3-small")
