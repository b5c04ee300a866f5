"""How far an engine of each precision may be from fp32 PyTorch: the one table every command judges by.

Export's verification, ``brr-diff``, ``brr-calibrate`` and ``--help`` read it here, so that a plan calibrate
accepts is judged by the tolerance export verifies with. Free of PyTorch: the CLI shows it in ``--help``.
"""

from __future__ import annotations

# (atol, rtol) per engine precision: what the precision can hold over this network's stages.
TOLERANCES: dict[str, tuple[float, float]] = {
    "fp32": (1e-3, 1e-3), "fp16": (0.1, 0.05), "bf16": (0.25, 0.05), "int8": (0.5, 0.1)}


def describe_tolerances(precisions=tuple(TOLERANCES)) -> str:
    """'fp16 0.1/0.05, bf16 0.25/0.05': atol/rtol per precision, as ``--help`` shows them."""
    return ", ".join(f"{p} {TOLERANCES[p][0]:g}/{TOLERANCES[p][1]:g}" for p in precisions)
