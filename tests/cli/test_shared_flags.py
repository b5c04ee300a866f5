"""Every console script speaks the same vocabulary: the shared flags, defaults shown in --help, and the old
spellings that still work for one release, each saying so."""

from __future__ import annotations

import importlib
import logging
import re
import tomllib
from pathlib import Path

import pytest

from brr import __version__

SCRIPTS = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())["project"]["scripts"]
WRITES_A_FOLDER = {"brr-export", "brr-diff", "brr-calibrate", "brr-infer", "brr-train"}


def _main(script: str):
    module, function = SCRIPTS[script].split(":")
    return getattr(importlib.import_module(module), function)


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_help_shows_the_shared_flags_and_defaults(script, capsys):
    assert _main(script)(["--help"]) == 0
    text = capsys.readouterr().out
    for flag in ("--version", "-v, --verbose", "-q, --quiet", "--debug"):
        assert flag in text, f"{script} --help lacks {flag}"
    if script in WRITES_A_FOLDER:
        assert re.search(r"-o \S+, --out \S+", text), f"{script} has no -o/--out"
    assert "(default: None)" not in text and "(default: False)" not in text
    assert _main(script)(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"{script} (brr) {__version__}"


def test_defaults_are_shown_where_they_mean_something(capsys):
    _main("brr-export")(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: fp32)" in text and "(default: 1:4:8)" in text
    _main("brr-diff")(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    # Both depend on --check (a saved report re-judged): the help says so beside the default.
    assert "(default diff-report; with --check" in text and "(default nonfinite; with --check" in text


@pytest.mark.parametrize("script, old, new", [
    ("brr-diff", ["--report", "R"], {"out": "R"}),
    ("brr-diff", ["--inputs", "a.edf", "b.edf"], {"data": [Path("a.edf"), Path("b.edf")]}),
    ("brr-export", ["--batch", "1:2:4"], {"batch": (1, 2, 4)}),
    ("brr-export", ["--calibration-data", "d"], {"calibration_data": Path("d")}),
    ("brr-train", ["--no-progress"], {"quiet": True}),
])
def test_old_spellings_still_work_and_say_they_are_deprecated(script, old, new, caplog):
    module = importlib.import_module(SCRIPTS[script].split(":")[0])
    positional = {"brr-diff": ["ckpt", "torch:bf16"], "brr-export": ["ckpt", "--out", "o"], "brr-train": []}[script]
    with caplog.at_level(logging.WARNING, logger="brr"):
        args = module.build_parser().parse_args([*positional, *old])
    for dest, value in new.items():
        assert getattr(args, dest) == value
    assert f"{old[0]} is deprecated" in caplog.text


def test_quiet_leaves_warnings_and_verbose_adds_debug(tmp_path, capsys):
    main = _main("brr-diff")
    assert main(["-q", str(tmp_path / "missing"), "torch:bf16"]) == 2  # the error line is still printed
    assert "brr-diff:" in capsys.readouterr().err
    assert logging.getLogger("brr").level == logging.WARNING
    main(["-v", str(tmp_path / "missing"), "torch:bf16"])
    assert logging.getLogger("brr").level == logging.DEBUG


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_only_the_pytorch_loops_keep_freed_tensors_in_the_heap(script, monkeypatch):
    """A 1 MB mmap threshold gives every larger tensor fresh, page-faulting pages: v3's per-window stages ran
    about 2x slower in brr-infer under it. Inference and training leave glibc's dynamic threshold; the tools
    that run one engine after another keep memory given back after each."""
    from brr.cli import common
    from brr.resources import LEAN_MMAP_THRESHOLD

    fixed: list[int | None] = []
    monkeypatch.setattr(common, "fix_mmap_threshold", fixed.append)
    assert _main(script)(["--help"]) == 0
    pytorch_loop = script in {"brr-infer", "brr-train"}
    assert fixed == [None if pytorch_loop else LEAN_MMAP_THRESHOLD]
