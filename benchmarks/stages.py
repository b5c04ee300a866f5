"""Per-stage time of the PyTorch detector, from timers around each stage module (the probe points)."""

from __future__ import annotations

import time
from collections import defaultdict

import torch

from brr.model import V3Detector


def stage_profile(model: V3Detector, x: torch.Tensor, repeats: int = 3) -> dict[str, float]:
    """Median seconds per stage over ``repeats`` forwards (after one warm-up)."""
    samples: dict[str, list[float]] = defaultdict(list)
    started: dict[str, float] = {}
    handles = []
    for name, module in model.named_children():
        handles.append(module.register_forward_pre_hook(lambda m, i, n=name: started.__setitem__(n, time.perf_counter())))
        handles.append(module.register_forward_hook(
            lambda m, i, o, n=name: samples[n].append(time.perf_counter() - started[n])))
    try:
        with torch.inference_mode():
            model(x)
            samples.clear()
            for _ in range(repeats):
                model(x)
    finally:
        for handle in handles:
            handle.remove()
    return {name: sorted(times)[len(times) // 2] for name, times in samples.items()}
