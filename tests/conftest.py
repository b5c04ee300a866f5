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


def adversarial_windows(batch_seed: int = 0) -> dict[str, torch.Tensor]:
    """The inputs every engine must survive: flat channels, electrode pops, saturation, zeros, mains."""
    g = torch.Generator().manual_seed(batch_seed)
    base = torch.randn(1, 19, 15360, generator=g)
    flat = base.clone()
    flat[:, 3:9] = 0.0
    spikes = base.clone()
    spikes[:, :, 5000:5010] *= 1000.0
    saturated = base.clamp(-0.5, 0.5) * 20
    t = torch.arange(15360) / 256.0
    mains = torch.sin(2 * torch.pi * 60 * t).expand(1, 19, -1).clone()
    return {"random": base, "flat": flat, "spikes_1000x": spikes, "saturated": saturated,
            "zeros": torch.zeros(1, 19, 15360), "mains_60hz": mains}
