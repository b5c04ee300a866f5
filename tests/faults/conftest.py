"""Fixtures of the fault-injection suite (its builders and helpers are in faultkit.py)."""

from __future__ import annotations

import pytest
import torch

from brr.model import build_detector, save_checkpoint


@pytest.fixture(scope="session")
def fault_checkpoint(tmp_path_factory):
    torch.manual_seed(5)
    return save_checkpoint(build_detector("v3-small").eval(), tmp_path_factory.mktemp("fault-ckpt") / "v3-small")
