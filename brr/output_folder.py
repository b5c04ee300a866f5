"""Output folders: checked writable before any work, locked while a run writes, cleaned of what a killed run left.

- :func:`check_output_folder` proves, before anything runs and without creating anything, that
  files can be created where the folder is or would be, so that an output location that cannot
  work (a file, a read-only or pseudo file system, no permission) is a one-line
  :class:`~brr.errors.UsageError`; :func:`prepare_output_folder` also creates the folder.
- :class:`OutputLock` is an exclusive ``flock`` on ``<folder>/.brr.lock``: a second run on the same
  folder is refused with the first one's pid instead of redoing (and overwriting) the same work. The
  kernel drops the lock when its process dies, however it dies, so a killed run never blocks the next.
- :func:`remove_stale_temporaries` deletes the hidden temporaries of atomic writes (see
  :mod:`brr.atomic`) that a killed run left; call it only while holding the lock.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import Self

from brr.atomic import is_temporary
from brr.errors import UsageError

__all__ = ["LOCK_FILE", "OutputFolderBusy", "OutputLock", "check_output_folder", "prepare_output_folder",
           "remove_stale_temporaries"]

LOCK_FILE = ".brr.lock"
_WRITE_CHECK = ".brr-write-check"


class OutputFolderBusy(UsageError):
    """Another run holds the lock on the output folder."""


def check_output_folder(path: str | os.PathLike, option: str = "--out") -> Path:
    """Check, without creating anything, that ``path`` is or can become a folder files can be written in.

    The folder (or, when it does not exist yet, its nearest existing ancestor, where it would be
    created) must be a folder in which a file can be created: a probe file is created and removed.
    ``option`` names the setting in the message (``--out``, ``workdir``, ...). Returns ``path``.
    """
    path = Path(path)
    existing = path
    while not existing.exists() and existing != existing.parent:
        if existing.is_symlink():  # a dangling link: nothing can be created through it
            raise UsageError(f"{option} {path}: {existing} is a broken symbolic link")
        existing = existing.parent
    if not existing.is_dir():
        where = "exists" if existing == path else f"is inside {existing}, which"
        raise UsageError(f"{option} {path}: {where} is not a folder")
    probe = existing / f"{_WRITE_CHECK}.{os.getpid()}"
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        probe.unlink()
    except OSError as error:
        where = "" if existing == path else f" (in {existing})"
        raise UsageError(f"{option} {path}: cannot write there{where}: {error.strerror or error}") from error
    return path


def prepare_output_folder(path: str | os.PathLike, option: str = "--out") -> Path:
    """:func:`check_output_folder`, then create the folder; returns it."""
    path = check_output_folder(path, option)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UsageError(f"{option} {path}: cannot create the folder: {error.strerror or error}") from error
    return path


class OutputLock:
    """Exclusive lock on an output folder for the life of a ``with`` block (refuses, never waits)."""

    def __init__(self, folder: str | os.PathLike, tool: str = "brr") -> None:
        self.folder = Path(folder)
        self.tool = tool
        self._fd: int | None = None

    def __enter__(self) -> Self:
        self.acquire()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()

    def acquire(self) -> None:
        """Take the lock or raise :class:`OutputFolderBusy` naming the process that holds it."""
        path = self.folder / LOCK_FILE
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise OutputFolderBusy(
                f"{self.folder}: another run is writing to this folder ({holder}); wait for it to finish "
                "or choose another output folder"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{self.tool}, pid {os.getpid()}".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the lock
            self._fd = None


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Delete the atomic-write temporaries under ``folder`` (a dead run's); returns what was removed."""
    removed = []
    for directory, _, names in os.walk(folder):
        for name in names:
            if is_temporary(name):
                path = Path(directory, name)
                path.unlink(missing_ok=True)
                removed.append(path)
    return removed
