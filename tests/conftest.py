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
