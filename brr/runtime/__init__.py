"""Inference runtime: stitching, post-processing, scoring and serving."""
