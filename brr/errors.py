"""The package's error contract: one root type, four kinds, one exit code per kind.

Every error ``brr`` raises on purpose is a :class:`BrrError`; its kind says what the person running
the tool must do, and ``brr.cli.common.run_main`` turns it into the exit status:

- :class:`UsageError` (2): the command or the call is wrong (an option, a setting, an output folder
  that cannot be written).
- :class:`InputError` (2): an input is unusable or refused (a recording, a checkpoint, an artifact,
  a config or plan file); nothing from it was used.
- :class:`DependencyUnavailable` (2): an optional package or a device is missing; the message says
  what to install.
- :class:`CheckFailed` (1): the tool ran and found a failure (a divergence, no acceptable plan, a
  recording that failed, an engine that returned nonsense).

Each module's own error classes (``CheckpointError``, ``RecordingError``, ...) subclass one kind, and
keep a builtin base (``ValueError``, ``RuntimeError``, ``ImportError``) where callers catch that.
"""

from __future__ import annotations

__all__ = [
    "EXIT_FAILED",
    "EXIT_OK",
    "EXIT_UNUSABLE",
    "BrrError",
    "CheckFailed",
    "DependencyUnavailable",
    "InputError",
    "UsageError",
]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_UNUSABLE = 2


class BrrError(Exception):
    """Root of every error ``brr`` raises on purpose; ``exit_code`` is what a ``brr-*`` command returns."""

    exit_code = EXIT_UNUSABLE


class UsageError(BrrError, ValueError):
    """A wrong option, setting or output location: nothing was run."""


class InputError(BrrError, ValueError):
    """An unusable or refused input (recording, checkpoint, artifact, config, plan); the message names it."""


class DependencyUnavailable(BrrError, ImportError):
    """An optional package or device is missing; the message says what to install."""


class CheckFailed(BrrError, RuntimeError):
    """The tool ran and found a failure: a divergence, no acceptable plan, a failed recording."""

    exit_code = EXIT_FAILED
