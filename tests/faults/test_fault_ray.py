"""brr-infer on a real Ray cluster losing what clusters lose: a worker process, a node, the driver.

A cluster of ``ray start`` nodes of one CPU each runs on this machine (:mod:`raycluster`); recordings
are one or three minutes long, the engine a v3-small checkpoint. A worker is killed with SIGKILL while it has its
recording open (found by its process title ``ray::brr-infer <name>``, which Ray sets from the task's
name), a node by killing its raylet and everything under it. Expected, each time: the lost recording
runs again (up to ``RAY_MAX_ATTEMPTS`` attempts) or fails alone with its cause, every recording that
finished has exactly the outputs the local executor writes, ``summary.json`` says what happened, the
exit code is 1 only for a failed recording, and a rerun on the folder does only what is left.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Self

import psutil
import pytest
from faultkit import good_edf, run_cli

pytest.importorskip("ray", reason="ray is not installed (pip install '.[ray]')")

from raycluster import LocalRayCluster, can_hide_folders

from brr.atomic import is_temporary
from brr.cli.infer import main as infer_main
from brr.data.synthetic import plan_recording, write_recording
from brr.output_folder import LOCK_FILE
from brr.runtime import DONE_SUFFIX
from brr.runtime.executors import (
    RAY_MAX_ATTEMPTS,
    LossCause,
    in_flight_limit,
    loss_cause,
)

NAMES = ("rec_a", "rec_b", "rec_c", "rec_d", "rec_e", "rec_f")
OUTPUTS = (".csv_bi", "_events.tsv", "_events.json", DONE_SUFFIX)
COMPARED = (".csv_bi", "_events.tsv", "_events.json")  # the done-marker holds the fingerprint, not events alone


@pytest.fixture(scope="module")
def recordings(fault_checkpoint, tmp_path_factory):
    """Six recordings of one and three windows in turn (two started together do not finish together; a long one
    is stopped between its windows), and what the local executor writes for them."""
    root = tmp_path_factory.mktemp("ray-faults")
    for index, name in enumerate(NAMES):
        write_recording(plan_recording(seed=60 + index, index=0, duration_s=60 * (1 + 2 * (index % 2))),
                        root / "in" / f"{name}.edf")
    local = run_cli(infer_main, [fault_checkpoint, root / "in", "--out", root / "local", "--stride", "60", "--quiet"])
    assert local.code == 0, local.stderr
    return root / "in", root / "local"


@pytest.fixture(scope="module")
def cluster(request, tmp_path_factory):
    """A head and a second node, one CPU each; the second sees an empty folder (its ``hidden``) where this
    machine has files, when a mount namespace can be had. Stopped (every process of it killed) after the module.

    This process joins it as a Ray driver for the module, so that the runs made here (``run_cli``) share one
    Ray job and its warm workers, as a program that calls :func:`brr.runtime.run_inference` in its own Ray
    session would; the runs that must start as ``brr-infer`` does run in a process of their own.
    """
    import ray

    cluster = LocalRayCluster()
    hidden = tmp_path_factory.mktemp("hidden") if can_hide_folders() else None
    try:
        with ThreadPoolExecutor(1) as pool:
            starting = pool.submit(lambda: (cluster.start_head(), cluster.add_node(hidden=hidden)))
            request.getfixturevalue("recordings")  # made meanwhile: the nodes take seconds to come up
            starting.result()
        with pytest.MonkeyPatch.context() as env:
            for key, value in cluster.env.items():
                env.setenv(key, value)
            ray.init(address=cluster.address, logging_level="warning")
            try:
                yield cluster
            finally:
                ray.shutdown()
    finally:
        cluster.stop()


def _argv(checkpoint, inputs, out, cluster) -> list[str]:
    inputs = inputs if isinstance(inputs, list) else [inputs]
    return [str(checkpoint), *map(str, inputs), "--out", str(out), "--stride", "60", "--executor", "ray",
            "--ray-address", cluster.address, "--quiet"]


def _recording_workers(inputs: Path) -> list[tuple[psutil.Process, str]]:
    """The Ray workers that have one of the recordings in ``inputs`` open now, with its name."""
    found = []
    for process in psutil.process_iter(["cmdline"]):
        title = " ".join(process.info["cmdline"] or []).strip()
        if not title.startswith("ray::brr-infer rec_"):
            continue
        name = title.removeprefix("ray::brr-infer ")
        try:
            if str(inputs / f"{name}.edf") in {f.path for f in process.open_files()}:
                found.append((process, name))
        except psutil.Error:  # it ended meanwhile
            pass
    return found


class Saboteur(threading.Thread):
    """Polls for workers running a recording and hands each one found to ``strike(process, name)``, which
    says whether it struck (killed it or its node)."""

    def __init__(self, inputs: Path, strike) -> None:
        super().__init__(daemon=True)
        self.inputs = inputs
        self.strike = strike
        self.stopped = threading.Event()
        self.struck: list[str] = []

    def run(self) -> None:
        seen = set()  # (process, recording): a worker process runs several recordings one after another
        while not self.stopped.is_set():
            for process, name in _recording_workers(self.inputs):
                if (process.pid, name) in seen:
                    continue
                seen.add((process.pid, name))
                if self.strike(process, name):
                    self.struck.append(name)
            time.sleep(0.05)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.stopped.set()
        self.join(timeout=10)


def _assert_as_local(out: Path, local: Path, names) -> None:
    for name in names:
        for suffix in COMPARED:
            assert (out / f"{name}{suffix}").read_bytes() == (local / f"{name}{suffix}").read_bytes(), name + suffix


def _files(out: Path) -> set[str]:
    return {p.name for p in out.iterdir()} - {LOCK_FILE, "summary.json"}


def test_ray_loss_causes_and_in_flight_bound():
    """Ray's own exception types name the cause; a recording's own exception is no loss."""
    from ray import exceptions

    assert loss_cause(exceptions.WorkerCrashedError()) is LossCause.WORKER_LOST
    assert loss_cause(exceptions.NodeDiedError("node gone")) is LossCause.NODE_LOST
    assert loss_cause(exceptions.ObjectLostError("ab" * 28, None, "")) is LossCause.NODE_LOST
    assert loss_cause(exceptions.OutOfMemoryError("memory monitor")) is LossCause.OUT_OF_MEMORY
    assert loss_cause(exceptions.RayTaskError("f", "Traceback", ValueError("bad"))) is None
    assert loss_cause(exceptions.TaskCancelledError()) is None
    # Two recordings per CPU the cluster runs at once, at least one, whatever the archive's size.
    assert [in_flight_limit(cpus, 1) for cpus in (0, 1, 2, 64)] == [1, 2, 4, 128]
    assert in_flight_limit(16, 4) == 8 and in_flight_limit(3, 2) == 2


def test_lost_workers_are_retried_and_one_lost_every_time_fails_alone(fault_checkpoint, recordings, cluster,
                                                                      tmp_path):
    """rec_a's worker is killed once: it runs again and finishes. rec_b's is killed on every attempt: it fails
    alone (worker lost), the others finish, exit 1. The rerun does rec_b only."""
    inputs, local = recordings
    names = ("rec_a", "rec_b", "rec_c")
    kills = {"rec_a": 1, "rec_b": RAY_MAX_ATTEMPTS}

    def kill(process, name):
        if kills.get(name, 0) > 0:
            kills[name] -= 1
            process.kill()
            return True
        return False

    out = tmp_path / "out"
    argv = _argv(fault_checkpoint, [inputs / f"{n}.edf" for n in names], out, cluster)
    with Saboteur(inputs, kill) as saboteur:
        run = run_cli(infer_main, argv)
    assert sorted(saboteur.struck) == ["rec_a"] + ["rec_b"] * RAY_MAX_ATTEMPTS
    assert run.code == 1, run.stderr
    assert "internal error" not in run.stderr and "Traceback" not in run.stderr
    assert f"rec_a: worker lost while it ran (attempt 1 of {RAY_MAX_ATTEMPTS}); running it again" in run.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["interrupted"] is False
    assert [(r["name"], r["status"], r["attempts"]) for r in summary["recordings"]] == [
        ("rec_a", "ok", 2), ("rec_b", "failed", RAY_MAX_ATTEMPTS), ("rec_c", "ok", 1)]
    lost = summary["recordings"][1]
    assert lost["error_type"] == "WorkerCrashedError"
    assert lost["error"].startswith(f"worker lost on each of its {RAY_MAX_ATTEMPTS} attempts (last: ")
    assert summary["totals"] == {**summary["totals"], "recordings": 3, "ok": 2, "failed": 1, "skipped": 0}
    assert _files(out) == {f"{n}{s}" for n in ("rec_a", "rec_c") for s in OUTPUTS}
    _assert_as_local(out, local, ("rec_a", "rec_c"))

    rerun = run_cli(infer_main, argv)
    assert rerun.code == 0, rerun.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert [(r["name"], r["status"]) for r in summary["recordings"]] == [
        ("rec_a", "skipped"), ("rec_b", "ok"), ("rec_c", "skipped")]
    _assert_as_local(out, local, names)


def test_lost_node_its_recording_runs_on_another(fault_checkpoint, recordings, cluster, tmp_path):
    """A third node joins; once it runs a recording, it vanishes (raylet and workers SIGKILLed). That recording
    runs again on a node left and every recording finishes as locally."""
    inputs, local = recordings
    names = ("rec_d", "rec_e", "rec_f")
    node = cluster.add_node()

    def lose_node(process, name):
        try:
            on_node = node.raylet.pid in {parent.pid for parent in process.parents()}
        except psutil.Error:
            return False
        if on_node:
            cluster.kill_node(node)
        return on_node

    out = tmp_path / "out"
    try:
        with Saboteur(inputs, lose_node) as saboteur:
            run = run_cli(infer_main, _argv(fault_checkpoint, [inputs / f"{n}.edf" for n in names], out, cluster))
    finally:
        cluster.kill_node(node)
    (lost,) = saboteur.struck
    assert run.code == 0, run.stderr
    assert f"{lost}: node lost while it ran (attempt 1 of {RAY_MAX_ATTEMPTS}); running it again" in run.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert {(r["name"], r["status"], r["attempts"]) for r in summary["recordings"]} == {
        (n, "ok", 2 if n == lost else 1) for n in names}
    _assert_as_local(out, local, names)


def _stop_once_one_finished_and_one_runs(inputs: Path, out: Path, stop, ended) -> None:
    """Calls ``stop()`` once a recording not finished before has finished and another runs. ``ended()`` says
    why the driver ended, if it did."""
    def finished() -> set[str]:
        return {p.name for p in out.glob(f"*{DONE_SUFFIX}")} if out.is_dir() else set()

    before = finished()
    deadline = time.monotonic() + 240
    while not (finished() - before and _recording_workers(inputs)):
        why = ended()
        assert why is None, f"the driver ended before the stop ({why}); finished before: {sorted(before)}"
        assert time.monotonic() < deadline, "no recording finished while another ran"
        time.sleep(0.05)
    stop()


def _assert_stopped_cleanly(inputs: Path, out: Path, local: Path, finished_before: set[str]) -> set[str]:
    """No worker goes on with the stopped run's recordings; the folder holds complete sets of outputs, as
    the local executor writes them, of more recordings than before; returns the finished recordings."""
    deadline = time.monotonic() + 30
    while _recording_workers(inputs):
        assert time.monotonic() < deadline, "the stopped run's tasks still run"
        time.sleep(0.1)
    finished = {p.name.removesuffix(DONE_SUFFIX) for p in out.glob(f"*{DONE_SUFFIX}")}
    assert len(finished) > len(finished_before) and finished != set(NAMES)
    assert {name for name in _files(out) if not is_temporary(name)} == {f"{n}{s}" for n in finished for s in OUTPUTS}
    _assert_as_local(out, local, finished)
    return finished


def _stop_driver_process(argv, cluster, inputs: Path, out: Path, signum: int, stderr_path: Path) -> int:
    """Run ``brr-infer argv`` in a process of its own, send it ``signum`` once a recording finished and another
    runs; returns its exit status."""
    with open(stderr_path, "wb") as stderr:
        driver = subprocess.Popen([sys.executable, "-m", "brr.cli.infer", *argv], env=cluster.env,
                                  stdout=subprocess.DEVNULL, stderr=stderr)
    try:
        _stop_once_one_finished_and_one_runs(
            inputs, out, lambda: driver.send_signal(signum),
            lambda: None if driver.poll() is None else f"exit {driver.returncode}: {stderr_path.read_text()[-3000:]}")
        return driver.wait(timeout=60)
    finally:
        driver.kill()


def _assert_interrupted(code: int, stderr: str, out: Path, finished_before: set[str], finished: set[str]) -> None:
    """Exit 130 after a clean stop: no temporary left, summary.json marked interrupted, listing what finished."""
    assert code == 130, stderr
    assert "interrupted: finished recordings are complete, the rest were not written" in stderr
    assert not [name for name in _files(out) if is_temporary(name)]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["interrupted"] is True
    assert {r["name"] for r in summary["recordings"]} >= finished_before
    assert {(r["name"], r["status"]) for r in summary["recordings"]} <= {
        (n, "skipped" if n in finished_before else "ok") for n in finished}


def test_driver_stopped_three_ways_then_rerun_resumes(fault_checkpoint, recordings, cluster, tmp_path):
    """One batch, stopped by SIGTERM, then (resumed) by SIGINT, then (resumed) by SIGKILL, each time once a
    recording finished and another runs, then resumed to the end. SIGTERM and SIGINT: exit 130, the running
    tasks abandon their recordings (nothing of them written), summary.json lists what finished. SIGKILL: Ray ends the
    dead driver's tasks. Each rerun skips every finished recording and does the rest."""
    inputs, local = recordings
    out = tmp_path / "out"
    argv = _argv(fault_checkpoint, inputs, out, cluster)

    code = _stop_driver_process(argv, cluster, inputs, out, signal.SIGTERM, tmp_path / "sigterm.txt")
    finished = _assert_stopped_cleanly(inputs, out, local, set())
    _assert_interrupted(code, (tmp_path / "sigterm.txt").read_text(), out, set(), finished)

    # SIGINT to this process, the driver of this run.
    stopper = threading.Thread(target=_stop_once_one_finished_and_one_runs, daemon=True,
                               args=(inputs, out, lambda: os.kill(os.getpid(), signal.SIGINT), lambda: None))
    stopper.start()
    run = run_cli(infer_main, argv)
    stopper.join()
    before, finished = finished, _assert_stopped_cleanly(inputs, out, local, finished)
    _assert_interrupted(run.code, run.stderr, out, before, finished)

    code = _stop_driver_process(argv, cluster, inputs, out, signal.SIGKILL, tmp_path / "sigkill.txt")
    assert code == -signal.SIGKILL
    before, finished = finished, _assert_stopped_cleanly(inputs, out, local, finished)

    rerun = run_cli(infer_main, argv)
    assert rerun.code == 0, rerun.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["interrupted"] is False
    assert [(r["name"], r["status"]) for r in summary["recordings"]] == [
        (n, "skipped" if n in finished else "ok") for n in NAMES]
    assert _files(out) == {f"{n}{s}" for n in NAMES for s in OUTPUTS}
    _assert_as_local(out, local, NAMES)


def test_a_node_that_cannot_see_the_paths_is_named_before_anything_runs(fault_checkpoint, cluster):
    """The second node sees an empty folder where this machine has the input and the output folder: exit 2
    before any recording runs, one line naming that node, the input it cannot read and the output folder it
    does not see."""
    second = cluster.nodes[1]
    if second.hidden is None:
        pytest.skip("needs unshare -m (a mount namespace of its own) to hide a folder from one node")
    edf = good_edf(second.hidden / "in" / "rec.edf")
    out = second.hidden / "out"
    run = run_cli(infer_main, _argv(fault_checkpoint, edf, out, cluster))
    assert run.code == 2
    line = run.assert_one_line_error(
        "brr-infer", f"(id {second.node_id}): cannot read {edf}: No such file or directory; the output "
        f"folder {out} does not exist there (every Ray node must see the engine, the inputs and the output folder "
        "at the same paths as this machine)")
    assert line.count("(id ") == 1  # the head sees everything
    assert _files(out) == set() and not (out / "summary.json").exists()
