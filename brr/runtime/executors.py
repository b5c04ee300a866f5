"""Where recordings run: in this process, or spread over a Ray cluster.

An executor takes the per-recording worker of :mod:`brr.runtime.worker` (a picklable callable
``worker(job, listener) -> RecordingEntry``) and the jobs: ``open`` gets it ready (before any
recording runs), ``run`` yields one entry per finished recording, ``close`` lets go of what ``open``
took. Both executors call the same worker, so they write the same outputs.

On Ray, what a cluster does to a run is the run's to absorb:

- A recording whose worker process or node is lost while it runs (``kill -9``, the OOM killer, a
  pre-empted node) is run again, up to :data:`RAY_MAX_ATTEMPTS` times in all: its outputs are
  atomic and the folder is locked, so a new attempt starts clean. After the last it fails alone,
  its cause (:class:`LossCause`) in its entry; the batch goes on.
- Recordings are submitted :data:`IN_FLIGHT_PER_CPU` per cluster CPU at a time, not all at once,
  so the driver's memory does not grow with the archive.
- Before any recording runs, one small task on every node that can run one (pinned there with
  ``NodeAffinitySchedulingStrategy``) checks that the node reads the engine and the inputs (up to
  :data:`NODE_CHECK_INPUTS` of them, spread over the archive) and writes this run's output folder (the same folder: it reads a token the driver wrote there). A node
  that cannot is named with the path, and nothing runs.
- A stopped run (Ctrl-C, SIGTERM, an error) puts a stop file in the output folder, which every node
  sees; the running tasks look for it after each engine call and abandon their recordings, writing
  nothing of them, and the driver waits for them a while before it writes the summary.
"""

from __future__ import annotations

import dataclasses
import enum
import logging
import math
import os
import secrets
import signal
import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from brr.errors import UsageError
from brr.output_folder import check_output_folder
from brr.runtime.discovery import RecordingJob
from brr.runtime.settings import InferenceUsageError
from brr.runtime.worker import RecordingEntry, RecordingWorker

__all__ = ["IN_FLIGHT_PER_CPU", "RAY_MAX_ATTEMPTS", "LocalExecutor", "LossCause", "RayExecutor",
           "in_flight_limit", "loss_cause", "make_executor", "node_access_problems"]

log = logging.getLogger(__name__)

# Seconds the running tasks of a stopped run get to abandon their recordings before the driver goes on (the
# end of its Ray job then ends what is left).
RAY_STOP_GRACE_S = 30.0
# Attempts of a recording whose worker or node is lost under it: a loss or two is the cluster's doing (a
# pre-empted node, a neighbour's memory); a recording lost three times brings its worker down itself (its
# memory), and each further attempt would cost as much again.
RAY_MAX_ATTEMPTS = 3
# Recordings submitted per cluster CPU: one running and one queued behind it keep every CPU busy while
# the driver collects results; the driver holds no more references than that, whatever the archive.
IN_FLIGHT_PER_CPU = 2
# Seconds between two looks at the cluster's CPUs (nodes join and leave while a batch runs).
CLUSTER_LOOK_S = 30.0
# Longest wait on Ray at a time: a Ctrl-C or SIGTERM is acted on between two waits (within one, Ray notices
# it only about every half second, while the running recordings go on).
RAY_WAIT_S = 0.1
# Seconds a node has to answer the access check (it starts a worker and imports brr).
NODE_CHECK_TIMEOUT_S = 120.0
# Unreadable inputs named in a node's problem (the rest are counted).
UNREADABLE_SHOWN = 1
# Inputs each node reads in the access check, spread over the archive: a node without the archive's mount
# reads none, and opening 100,000 files on a network file system would hold the batch up for minutes.
NODE_CHECK_INPUTS = 256


class LossCause(enum.Enum):
    """Why a Ray task ended without an entry: the cluster took its process away."""

    WORKER_LOST = "worker lost"
    NODE_LOST = "node lost"
    OUT_OF_MEMORY = "out of memory"


def loss_cause(error: BaseException) -> LossCause | None:
    """The cause when ``error`` (raised by ``ray.get``) says the task's process or node was lost, else None."""
    from ray import exceptions

    if isinstance(error, exceptions.OutOfMemoryError):  # Ray's memory monitor killed the worker
        return LossCause.OUT_OF_MEMORY
    # A node gone while the task ran, or after it finished but before its result was fetched.
    if isinstance(error, (exceptions.NodeDiedError, exceptions.ObjectLostError)):
        return LossCause.NODE_LOST
    if isinstance(error, exceptions.WorkerCrashedError):
        return LossCause.WORKER_LOST
    return None


def in_flight_limit(cluster_cpus: float, cpus_per_task: int) -> int:
    """Recordings to have submitted at once: :data:`IN_FLIGHT_PER_CPU` per recording the cluster runs at a
    time, at least one (a cluster that has no CPU yet may get one from its autoscaler)."""
    return max(1, math.floor(cluster_cpus / cpus_per_task) * IN_FLIGHT_PER_CPU)


class LocalExecutor:
    """One recording after another in this process, with per-window progress."""

    def open(self, worker: RecordingWorker, jobs: Sequence[RecordingJob]) -> None:
        pass

    def run(self, worker: RecordingWorker, jobs: Sequence[RecordingJob], listener: Any) -> Iterator[RecordingEntry]:
        for job in jobs:
            yield worker(job, listener)

    def close(self) -> None:
        pass


def _run_job(worker: RecordingWorker, job: RecordingJob) -> RecordingEntry:
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


def _readable(path: str) -> None:
    if os.path.isdir(path):
        os.listdir(path)
    else:
        with open(path, "rb"):
            pass


def node_access_problems(engine: str, inputs: Sequence[str], out_dir: str, token_file: str, token: str) -> list[str]:
    """What keeps this machine from running recordings of the run: the engine or inputs it cannot read, an
    output folder it cannot write or that is not the driver's (``token_file`` in it does not hold ``token``)."""
    problems = []
    unreadable = []
    for path in [engine, *inputs]:
        try:
            _readable(path)
        except OSError as error:
            unreadable.append(f"cannot read {path}: {error.strerror or error}")
    if unreadable:
        more = len(unreadable) - UNREADABLE_SHOWN
        problems.append("; ".join(unreadable[:UNREADABLE_SHOWN])
                        + (f" (and {more} more of the {len(inputs) + 1} paths)" if more else ""))
    try:
        seen = (Path(out_dir) / token_file).read_text(encoding="utf-8")
    except FileNotFoundError:
        seen = None
    except OSError as error:
        problems.append(f"cannot read in the output folder {out_dir}: {error.strerror or error}")
        return problems
    if seen != token:
        where = "is another folder than the driver's" if os.path.isdir(out_dir) else "does not exist"
        problems.append(f"the output folder {out_dir} {where} there")
        return problems
    try:
        check_output_folder(out_dir)
    except UsageError as error:
        problems.append(str(error))
    return problems


class RayExecutor:
    """One Ray task per recording; each task loads the engine in its worker and returns its entry.

    ``address`` None starts (and afterwards stops) a local Ray instance unless one is already
    initialised; otherwise it is passed to ``ray.init`` (e.g. ``"auto"`` for a running cluster,
    whose nodes must see the engine, the inputs and the output folder at the same paths).
    """

    def __init__(self, address: str | None = None, cpus_per_task: int = 1) -> None:
        self.address = address
        self.cpus_per_task = cpus_per_task
        self._ray: Any = None
        self._started_here = False

    def open(self, worker: RecordingWorker, jobs: Sequence[RecordingJob]) -> None:
        """Join (or start) the cluster and check its nodes; raises :class:`InferenceUsageError` when one
        cannot run the recordings, naming it and the path."""
        ray = import_ray()
        if not ray.is_initialized():
            _init_ray(ray, self.address)
            self._started_here = True
        self._ray = ray
        self._check_nodes(worker, jobs)
        # The tasks load their own engine; the driver's copy would only hold memory.
        worker.close()

    def close(self) -> None:
        if self._started_here:
            self._ray.shutdown()
            self._started_here = False

    def _check_nodes(self, worker: RecordingWorker, jobs: Sequence[RecordingJob]) -> None:
        ray = self._ray
        from ray.exceptions import RayError
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        nodes = [node for node in ray.nodes()
                 if node["Alive"] and node["Resources"].get("CPU", 0) >= self.cpus_per_task]
        if not nodes:  # an autoscaling cluster adds them once recordings wait
            log.warning("no Ray node has the %d CPU(s) a recording needs yet: the nodes are not checked",
                        self.cpus_per_task)
            return
        token_file, token = f".node-check.{secrets.token_hex(4)}.tmp", secrets.token_hex(16)
        (worker.out_dir / token_file).write_text(token, encoding="utf-8")
        try:
            check = ray.remote(num_cpus=0, max_retries=0)(node_access_problems)
            step = max(1, math.ceil(len(jobs) / NODE_CHECK_INPUTS))
            inputs = ray.put([os.path.abspath(job.path) for job in jobs[::step]])
            checks = {
                check.options(name="brr-infer node check", scheduling_strategy=NodeAffinitySchedulingStrategy(
                    node["NodeID"], soft=False)).remote(os.path.abspath(worker.engine), inputs,
                                                        str(worker.out_dir.absolute()), token_file, token): node
                for node in nodes
            }
            answered, silent = ray.wait(list(checks), num_returns=len(checks), timeout=NODE_CHECK_TIMEOUT_S)
            problems = []
            for ref in answered:
                name = _node_name(checks[ref])
                try:
                    found = ray.get(ref)
                except RayError as error:
                    if loss_cause(error) is None:
                        raise
                    log.warning("Ray node %s was lost during the access check; its recordings go to the others",
                                name)
                    continue
                if found:
                    problems.append(f"Ray node {name}: {'; '.join(found)}")
            for ref in silent:
                problems.append(f"Ray node {_node_name(checks[ref])}: no answer to the access check in "
                                f"{NODE_CHECK_TIMEOUT_S:.0f} s")
        finally:
            (worker.out_dir / token_file).unlink(missing_ok=True)
        if problems:
            raise InferenceUsageError("; ".join(problems) + " (every Ray node must see the engine, the inputs and "
                                      "the output folder at the same paths as this machine)")

    def run(self, worker: RecordingWorker, jobs: Sequence[RecordingJob], listener: Any) -> Iterator[RecordingEntry]:
        ray = self._ray
        from ray.exceptions import RayError

        # Ray retries nothing itself: each attempt is counted here, and the last loss reported with its cause.
        remote = ray.remote(num_cpus=self.cpus_per_task, max_retries=0)(_run_job)
        stop_file = worker.out_dir.absolute() / f".stop.{secrets.token_hex(4)}.tmp"
        # Absolute paths: a task's working directory is not this one.
        worker_ref = ray.put(RecordingWorker(os.path.abspath(worker.engine), worker.out_dir.absolute(),
                                             worker.settings, stop_file=stop_file))
        waiting = deque((dataclasses.replace(job, path=os.path.abspath(job.path)), 1) for job in jobs)
        running: dict[Any, tuple[RecordingJob, int]] = {}
        limit, looked = 1, -math.inf
        try:
            while waiting or running:
                if time.monotonic() - looked > CLUSTER_LOOK_S:
                    limit = in_flight_limit(ray.cluster_resources().get("CPU", 0.0), self.cpus_per_task)
                    looked = time.monotonic()
                while waiting and len(running) < limit:
                    job, attempt = waiting.popleft()
                    # The task's name is its worker's process title (ray::brr-infer <name>) and its name in Ray's tools.
                    ref = remote.options(name=f"brr-infer {job.name}").remote(worker_ref, job)
                    running[ref] = (job, attempt)
                ready, _ = ray.wait(list(running), num_returns=1, timeout=RAY_WAIT_S)
                if not ready:
                    continue
                job, attempt = running.pop(ready[0])
                try:
                    entry = ray.get(ready[0])
                except RayError as error:
                    cause = loss_cause(error)
                    if cause is None:
                        raise
                    if attempt < RAY_MAX_ATTEMPTS:
                        log.warning("%s: %s while it ran (attempt %d of %d); running it again", job.name,
                                    cause.value, attempt, RAY_MAX_ATTEMPTS)
                        waiting.appendleft((job, attempt + 1))
                        continue
                    entry = RecordingEntry(job.path, job.name, "failed", error=f"{cause.value} on each of its "
                                           f"{attempt} attempts (last: {error})", error_type=type(error).__name__,
                                           reference=job.reference)
                entry.attempts = attempt
                listener.recording_finished(entry)
                yield entry
        finally:
            if running:  # stopped: Ctrl-C, SIGTERM, or an error
                _stop_tasks(ray, list(running), stop_file)


def _stop_tasks(ray: Any, refs: list[Any], stop_file: Path) -> None:
    """Have the tasks ``refs`` abandon their recordings (their workers watch ``stop_file``) and wait for them a
    while. Not ``ray.cancel``: a cancel that meets a task being dispatched or completing can abort the driver
    (a failed check in Ray's task manager, met with Ray 2.60), which would then write no summary."""
    try:
        stop_file.write_text("stop\n", encoding="utf-8")
    except OSError as error:
        log.warning("cannot ask the running recordings to stop (%s); they end with this run's Ray job", error)
        return
    _, left = ray.wait(refs, num_returns=len(refs), timeout=RAY_STOP_GRACE_S)
    if not left:  # else kept, for the late ones to see; the next run in the folder removes it
        stop_file.unlink(missing_ok=True)


def _node_name(node: dict[str, Any]) -> str:
    return f"{node['NodeManagerAddress']} (id {node['NodeID']})"


def _init_ray(ray: Any, address: str | None) -> None:
    """``ray.init``, keeping this process's SIGTERM handler: Ray replaces it (with an exit, or the shutdown
    of the local instance it starts), and brr-infer's turns SIGTERM into an interruption that stops the
    tasks and writes the summary (then ``close`` stops the local instance)."""
    sigterm = signal.getsignal(signal.SIGTERM)
    try:
        ray.init(address=address, include_dashboard=False, logging_level="warning")
    except (ConnectionError, RuntimeError, ValueError) as error:
        where = f"join the Ray cluster at {address}" if address else "start a local Ray instance"
        raise InferenceUsageError(f"cannot {where}: {error}") from error
    finally:
        if sigterm is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, sigterm)


def make_executor(settings: Any) -> LocalExecutor | RayExecutor:
    if settings.executor == "ray":
        import_ray()  # fail before any recording runs
        return RayExecutor(settings.ray_address, settings.threads or 1)
    return LocalExecutor()
