"""Output locations that cannot work, and the error contract every command shares.

Unwritable outputs: for each of the seven commands and each kind of bad location (an existing file,
a path under a file, a pseudo file system, a read-only folder), the expected outcome is exit status
2, one line ``brr-<tool>: <option> <path>: ...`` and no traceback, before any work (the command's
work function is never called) and with nothing created. The contract: ``--debug`` adds the
traceback, an unexpected exception is reported as a defect of brr (status 1), Ctrl-C is 130, and
user text (paths with ``[/]``) is printed as it is.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from faultkit import RUNS_AS_ROOT, good_edf, run_cli

from brr.cli import calibrate, diff, export, infer, pipeline, synth, train
from brr.runtime import RecordingWorker


def _proc(tmp_path):
    return f"/proc/brr-fault-{os.getpid()}/out"


def _a_file(tmp_path):
    path = tmp_path / "a-file"
    path.write_text("not a folder")
    return path


def _under_a_file(tmp_path):
    return _a_file(tmp_path) / "out"


def _read_only(tmp_path):
    if RUNS_AS_ROOT:
        pytest.skip("root writes into a read-only folder; the pseudo-file-system case stands in for it")
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    return folder / "out"


BAD_LOCATIONS = {"existing_file": _a_file, "under_a_file": _under_a_file, "proc": _proc, "read_only": _read_only}
WORDS = {"existing_file": "not a folder", "under_a_file": "not a folder", "proc": "cannot write there",
         "read_only": "Permission denied"}


@pytest.fixture(scope="module")
def edf(tmp_path_factory):
    return good_edf(tmp_path_factory.mktemp("fault-outputs") / "rec.edf")


def commands(checkpoint, edf, out):
    """tool -> (its main, argv writing to ``out``, the option naming it, where its work starts)."""
    return {
        "brr-infer": (infer.main, [checkpoint, edf, "--out", out, "--quiet"], "--out",
                      (RecordingWorker, "open")),
        "brr-export": (export.main, [checkpoint, "--out", out, "--no-verify"], "--out", (export, "export_artifacts")),
        "brr-synth": (synth.main, [out, "--minutes", "1"], "out_dir", (synth, "write_corpus")),
        "brr-train": (train.main, ["--model", "v3-small", "--data", edf.parent, "--out", out], "--out",
                      (train, "train")),
        "brr-calibrate": (calibrate.main, [checkpoint, "--data", edf, "--out", out], "--out",
                          (calibrate, "calibrate")),
        "brr-diff": (diff.main, [checkpoint, "torch:bf16", "--synthetic", "1", "--out", out], "--out",
                     (diff, "run_diff")),
        "brr-pipeline": (pipeline.main, [out], "workdir", (pipeline, "run_pipeline")),
    }


TOOLS = ["brr-infer", "brr-export", "brr-synth", "brr-train", "brr-calibrate", "brr-diff", "brr-pipeline"]


@pytest.mark.parametrize("location", list(BAD_LOCATIONS))
@pytest.mark.parametrize("tool", TOOLS)
def test_unwritable_output_is_refused_before_any_work(fault_checkpoint, edf, tmp_path, monkeypatch, tool, location):
    out = BAD_LOCATIONS[location](tmp_path)
    main, argv, option, (owner, work) = commands(fault_checkpoint, edf, out)[tool]
    started = []
    monkeypatch.setattr(owner, work, lambda *args, **kwargs: started.append(work))
    before = sorted(p.name for p in tmp_path.rglob("*"))
    run = run_cli(main, argv)
    assert run.code == 2, run.stderr
    run.assert_one_line_error(tool, f"{option} {out}", WORDS[location])
    assert started == [], f"{tool} started its work before refusing the output"
    assert sorted(p.name for p in tmp_path.rglob("*")) == before


def test_a_real_console_script_refuses_an_unwritable_output(tmp_path):
    """The installed entry point, in its own process: exit status 2 and one line on stderr."""
    result = subprocess.run([sys.executable, "-m", "brr.cli.synth", str(_a_file(tmp_path)), "--minutes", "1"],
                            capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and result.stderr.startswith("brr-synth: out_dir ")
    assert "not a folder" in result.stderr


def test_debug_adds_the_traceback_and_nothing_else_changes(fault_checkpoint, tmp_path):
    argv = [tmp_path / "no-engine", tmp_path, "--out", tmp_path / "out", "--quiet"]
    plain = run_cli(infer.main, argv)
    debug = run_cli(infer.main, [*argv, "--debug"])
    assert plain.code == debug.code == 2
    plain.assert_one_line_error("brr-infer", "does not exist")
    assert "Traceback" in debug.stderr and plain.stderr.strip() in debug.stderr


def test_an_unexpected_exception_is_reported_as_a_defect(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise KeyError("lost")

    monkeypatch.setattr(synth, "write_corpus", broken)
    run = run_cli(synth.main, [tmp_path / "corpus"])
    assert run.code == 1
    line = run.stderr.strip()
    assert line.startswith("brr-synth: internal error (KeyError") and "--debug" in line and "Traceback" not in line
    assert "Traceback" in run_cli(synth.main, [tmp_path / "corpus", "--debug"]).stderr


def test_ctrl_c_is_130(tmp_path, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(synth, "write_corpus", interrupted)
    run = run_cli(synth.main, [tmp_path / "corpus"])
    assert run.code == 130 and run.stderr.strip() == "brr-synth: interrupted"


def test_paths_are_printed_as_they_are_not_as_markup(fault_checkpoint, tmp_path, monkeypatch):
    """A path holding ``[/]`` and ``[bold]`` is shown literally in the summary, after all the work."""
    monkeypatch.setenv("COLUMNS", "400")  # one table row per recording
    folder = tmp_path / "ward["
    folder.mkdir()
    odd = folder / "]night [bold].edf"
    odd.write_bytes(b"")
    run = run_cli(infer.main, [fault_checkpoint, odd, "--out", tmp_path / "out", "--quiet"])
    assert run.code == 1 and "Traceback" not in run.stderr
    assert "]night [bold]" in run.stderr and "ward[/]night [bold].edf: empty file" in run.stderr


def test_synth_onto_an_existing_file_exits_2(tmp_path):
    target = _a_file(tmp_path)
    run = run_cli(synth.main, [target])
    assert run.code == 2
    run.assert_one_line_error("brr-synth", str(target), "not a folder")
    assert target.read_text() == "not a folder"


@pytest.mark.parametrize("argv, words", [
    (["--minutes", "nan"], "minutes must be a positive number"),
    (["--minutes", "0.001"], "duration_s must be a whole number"),
    (["--rate", "50"], "rate must be a whole number"),
    (["--minutes", "1", "--seizures", "9"], "do not fit"),
])
def test_synth_argument_mistakes_exit_2(tmp_path, argv, words):
    run = run_cli(synth.main, [tmp_path / "corpus", *argv])
    assert run.code == 2
    run.assert_one_line_error("brr-synth", words)
