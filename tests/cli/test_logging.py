"""Every command's messages go through ``logging``, set up once by ``run_main``: stderr lines that read
``brr-<tool>: message`` as written, never wrapped, never read as markup, each once however often a
command runs in one process; Polygraphy's own logger kept to errors."""

from __future__ import annotations

import argparse
import logging

from polygraphy.logger import G_LOGGER

from brr.cli.common import run_main

LONG_PATH = "/data/" + "/".join(f"[session-{i}]" for i in range(30)) + "/rec.edf"


def _command(args: argparse.Namespace) -> int:
    logging.getLogger("brr.export.run").info(f"reading {LONG_PATH}")
    logging.getLogger("brr.export.run").debug("not shown at the default level")
    return 0


def test_messages_are_lines_of_the_tool_once_per_run(capsys):
    parser = argparse.ArgumentParser()
    for _ in range(2):
        assert run_main("brr-test", parser, _command, []) == 0
        captured = capsys.readouterr()
        assert captured.out == ""
        assert captured.err.splitlines() == [f"brr-test: reading {LONG_PATH}"]
    assert G_LOGGER.module_severity.get() == G_LOGGER.ERROR


def test_the_level_is_the_callers(capsys):
    assert run_main("brr-test", argparse.ArgumentParser(), _command, [], log_level=logging.DEBUG) == 0
    assert capsys.readouterr().err.splitlines()[-1] == "brr-test: not shown at the default level"
    assert run_main("brr-test", argparse.ArgumentParser(), _command, [], log_level=logging.WARNING) == 0
    assert capsys.readouterr().err == ""
