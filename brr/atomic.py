"""Atomic file writes: readers never see a half-written output file.

A write goes to a hidden temporary ``.<name>.<8 hex>.tmp`` beside its target, then is renamed over
it. The temporary is created with mode 0666 less the umask, like any file the user's tools create
(``mkstemp``'s 0600 would hide the outputs from the other users of a shared folder). A process
killed mid-write leaves its temporary behind; :func:`is_temporary` recognises it, so that the next
run in that folder (under its lock, see :mod:`brr.output_folder`) can remove it.
"""

from __future__ import annotations

import os
import re
import secrets
from pathlib import Path

__all__ = ["atomic_write_bytes", "atomic_write_text", "is_temporary"]

# Also matches the names of tempfile.mkstemp (8 characters of [a-z0-9_]), which earlier versions used.
_TEMPORARY_NAME = re.compile(r"\..+\.[a-z0-9_]{8}\.tmp")


def is_temporary(name: str) -> bool:
    """Whether ``name`` is the name of an atomic write's temporary file."""
    return _TEMPORARY_NAME.fullmatch(name) is not None


def _create_temporary(path: Path) -> tuple[int, Path]:
    while True:
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            # 0o666: the kernel applies the umask, as for any ordinary file.
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), tmp
        except FileExistsError:
            continue


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically and return the path.

    The bytes go to a temporary file in the same directory (so ``os.replace``
    is a same-filesystem rename), are fsynced, then renamed over ``path``.
    On any exception the temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _create_temporary(path)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        # Also on KeyboardInterrupt: never leave a stray temp file behind.
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(path.parent)
    return path


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path:
    """Atomic text write; newlines are written exactly as given (no translation)."""
    return atomic_write_bytes(path, text.encode(encoding))


def _fsync_dir(directory: Path) -> None:
    # Persist the rename itself; not supported on every platform/filesystem.
    try:
        dfd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dfd)
    except OSError:
        pass
    finally:
        os.close(dfd)
