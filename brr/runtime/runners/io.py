"""Tensor names every engine shares: one input, the logits, and the probe outputs of probed models."""

INPUT_NAME = "eeg"  # (B, 19, 15360) float32, B dynamic
OUTPUT_NAME = "logits"  # (B, 15360) float32
