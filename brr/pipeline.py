"""The main job, stage after stage, each reusing what an earlier run already made in the workdir."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from brr.model import build_detector, summarize_probes


@dataclass
class PipelineSettings:
    workdir: str | Path
    config: str = "v3-small"
    seed: int = 0


@dataclass
class PipelineResult:
    probe_rows: list[dict] = field(default_factory=list)
    exit_code: int = 0


def run_pipeline(settings: PipelineSettings, say: Callable[[str], None] = print) -> PipelineResult:
    workdir = Path(settings.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    result = PipelineResult()
    torch.manual_seed(settings.seed)
    model = build_detector(settings.config).eval()
    say(f"[model] {settings.config}: {sum(p.numel() for p in model.parameters()):,} parameters")
    with torch.no_grad():
        logits, probes = model(torch.randn(1, 19, model.config.window_samples), return_probes=True)
    result.probe_rows = summarize_probes(probes)
    if not torch.isfinite(logits).all():
        say("[model] non-finite logits")
        result.exit_code = 1
    return result
