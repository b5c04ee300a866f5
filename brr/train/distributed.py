"""The processes of one training run: torch.distributed when ``torchrun`` started several, else one.

``torchrun`` sets ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK``; with ``WORLD_SIZE`` > 1 the run joins the
process group (gloo on CPU, NCCL on CUDA, each process on the GPU of its local rank) and the model is
wrapped in ``DistributedDataParallel``. Rank 0 alone prepares the window store, before it joins (the
others wait for it in joining), and validates, logs and writes checkpoints (the others wait in their next
collective): the group's timeout is long enough for a validation pass over an archive's held-out
recordings and for preparing a corpus of hours; an archive is prepared before, with ``brr-prepare``.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist

from brr.train.settings import SettingsError

# Preparing and validating on rank 0 can take long on an archive; the others wait for it meanwhile.
GROUP_TIMEOUT = datetime.timedelta(hours=2)


@dataclass(frozen=True)
class Processes:
    """This process's place in the run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def device(self, requested: str) -> torch.device:
        """``requested`` for one process; with several on CUDA, the GPU of this process's local rank."""
        device = torch.device(requested)
        if self.distributed and device.type == "cuda":
            return torch.device("cuda", self.local_rank)
        return device

    def sum(self, *values: float | torch.Tensor) -> list[float]:
        """The sum of each value over all processes (in one collective)."""
        tensor = torch.tensor([float(v) for v in values], dtype=torch.float64)
        if self.distributed:
            tensor = tensor.to(_collective_device())
            dist.all_reduce(tensor)
        return tensor.cpu().tolist()

    def any(self, flag: bool) -> bool:
        """True on every process when ``flag`` is True on any."""
        return self.sum(1.0 if flag else 0.0)[0] > 0

    def gather(self, value) -> list:
        """Every process's ``value`` (picklable, small), in rank order."""
        if not self.distributed:
            return [value]
        gathered = [None] * self.world_size
        dist.all_gather_object(gathered, value)
        return gathered


def _collective_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def processes_from_environment() -> Processes:
    """The place ``torchrun`` gave this process (one process when it did not start this one)."""
    try:
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    except ValueError as exc:
        raise SettingsError(f"WORLD_SIZE/RANK/LOCAL_RANK must be integers (as torchrun sets them): {exc}") from exc
    return Processes(rank, world_size, local_rank)


@contextlib.contextmanager
def process_group(processes: Processes, device: str) -> Iterator[Processes]:
    """Join the group for the run (nothing for one process); leave it however the run ends."""
    if not processes.distributed:
        yield processes
        return
    cuda = torch.device(device).type == "cuda"
    if cuda:
        torch.cuda.set_device(processes.local_rank)
    dist.init_process_group("nccl" if cuda else "gloo", timeout=GROUP_TIMEOUT)
    if not processes.main:
        # One voice: rank 0 logs the run; the others speak only of warnings and errors.
        logging.getLogger("brr").setLevel(logging.WARNING)
    try:
        yield processes
    finally:
        dist.destroy_process_group()
