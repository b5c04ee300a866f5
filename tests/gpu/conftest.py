import pytest
import torch

if not torch.cuda.is_available():
    pytest.skip("needs a CUDA GPU (run on a GPU machine: pytest tests/gpu)", allow_module_level=True)
