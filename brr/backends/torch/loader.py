"""A checkpoint folder as a Polygraphy loader: ``DetectorFromCheckpoint(path)()`` is the verified model."""

from __future__ import annotations

from pathlib import Path

from polygraphy.backend.base import BaseLoader

from brr.model import V3Detector, load_checkpoint


class DetectorFromCheckpoint(BaseLoader):
    """Checkpoint folder -> ``V3Detector``; ``load_checkpoint`` refuses one that does not verify."""

    def __init__(self, path: str | Path):
        super().__init__()
        self.path = Path(path)

    def call_impl(self) -> V3Detector:
        return load_checkpoint(self.path)
