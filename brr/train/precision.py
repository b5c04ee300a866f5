"""Mixed-precision training: ``precision`` fp32, bf16 or fp16 (``torch.autocast``; a ``GradScaler`` for fp16).

Weights, optimizer state and checkpoints stay fp32 in every precision; autocast runs the matrix products
and convolutions in the reduced type and keeps in fp32 what its policy keeps there (LayerNorm, softmax,
reductions). Three parts of V3 stay in fp32 whatever the precision, because reduced precision breaks
them rather than slowing them:
- the selective scan's state and decay exponents: its kernels (native, Triton, the reference's chunk
  sums) accumulate in fp32 and store only their output in the input's type, since the state is a sum
  over the whole sequence and the decays are exponentials of sums;
- the Laplacian eigendecomposition: autocast's policy runs ``linalg_eigh`` (inside ``brr.ops.eigh``) in
  fp32, since eigenvectors of close eigenvalues are decided by differences below bf16's resolution;
- the loss: ``focal_loss`` upcasts the logits, since log-probabilities near 0 and 1 lose their digits.
fp16's range (65504) is what the GradScaler is for: gradients are scaled up to stay above its
underflow, and a step whose scaled gradients overflow is skipped while the scale comes down; that
skip is the scaler working, not an incident.
"""

from __future__ import annotations

import contextlib
from enum import StrEnum

import torch

from brr.errors import UsageError


class TrainPrecision(StrEnum):
    FP32 = "fp32"
    BF16 = "bf16"
    FP16 = "fp16"

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        return {TrainPrecision.BF16: torch.bfloat16, TrainPrecision.FP16: torch.float16}.get(self)

    def autocast(self, device: torch.device) -> contextlib.AbstractContextManager:
        """The forward's context: autocast to this precision, or nothing for fp32."""
        if self is TrainPrecision.FP32:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=self.autocast_dtype)

    def grad_scaler(self, device: torch.device) -> torch.amp.GradScaler | None:
        """fp16's loss scaler; None for fp32 and bf16, whose range needs none."""
        return torch.amp.GradScaler(device.type) if self is TrainPrecision.FP16 else None

    def check_device(self, device: torch.device) -> None:
        if self is TrainPrecision.BF16 and device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise UsageError(f"precision bf16: {torch.cuda.get_device_name(device)} has no bf16 support; "
                                "use fp16 or fp32")
