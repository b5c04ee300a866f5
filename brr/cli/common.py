"""What every ``brr-*`` command shares: its flags, logging, and one map from errors to exit codes.

:func:`command_parser` gives every command ``--version``, ``-v/--verbose``, ``-q/--quiet`` (warnings
only, no progress display) and ``--debug``, and shows each option's default in ``--help``. One
vocabulary runs through the commands, Polygraphy's and trtexec's words where they have one:
``--precision``, ``--data`` (recordings), ``-o/--out``, ``--trt-batch-range``. An old spelling
(:func:`deprecated_alias`) keeps working for one release and says so on stderr. Options that several
commands take are defined once, as Polygraphy's argument groups are: :func:`add_window_options`
(``--data``/``--synthetic``/``--max-windows``/``--adversarial``) and :func:`add_tolerance_options`
(``--atol``/``--rtol``, their defaults shown from ``brr.tolerances``).

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
from pathlib import Path
from typing import Any

from polygraphy.logger import G_LOGGER
from rich.console import Console
from rich.highlighter import NullHighlighter
from rich.logging import RichHandler

from brr import __version__
from brr.errors import EXIT_FAILED, EXIT_UNUSABLE, BrrError
from brr.output_folder import check_output_folder
from brr.resources import LEAN_MMAP_THRESHOLD, fix_mmap_threshold
from brr.tolerances import describe_tolerances

__all__ = ["EXIT_INTERRUPTED", "add_tolerance_options", "add_window_options", "command_parser", "configure_logging",
           "deprecated_alias", "error_line", "run_main"]

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


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """The description as written, and each option's default after its help when it has a meaningful one."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        shown = action.default not in (None, argparse.SUPPRESS) and not isinstance(action.default, bool)
        if shown and "%(default)" not in text and (action.option_strings or action.nargs in ("?", "*")):
            text += " (default: %(default)s)"
        return text


def command_parser(tool: str, description: str | None, **options: Any) -> argparse.ArgumentParser:
    """The parser of the command ``tool``, with the flags every command takes (see the module docstring);
    ``options`` go to ``argparse.ArgumentParser``."""
    parser = argparse.ArgumentParser(prog=tool, description=description, formatter_class=HelpFormatter, **options)
    parser.add_argument("--version", action="version", version=f"{tool} (brr) {__version__}")
    verbosity = parser.add_mutually_exclusive_group()
    verbosity.add_argument("-v", "--verbose", action="store_true", help="debug messages too")
    verbosity.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only, no progress display")
    parser.add_argument("--debug", action="store_true", help="print the Python traceback of an error")
    return parser


def add_window_options(parser: argparse.ArgumentParser, *, required: bool, synthetic_help: str,
                       max_windows: int | None) -> argparse.Action:
    """The windows a command judges on: ``--data`` EDF/BDF files or folders, or ``--synthetic N`` seeded windows,
    at most ``--max-windows`` from the recordings, plus a synthetic seizure and the adversarial suite unless
    ``--no-adversarial``.

    The suite is on by default everywhere: export verifies every engine on it, so a diff or a calibration
    that left it out would accept what export then refuses. Returns the ``--data`` action (for aliases)."""
    source = parser.add_mutually_exclusive_group(required=required)
    data = source.add_argument("--data", type=Path, nargs="+", metavar="EDF_OR_DIR",
                               help="EDF/BDF recordings or folders of them, or windows saved as .npz")
    source.add_argument("--synthetic", type=int, metavar="N", help=synthetic_help)
    parser.add_argument("--max-windows", type=int, default=max_windows, help="windows taken from the recordings")
    parser.add_argument("--adversarial", action=argparse.BooleanOptionalAction, default=True,
                        help="also judge a synthetic seizure and flat, saturated, 1000 uV pop, all-zero and pure "
                             "60 Hz windows, as export's verification does")
    return data


def add_tolerance_options(parser: argparse.ArgumentParser) -> None:
    """``--atol``/``--rtol``: None follows the engine precision's tolerance, the one export verifies with."""
    parser.add_argument("--atol", type=float, default=None,
                        help=f"absolute tolerance (default: the precision's atol/rtol: {describe_tolerances()})")
    parser.add_argument("--rtol", type=float, default=None, help="relative tolerance (default: the precision's)")


class _DeprecatedAlias(argparse.Action):
    def __init__(self, option_strings, dest, replacement: str, **kwargs):
        super().__init__(option_strings, dest, **kwargs)
        self.replacement = replacement

    def __call__(self, parser, namespace, values, option_string=None):
        logging.getLogger("brr").warning(f"{option_string} is deprecated and goes in the next release: "
                                         f"use {self.replacement}")
        setattr(namespace, self.dest, True if self.nargs == 0 else values)


def deprecated_alias(container: argparse._ActionsContainer, old: str, current: argparse.Action) -> None:
    """Accept ``old`` (hidden from ``--help``) as a spelling of the option ``current``, with a warning."""
    container.add_argument(old, dest=current.dest, action=_DeprecatedAlias, replacement=current.option_strings[-1],
                           nargs=current.nargs, type=current.type, choices=current.choices,
                           metavar=current.metavar, help=argparse.SUPPRESS)


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
    mmap_threshold: int | None = LEAN_MMAP_THRESHOLD,
) -> int:
    """Parse ``argv``, check the output folders ``outputs(args)`` gives (``(option, folder)`` pairs, None
    folders skipped; see :func:`~brr.output_folder.check_output_folder`), run ``command(args)`` and
    return its exit status, or the status of what it raised. Messages from ``log_level`` up are shown;
    ``mmap_threshold``: see ``brr.resources``."""
    fix_mmap_threshold(mmap_threshold)
    configure_logging(tool, log_level)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # argparse: 2 after printing a usage error, 0 after --help
        return _exit_status(exit_)
    verbose, quiet = getattr(args, "verbose", False), getattr(args, "quiet", False)
    if verbose or quiet:
        configure_logging(tool, logging.DEBUG if verbose else logging.WARNING)
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
