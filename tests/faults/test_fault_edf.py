"""Broken recordings in one brr-infer batch: each is reported with its error and the batch goes on.

One batch holds every fault of ``faultkit.EDF_FAULTS`` plus a good recording named to run last, so
its success shows that no broken file stopped the run. Expected for every case: exit status 1, no
traceback, and in ``summary.json`` the recording's status, error type and words (naming the file),
no output file for a failed recording, and data-quality counts for a recording that ran. The same
faults given to the other readers (brr-diff --data, brr-calibrate --data, brr-train) end those
commands with exit status 2 and one line.
"""

from __future__ import annotations

import json
import os
import shutil
from types import SimpleNamespace

import numpy as np
import pytest
from faultkit import EDF_FAULTS, RUNS_AS_ROOT, from_bytes, good_edf, run_cli, with_signal_field

from brr.cli.diff import main as diff_main
from brr.cli.infer import main as infer_main
from brr.data import UnreadableRecordingError, read_recording

GOOD_LAST = "zz_good"


@pytest.fixture(scope="module")
def fault_batch(tmp_path_factory, fault_checkpoint):
    root = tmp_path_factory.mktemp("edf-faults")
    good = good_edf(root / "source" / "good.edf")
    inputs = root / "inputs"
    inputs.mkdir()
    files = {fault.name: fault.build(good, inputs / fault.name) for fault in EDF_FAULTS}
    shutil.copy(good, inputs / f"{GOOD_LAST}.edf")
    (inputs / "a_folder.edf").mkdir()  # a folder named like a recording: searched, not read
    out = root / "out"
    previous = os.umask(0o022)
    try:
        run = run_cli(infer_main, [fault_checkpoint, inputs, "--out", out, "--stride", "60", "--quiet"])
    finally:
        os.umask(previous)
    summary = json.loads((out / "summary.json").read_text())
    return SimpleNamespace(run=run, out=out, files=files, good=good, summary=summary,
                           entries={entry["name"]: entry for entry in summary["recordings"]})


def test_the_batch_ends_with_status_1_and_no_traceback(fault_batch):
    assert fault_batch.run.code == 1
    assert "Traceback" not in fault_batch.run.stderr and "internal error" not in fault_batch.run.stderr
    assert set(fault_batch.entries) == {f.name for f in EDF_FAULTS} | {GOOD_LAST}  # the folder is no entry
    expected_failures = sum(f.error_type is not None for f in EDF_FAULTS)
    assert fault_batch.summary["totals"] | {"failed": expected_failures} == fault_batch.summary["totals"]
    assert fault_batch.summary["interrupted"] is False


def test_the_good_recording_after_every_broken_one_ran(fault_batch):
    entry = fault_batch.entries[GOOD_LAST]
    assert entry["status"] == "ok" and entry["n_windows"] == 1, entry
    assert entry["data_quality"]["bad_channel_epochs"] == {"nonfinite": 0, "saturated": 0, "flat": 0}
    assert (fault_batch.out / f"{GOOD_LAST}_events.json").is_file()


@pytest.mark.parametrize("fault", EDF_FAULTS, ids=lambda f: f.name)
def test_each_fault_has_its_stated_outcome(fault_batch, fault):
    entry = fault_batch.entries[fault.name]
    outputs = sorted(p.name for p in fault_batch.out.glob(f"{fault.name}*"))
    if fault.error_type is None:
        assert entry["status"] == "ok", entry
        assert entry["data_quality"]["bad_channel_epochs"] == fault.quality
        events = json.loads((fault_batch.out / f"{fault.name}_events.json").read_text())
        assert events["data_quality"] == entry["data_quality"]
        assert len(outputs) == 4  # csv_bi, tsv, json, done-marker
        return
    assert entry["status"] == "failed", f"{fault.name} ran: a silent wrong answer ({entry})"
    assert entry["error_type"] == fault.error_type, entry
    assert f"{fault.name}.edf" in entry["error"], entry["error"]  # the message names the file
    for word in fault.words:
        assert word in entry["error"], (word, entry["error"])
    assert outputs == [], f"outputs written for broken {fault.name}: {outputs}"


def test_unusable_recording_reports_its_channel_counts(fault_batch):
    quality = fault_batch.entries["all_inf"]["data_quality"]
    assert quality["bad_channel_epochs"] == {"nonfinite": 19, "saturated": 0, "flat": 0}
    assert len(quality["unusable_channels"]) == 19 and quality["unusable_spans_s"] == [[0.0, 60.0]]
    # The four unusable ones and the two that ran with bad channels.
    assert fault_batch.summary["totals"]["recordings_with_bad_channels"] == 6


def test_outputs_follow_the_umask(fault_batch):
    modes = {p.name: p.stat().st_mode & 0o777 for p in fault_batch.out.iterdir() if p.is_file()}
    assert "summary.json" in modes and f"{GOOD_LAST}.csv_bi" in modes
    assert set(modes.values()) == {0o644}, modes


def test_a_huge_physical_range_reads_as_the_same_signal(fault_batch, tmp_path):
    """Physical max 1e308: absurd microvolts, but one scale factor, which normalisation removes."""
    huge = from_bytes(with_signal_field("physical_max", "1e308"))(fault_batch.good, tmp_path / "huge")
    np.testing.assert_allclose(read_recording(huge).signals, read_recording(fault_batch.good).signals, atol=1e-3)


def test_an_unreadable_file_is_unreadable_even_for_root(fault_batch, tmp_path):
    if not RUNS_AS_ROOT:
        pytest.skip("covered by the no_read_permission case of the batch")
    path = shutil.copy(fault_batch.good, tmp_path / "locked.edf")
    os.chmod(path, 0)
    read_recording(path)  # root reads it; the batch's io_error case stands in for an unreadable file
    link = tmp_path / "io.edf"
    link.symlink_to("/proc/self/mem")
    with pytest.raises(UnreadableRecordingError, match="Input/output error"):
        read_recording(link)


@pytest.mark.parametrize("name", ["trunc_mid_data", "all_inf", "record_duration_zero", "empty", "io_error"])
def test_diff_on_a_broken_recording_exits_2_with_one_line(fault_batch, fault_checkpoint, tmp_path, name):
    run = run_cli(diff_main, [fault_checkpoint, "torch:bf16", "--data", fault_batch.files[name],
                              "--out", tmp_path / "report"])
    assert run.code == 2
    run.assert_one_line_error("brr-diff", name)


def test_a_folder_named_like_a_recording_given_alone_is_searched(fault_checkpoint, tmp_path):
    folder = tmp_path / "empty.edf"
    folder.mkdir()
    run = run_cli(infer_main, [fault_checkpoint, folder, "--out", tmp_path / "out", "--quiet"])
    assert run.code == 2
    run.assert_one_line_error("brr-infer", "no .edf/.bdf recordings found")
