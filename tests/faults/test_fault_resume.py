"""A brr-infer run killed with SIGKILL in the middle of writing an output, a second run on the same
folder meanwhile, and the rerun.

A real ``brr-infer`` process over two recordings is held inside the atomic write of the second
recording's first output (its hidden temporary exists, its rename has not happened) and killed
with SIGKILL there. Expected: while it lives, a second run on the same ``--out`` exits 2 naming the
lock holder; after the kill, the folder holds the first recording's complete outputs, the second's
orphaned temporary and nothing else of it; the rerun (resume, the default) exits 0, skips the first,
runs the second, removes the temporary, and leaves exactly two complete sets of outputs.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time

import pytest
from faultkit import good_edf, run_cli

from brr.atomic import is_temporary
from brr.cli.infer import main as infer_main
from brr.output_folder import LOCK_FILE

OUTPUT_SUFFIXES = (".csv_bi", "_events.tsv", "_events.json", ".done.json")
# brr-infer, except that the rename that completes the write of ``argv[1]`` never happens.
HELD_IN_A_WRITE = """
import os, sys, time
rename = os.replace

def held(source, target, *args, **kwargs):
    if os.path.basename(os.fspath(target)) == sys.argv[1]:
        print("holding", os.fspath(source), flush=True)
        time.sleep(600)
    return rename(source, target, *args, **kwargs)

os.replace = held
from brr.cli.infer import main
sys.exit(main(sys.argv[2:]))
"""


def _wait_for_line(process: subprocess.Popen, stderr_path, timeout_s: float) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        readable, _, _ = select.select([process.stdout], [], [], 0.5)
        if readable:
            return process.stdout.readline().decode().strip()
        if process.poll() is not None:
            raise AssertionError(f"brr-infer ended early ({process.returncode}): {stderr_path.read_text()}")
    raise AssertionError("brr-infer never reached the held write")


def _names(folder):
    return sorted(p.name for p in folder.iterdir() if p.name != LOCK_FILE)


def test_kill_during_a_write_then_resume(fault_checkpoint, tmp_path):
    inputs = tmp_path / "in"
    for index, name in enumerate(("rec_1", "rec_2")):
        good_edf(inputs / f"{name}.edf", seed=40 + index)
    out = tmp_path / "out"
    argv = [str(fault_checkpoint), str(inputs), "--out", str(out), "--stride", "60", "--quiet"]
    stderr_path = tmp_path / "stderr.txt"
    with open(stderr_path, "wb") as stderr:
        process = subprocess.Popen([sys.executable, "-c", HELD_IN_A_WRITE, "rec_2.csv_bi", *argv],
                                   stdout=subprocess.PIPE, stderr=stderr)
    try:
        held = _wait_for_line(process, stderr_path, timeout_s=420)
        temporary = held.split(" ", 1)[1]
        assert os.path.exists(temporary) and is_temporary(os.path.basename(temporary))

        # Meanwhile a second run on the same folder is refused, naming the first.
        second = run_cli(infer_main, argv)
        assert second.code == 2
        second.assert_one_line_error("brr-infer", "another run is writing to this folder", f"pid {process.pid}")
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=60)
        process.stdout.close()
    assert process.returncode == -signal.SIGKILL

    # What the killed run left: rec_1 complete, rec_2's orphaned temporary, no summary.
    left = _names(out)
    assert left == sorted([f"rec_1{s}" for s in OUTPUT_SUFFIXES] + [os.path.basename(temporary)])

    rerun = run_cli(infer_main, argv)
    assert rerun.code == 0, rerun.stderr
    assert _names(out) == sorted([f"{r}{s}" for r in ("rec_1", "rec_2") for s in OUTPUT_SUFFIXES]
                                 + ["summary.json"])
    assert not [p for p in out.rglob("*") if is_temporary(p.name)]
    summary = json.loads((out / "summary.json").read_text())
    assert [(r["name"], r["status"]) for r in summary["recordings"]] == [("rec_1", "skipped"), ("rec_2", "ok")]


@pytest.mark.parametrize("stale", [".rec.csv_bi.a1b2c3d4.tmp", ".summary.json.k_9xq2zz.tmp"])
def test_a_rerun_removes_what_a_killed_write_left(fault_checkpoint, tmp_path, monkeypatch, stale):
    """Temporaries of both naming schemes (this one, and tempfile.mkstemp's of earlier versions)."""
    from brr.runtime import worker

    out = tmp_path / "out"
    (out / "sub").mkdir(parents=True)
    (out / stale).write_text("half")
    (out / "sub" / stale).write_text("half")
    (out / "notes.tmp").write_text("the user's own file")  # not a temporary of ours: kept
    edf = good_edf(tmp_path / "in" / "rec.edf")
    monkeypatch.setattr(worker, "predict_probabilities", lambda *args, **kwargs: iter([]))
    run = run_cli(infer_main, [fault_checkpoint, edf, "--out", out, "--quiet"])
    assert "Traceback" not in run.stderr
    assert not (out / stale).exists() and not (out / "sub" / stale).exists()
    assert (out / "notes.tmp").read_text() == "the user's own file"
