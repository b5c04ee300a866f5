"""brr-infer on BIDS datasets, as SzCORE lays them out and scores them.

A BIDS recording ``sub-01/ses-01/eeg/sub-01_ses-01_task-szMonitoring_run-00_eeg.edf`` gets
``sub-01/ses-01/eeg/sub-01_ses-01_task-szMonitoring_run-00_events.tsv`` in the output folder: the path
of its reference relative to the dataset, which is where SzCORE's scorer looks for the hypothesis.
References match by BIDS entities wherever they are; the TSV's dateTime is the EDF header's start.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import pathlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from brr.cli.infer import main as infer_main
from brr.data.annotations import (
    SeizureEvent,
    read_csv_bi,
    read_events_json,
    read_events_tsv,
    write_events_tsv,
)
from brr.data.synthetic import plan_recording, write_recording
from brr.events.scoring import aggregate_scores, score_events
from brr.output_folder import LOCK_FILE
from brr.runtime import (
    DONE_SUFFIX,
    InferenceSettings,
    InferenceUsageError,
    RecordingWorker,
    find_recordings,
    run_inference,
)
from brr.runtime.discovery import bids_entities, output_name

SECONDS = 60  # one model window per recording at stride 60
TASK = "task-szMonitoring"
# Output name (the recording's relative path less "_eeg") -> its EDF header start fields (dd.mm.yy,
# hh.mm.ss; None: the synthetic writer's own), and the dateTime its events TSV must carry.
RECORDINGS = {
    f"sub-01/ses-01/eeg/sub-01_ses-01_{TASK}_run-00": (None, "2000-01-01 00:00:00"),
    f"sub-01/ses-01/eeg/sub-01_ses-01_{TASK}_run-01": ((b"31.02.21", b"08.30.15"), "n/a"),  # no such day
    f"sub-02/ses-01/eeg/sub-02_ses-01_{TASK}_run-00": ((b"17.06.21", b"08.30.15"), "2021-06-17 08:30:15"),
}
FORMATS = (".csv_bi", "_events.tsv", "_events.json", DONE_SUFFIX)


def _set_header_start(path: Path, date: bytes, time: bytes) -> None:
    data = bytearray(path.read_bytes())
    data[168:184] = date + time  # the EDF header's startdate and starttime fields
    path.write_bytes(bytes(data))


def _bids_recording(root: Path, name: str, index: int, seconds: int, start=None) -> list[SeizureEvent]:
    """``root/<name>_eeg.edf`` (synthetic, one seizure) and its reference ``root/<name>_events.tsv``, BIDS
    only: the csv_bi the synthetic writer leaves beside the EDF is removed. Returns the seizures."""
    plan = plan_recording(seed=21, index=index, duration_s=seconds, seizures=1)
    edf = write_recording(plan, root / f"{name}_eeg.edf")
    edf.with_suffix(".csv_bi").unlink()
    if start is not None:
        _set_header_start(edf, *start)
    events = [s.to_event() for s in plan.seizures]
    write_events_tsv(root / f"{name}_events.tsv", events, seconds, Path(name).name)
    return events


@pytest.fixture(scope="module")
def bids_dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("bids") / "dataset"
    for index, (name, (start, _)) in enumerate(RECORDINGS.items()):
        _bids_recording(root, name, index, SECONDS, start)
    (root / "dataset_description.json").write_text('{"Name": "synthetic", "BIDSVersion": "1.9.0"}\n')
    return root


@pytest.fixture(scope="module")
def bids_run(bids_dataset, checkpoint, tmp_path_factory):
    """brr-infer over the dataset with a real (randomly initialised) engine, scored against it."""
    out = tmp_path_factory.mktemp("bids-out")
    args = [str(checkpoint), str(bids_dataset), "--out", str(out), "--stride", str(SECONDS),
            "--reference", str(bids_dataset), "--quiet"]
    code = infer_main(args)
    return args, code, out, json.loads((out / "summary.json").read_text())


def _outputs(out: Path) -> set[str]:
    return {p.relative_to(out).as_posix() for p in out.rglob("*")
            if p.is_file() and p.name not in ("summary.json", LOCK_FILE)}


def _warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and r.name.startswith("brr")]


def _tsv_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh, delimiter="\t"))


# ----------------------------------------------------------------------------- names


def test_bids_names_lose_the_eeg_suffix_and_others_are_kept():
    assert output_name(f"sub-01/ses-01/eeg/sub-01_ses-01_{TASK}_run-00_eeg") == (
        f"sub-01/ses-01/eeg/sub-01_ses-01_{TASK}_run-00")
    assert output_name("sub-01_eeg") == "sub-01"
    for kept in ("rec_a", "eeg", "sub-01_eeg_x", "x/rec_eeg", "sub-01_run-1_run-2_eeg", "ses-01_run-00_eeg",
                 "sub-01_ses-01_EEG", "sub-01_ses_01_eeg", "sub-01_ses-01_ieeg"):
        assert output_name(kept) == kept, kept
    assert bids_entities(f"sub-01_{TASK}_ses-01_run-00_events", "events") == bids_entities(
        f"sub-01_ses-01_{TASK}_run-00_eeg")


# ----------------------------------------------------------------------------- a run over a BIDS dataset


def test_outputs_mirror_the_bids_tree_with_entity_names(bids_run, bids_dataset):
    _, code, out, summary = bids_run
    assert code == 0
    assert _outputs(out) == {f"{name}{suffix}" for name in RECORDINGS for suffix in FORMATS}
    assert [r["name"] for r in summary["recordings"]] == sorted(RECORDINGS)
    # SzCORE's scorer reads, for every reference TSV, the hypothesis at the same relative path.
    for reference in bids_dataset.glob("sub-*/**/*.tsv"):
        assert (out / reference.relative_to(bids_dataset)).is_file(), reference
    for name in RECORDINGS:
        bname = Path(name).name
        assert f"# bname = {bname}" in (out / f"{name}.csv_bi").read_text().splitlines()
        assert json.loads((out / f"{name}_events.json").read_text())["recording"] == bname
        assert read_events_tsv(out / f"{name}_events.tsv") == read_csv_bi(out / f"{name}.csv_bi")


def test_bids_references_are_matched_and_scored(bids_run, bids_dataset):
    _, _, out, summary = bids_run
    expected = []
    for entry in summary["recordings"]:
        reference = bids_dataset / f"{entry['name']}_events.tsv"
        assert entry["reference"] == str(reference)
        scores = score_events(read_events_tsv(reference), read_events_json(out / f"{entry['name']}_events.json"),
                              SECONDS)
        assert entry["scores"] == scores
        expected.append(scores)
    assert summary["scores"] is not None and summary["scores"]["n_files"] == len(RECORDINGS)
    assert summary["scores"] == aggregate_scores(expected)
    assert summary["scores"]["event"]["ref_true"] == len(RECORDINGS)  # one seizure each


def test_tsv_date_time_is_the_edf_header_start(bids_run):
    _, _, out, _ = bids_run
    for name, (_, date_time) in RECORDINGS.items():
        rows = _tsv_rows(out / f"{name}_events.tsv")
        assert rows and {row["dateTime"] for row in rows} == {date_time}, name


def test_rerun_resumes_the_bids_outputs(bids_run, tmp_path):
    args, _, out, _ = bids_run
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    before = {p: (copy / p).stat().st_mtime_ns for p in _outputs(copy)}
    rerun = [*args[: args.index("--out") + 1], str(copy), *args[args.index("--out") + 2:]]
    assert infer_main(rerun) == 0
    summary = json.loads((copy / "summary.json").read_text())
    assert [r["status"] for r in summary["recordings"]] == ["skipped"] * len(RECORDINGS)
    assert {p: (copy / p).stat().st_mtime_ns for p in _outputs(copy)} == before
    # Skipped recordings are scored from their done-markers, as on the first run.
    assert summary["scores"] == bids_run[3]["scores"]


def test_a_reference_folder_matching_nothing_is_said(bids_run, tmp_path, caplog):
    args, _, out, _ = bids_run
    copy, empty = tmp_path / "out", tmp_path / "no-annotations"
    shutil.copytree(out, copy)
    empty.mkdir()
    rerun = [*args[: args.index("--out")], "--out", str(copy), "--stride", str(SECONDS),
             "--reference", str(empty), "--quiet"]
    with caplog.at_level(logging.WARNING, logger="brr"):
        assert infer_main(rerun) == 0
    (warning,) = _warnings(caplog)
    assert "no recording has a reference annotation" in warning
    assert str(empty) in warning and "nothing will be scored" in warning
    assert json.loads((copy / "summary.json").read_text())["scores"] is None


# ----------------------------------------------------------------------------- reference matching


def _touch(path: Path, text: str = "") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_references_match_by_bids_entities_anywhere_under_the_folder(tmp_path, caplog, monkeypatch):
    inputs, refs = tmp_path / "inputs", tmp_path / "refs"
    for name in (f"sub-01_ses-01_{TASK}_run-00_eeg", f"sub-03_ses-01_{TASK}_run-00_eeg", "rec_a",
                 "sub-04_task-rest_eeg"):
        _touch(inputs / f"{name}.edf")
    # Entities in another order, in the BIDS layout: the same recording.
    shuffled = _touch(refs / "sub-01/ses-01/eeg" / f"sub-01_run-00_{TASK}_ses-01_events.tsv")
    _touch(refs / "sub-01/ses-01/eeg" / f"sub-01_ses-01_{TASK}_run-00_channels.tsv")  # not events
    _touch(refs / "sub-01/ses-01/eeg" / f"sub-01_ses-01_{TASK}_run-01_events.tsv")  # another run
    _touch(refs / "sub-03/ses-01/eeg" / f"sub-03_ses-01_{TASK}_events.tsv")  # fewer entities: not it
    _touch(refs / "rec_a.csv_bi")  # non-BIDS: by name, as before
    legacy = _touch(refs / "sub-04_task-rest_eeg.csv_bi")  # brr-synth's csv_bi beside a BIDS-named EDF

    listed = []
    real_rglob = pathlib.Path.rglob
    monkeypatch.setattr(pathlib.Path, "rglob", lambda self, pattern: listed.append(self) or real_rglob(self, pattern))
    with caplog.at_level(logging.WARNING, logger="brr"):
        jobs = find_recordings([inputs], reference_dir=refs)
    assert listed.count(refs) == 1  # the reference folder is listed once, not once per recording

    assert {job.name: job.reference for job in jobs} == {
        f"sub-01_ses-01_{TASK}_run-00": str(shuffled),
        f"sub-03_ses-01_{TASK}_run-00": None,
        "rec_a": str(refs / "rec_a.csv_bi"),
        "sub-04_task-rest": str(legacy),
    }
    (warning,) = _warnings(caplog)
    assert "1 of 4 recordings have no reference annotation" in warning
    assert f"sub-03_ses-01_{TASK}_run-00" in warning and str(refs) in warning


def test_a_bids_reference_in_the_recordings_own_folder_wins(tmp_path, caplog):
    dataset, refs = tmp_path / "dataset", tmp_path / "refs"
    name = f"sub-01/ses-01/eeg/sub-01_ses-01_{TASK}_run-00"
    _touch(dataset / f"{name}_eeg.edf")
    _touch(refs / "derivatives/old" / f"{Path(name).name}_events.tsv")
    own = _touch(refs / f"{name}_events.tsv")
    (job,) = find_recordings([dataset], reference_dir=refs)
    assert (job.name, job.reference) == (name, str(own))
    # Without it, the one elsewhere is taken; two elsewhere: the first, with a warning naming both.
    own.unlink()
    _touch(refs / "derivatives/new" / f"{Path(name).name}_events.tsv")
    with caplog.at_level(logging.WARNING, logger="brr"):
        (job,) = find_recordings([dataset], reference_dir=refs)
    assert job.reference == str(refs / "derivatives/new" / f"{Path(name).name}_events.tsv")
    (warning,) = _warnings(caplog)
    assert "2 reference annotations" in warning and "derivatives/old" in warning


def test_a_bids_name_and_its_eeg_less_twin_clash(tmp_path):
    _touch(tmp_path / "sub-01_task-rest_eeg.edf")
    _touch(tmp_path / "sub-01_task-rest.bdf")
    with pytest.raises(InferenceUsageError, match="same output name"):
        find_recordings([tmp_path])


# ----------------------------------------------------------------------------- SzCORE's own scorer


# Integer-second events: SzCORE rasterises annotations at 1 Hz (flooring), brr at 256 Hz.
SZCORE_SECONDS = 300
SZCORE_CASES = {  # output name -> (reference events, hypothesis events)
    f"sub-01/ses-01/eeg/sub-01_ses-01_{TASK}_run-00": ([(40, 70)], [(45, 75), (200, 215)]),
    f"sub-01/ses-01/eeg/sub-01_ses-01_{TASK}_run-01": ([(100, 130), (220, 250)], [(105, 120)]),
    f"sub-02/ses-01/eeg/sub-02_ses-01_{TASK}_run-00": ([], [(150, 160)]),
}


# szcore-evaluation needs Python >= 3.12: where brr's own Python cannot import it, the test runs it in the
# interpreter this variable names (.ci/run makes one when a Python 3.12+ exists).
SZCORE_PYTHON_ENV = "BRR_SZCORE_PYTHON"
SZCORE_SCRIPT = ("import sys; from pathlib import Path; from szcore_evaluation.evaluate import evaluate_dataset; "
                 "evaluate_dataset(*map(Path, sys.argv[1:]), avg_per_subject=False)")


def _szcore():
    """``evaluate(reference_dir, hypothesis_dir, out_json) -> results``, from szcore-evaluation in this
    process or in the interpreter ``BRR_SZCORE_PYTHON`` names; skips when neither has it."""
    try:
        from szcore_evaluation.evaluate import evaluate_dataset
    except (ImportError, AttributeError) as error:  # AttributeError: its head wants a newer timescoring
        unavailable = f"{type(error).__name__}: {error}"
    else:
        return lambda reference, hypothesis, out: evaluate_dataset(reference, hypothesis, out, avg_per_subject=False)
    python = os.environ.get(SZCORE_PYTHON_ENV)
    if not python:
        pytest.skip(f"szcore-evaluation cannot be used from Python {sys.version_info[0]}.{sys.version_info[1]} "
                    f"({unavailable}); it needs Python >= 3.12: set {SZCORE_PYTHON_ENV} to a Python that has it")

    def evaluate(reference, hypothesis, out):
        run = subprocess.run([python, "-c", SZCORE_SCRIPT, str(reference), str(hypothesis), str(out)],
                             capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, f"szcore-evaluation in {python} failed: {run.stderr}"
        return json.loads(Path(out).read_text())
    return evaluate


def test_szcore_scores_brr_outputs_as_brr_does(checkpoint, tmp_path, monkeypatch):
    evaluate = _szcore()
    dataset, out = tmp_path / "dataset", tmp_path / "out"
    hypotheses = {}
    for index, (name, (reference, hypothesis)) in enumerate(SZCORE_CASES.items()):
        _bids_recording(dataset, name, index, SZCORE_SECONDS)
        write_events_tsv(dataset / f"{name}_events.tsv", [SeizureEvent(a, b) for a, b in reference],
                         SZCORE_SECONDS, Path(name).name)
        hypotheses[f"{Path(name).name}_eeg.edf"] = [SeizureEvent(a, b) for a, b in hypothesis]
    # The engine's events are set here, so that both scorers see whole seconds.
    monkeypatch.setattr(RecordingWorker, "_detect",
                        lambda self, stream, listener: (hypotheses[Path(stream.path).name], None))
    summary = run_inference(checkpoint, [dataset], out,
                            InferenceSettings(stride_s=SECONDS, reference_dir=str(dataset)))
    assert [e.status for e in summary.entries] == ["ok"] * len(SZCORE_CASES)
    ours = summary.scores
    theirs = evaluate(dataset, out, tmp_path / "szcore.json")

    def same(a, b):
        return (a is None and math.isnan(b)) if a is None or math.isnan(b) else a == pytest.approx(b)

    assert ours["event"]["tp"] == 2 and ours["event"]["fp"] == 2 and ours["event"]["ref_true"] == 3
    for view in ("event", "sample"):
        for ours_key, theirs_key in (("sensitivity", "sensitivity"), ("precision", "precision"), ("f1", "f1"),
                                     ("fp_per_24h", "fpRate")):
            assert same(ours[view][ours_key], theirs[f"{view}_results"][theirs_key]), (view, ours_key)
