"""Where recordings run: in this process, or spread over a Ray cluster.

An executor takes the per-recording worker of :mod:`brr.runtime.infer` (a picklable callable
``worker(job, listener) -> RecordingEntry``) and the jobs, and yields one entry per finished
recording. Both executors call the same worker, so they write the same outputs.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

__all__ = ["LocalExecutor", "RayExecutor", "make_executor"]

# Seconds to let cancelled Ray tasks remove their partial outputs before the local cluster stops.
RAY_CANCEL_GRACE_S = 30.0


class LocalExecutor:
    """One recording after another in this process, with per-window progress."""

    def run(self, worker: Any, jobs: Sequence[Any], listener: Any) -> Iterator[Any]:
        for job in jobs:
            yield worker(job, listener)


def _run_job(worker: Any, job: Any) -> Any:
    try:
        return worker(job)
    finally:
        worker.close()


def import_ray() -> Any:
    try:
        import ray
    except ImportError as error:
        raise ImportError(
            "--executor ray needs Ray: pip install '.[ray]' (or pip install 'ray>=2.9')"
        ) from error
    return ray


class RayExecutor:
    """One Ray task per recording; each task loads the engine in its worker and returns its entry.

    ``address`` None starts (and afterwards stops) a local Ray instance unless one is already
    initialised; otherwise it is passed to ``ray.init`` (e.g. ``"auto"`` for a running cluster,
    whose nodes must see the inputs and the output folder at the same paths).
    """

    def __init__(self, address: str | None = None, cpus_per_task: int = 1) -> None:
        self.address = address
        self.cpus_per_task = cpus_per_task

    def run(self, worker: Any, jobs: Sequence[Any], listener: Any) -> Iterator[Any]:
        ray = import_ray()
        started_here = not ray.is_initialized()
        if started_here:
            ray.init(address=self.address, include_dashboard=False, logging_level="warning")
        # The tasks load their own engine; the driver's copy would only hold memory.
        worker.close()
        remote = ray.remote(num_cpus=self.cpus_per_task, max_retries=0)(_run_job)
        worker_ref = ray.put(worker)
        pending = {remote.remote(worker_ref, job): job for job in jobs}
        try:
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                for ref in done:
                    del pending[ref]
                    entry = ray.get(ref)
                    listener.recording_finished(entry)
                    yield entry
        finally:
            if pending:
                # A cancelled task gets KeyboardInterrupt and removes its partial outputs.
                for ref in pending:
                    ray.cancel(ref)
                ray.wait(list(pending), num_returns=len(pending), timeout=RAY_CANCEL_GRACE_S)
            if started_here:
                ray.shutdown()


def make_executor(settings: Any) -> LocalExecutor | RayExecutor:
    if settings.executor == "ray":
        import_ray()  # fail before any recording runs
        return RayExecutor(settings.ray_address, settings.threads or 1)
    return LocalExecutor()
