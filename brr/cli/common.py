"""What every ``brr-*`` command shares: the ``--debug`` flag, logging, and one map from errors to exit codes.

:func:`run_main` configures logging (:func:`configure_logging`: brr's messages to stderr as
``brr-<tool>: message`` lines), parses the arguments, checks that the command's output folders can
be written (before any work), runs it and turns what it raises into an exit status with one line
``brr-<tool>: message`` on stderr:

- :class:`~brr.errors.BrrError`: its kind's code (2 usage, unusable input, missing dependency;
  1 a check failed).
- ``OSError`` (a path that cannot be read or written) and ``ImportError`` (a missing package): 2.
- Ctrl-C: 130.
- Anything else is a defect of ``brr``, reported as such: 1.

A Python traceback is printed only with ``--debug``.
"""

from __future__ import annotations

import argparse
import logging
import sys
import traceback
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from polygraphy.logger import G_LOGGER
from rich.console import Console
from rich.highlighter import NullHighlighter
from rich.logging import RichHandler

from brr.errors import EXIT_FAILED, EXIT_UNUSABLE, BrrError
from brr.output_folder import check_output_folder
from brr.resources import return_freed_memory

__all__ = ["EXIT_INTERRUPTED", "command_parser", "configure_logging", "error_line", "run_main"]

EXIT_INTERRUPTED = 130


class MessageHandler(RichHandler):
    """Each record printed as its formatted message alone, never wrapped: no time or level columns, no
    markup read into paths. A rich console, so that messages print above a live progress display."""

    def __init__(self, tool: str):
        super().__init__(console=Console(stderr=True, soft_wrap=True), show_time=False, show_level=False,
                         show_path=False, markup=False, highlighter=NullHighlighter())
        self.setFormatter(logging.Formatter(f"{tool}: %(message)s"))

    def render(self, *, record, traceback, message_renderable):
        return message_renderable


def configure_logging(tool: str, level: int = logging.INFO) -> None:
    """brr's log records from ``level`` up to stderr as ``<tool>: message`` lines (replacing what an earlier
    call set up), and Polygraphy's own logger kept to errors unless ``level`` is DEBUG."""
    logger = logging.getLogger("brr")
    for handler in [h for h in logger.handlers if isinstance(h, MessageHandler)]:
        logger.removeHandler(handler)
    logger.addHandler(MessageHandler(tool))
    logger.setLevel(level)
    G_LOGGER.module_severity = G_LOGGER.INFO if level <= logging.DEBUG else G_LOGGER.ERROR


def command_parser(tool: str, description: str | None, **options: Any) -> argparse.ArgumentParser:
    """The parser of the command ``tool``, with the ``--debug`` flag every command takes; ``options`` go to
    ``argparse.ArgumentParser``."""
    parser = argparse.ArgumentParser(prog=tool, description=description, **options)
    parser.add_argument("--debug", action="store_true", help="print the Python traceback of an error")
    return parser


def error_line(error: BaseException) -> tuple[str, int]:
    """The message and exit code for ``error`` (see the module docstring)."""
    if isinstance(error, BrrError):
        return str(error), error.exit_code
    if isinstance(error, OSError):
        where = f"{error.filename}: " if error.filename is not None else ""
        return f"{where}{error.strerror or error}", EXIT_UNUSABLE
    if isinstance(error, ImportError):
        return f"missing dependency: {error}", EXIT_UNUSABLE
    detail = str(error) or "(no message)"
    return (f"internal error ({type(error).__name__}: {detail}); this is a defect of brr, please report it "
            "with the output of --debug"), EXIT_FAILED


def run_main(
    tool: str,
    parser: argparse.ArgumentParser,
    command: Callable[[argparse.Namespace], int],
    argv: Sequence[str] | None = None,
    outputs: Callable[[argparse.Namespace], Iterable[tuple[str, Any]]] = lambda args: (),
    log_level: int = logging.INFO,
) -> int:
    """Parse ``argv``, check the output folders ``outputs(args)`` gives (``(option, folder)`` pairs, None
    folders skipped; see :func:`~brr.output_folder.check_output_folder`), run ``command(args)`` and
    return its exit status, or the status of what it raised. Messages from ``log_level`` up are shown."""
    return_freed_memory()
    configure_logging(tool, log_level)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # argparse: 2 after printing a usage error, 0 after --help
        return _exit_status(exit_)
    try:
        for option, folder in outputs(args):
            if folder is not None:
                check_output_folder(folder, option)
        return command(args)
    except SystemExit as exit_:  # parser.error() called by the command
        return _exit_status(exit_)
    except KeyboardInterrupt:
        print(f"{tool}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as error:  # noqa: BLE001  (the one place every error becomes an exit status)
        if getattr(args, "debug", False):
            traceback.print_exc()
        message, code = error_line(error)
        print(f"{tool}: {message}", file=sys.stderr)
        return code


def _exit_status(exit_: SystemExit) -> int:
    if exit_.code is None:
        return 0
    return exit_.code if isinstance(exit_.code, int) else EXIT_UNUSABLE
