"""OpenVINO's CPU plugin swaps the calling thread's alternate signal stack; compiling keeps the caller's.

Each compile of the CPU plugin (on Linux) maps a stack of its own, makes it the thread's alternate signal
stack (``sigaltstack``) and keeps the one it replaced; when the compiled model is released, it puts the
kept one back if its own is still current, then unmaps its own. Released in another order than compiled
(the front and rest of a split engine, an engine released while the next is compiled), a later release
puts back a stack an earlier one has unmapped. Python runs its signal handlers on the alternate stack
(``SA_ONSTACK``), so the next Ctrl-C or SIGTERM kills the process with SIGSEGV before the handler runs:
brr-infer then writes no summary of what it finished. Compiling under ``kept_signal_stack`` sets the
caller's stack back at once: the plugin's stack is never current, so its release only unmaps it.
"""

from __future__ import annotations

import contextlib
import ctypes
import sys
from collections.abc import Iterator

__all__ = ["current_signal_stack", "kept_signal_stack"]


class _SignalStack(ctypes.Structure):
    """``stack_t`` of <signal.h> (Linux)."""
    _fields_ = [("ss_sp", ctypes.c_void_p), ("ss_flags", ctypes.c_int), ("ss_size", ctypes.c_size_t)]


_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None


def current_signal_stack() -> tuple[int, int, int] | None:
    """The calling thread's alternate signal stack as (address, flags, size); None off Linux."""
    if _LIBC is None:
        return None
    stack = _SignalStack()
    if _LIBC.sigaltstack(None, ctypes.byref(stack)) != 0:
        raise OSError(ctypes.get_errno(), "sigaltstack failed")
    return stack.ss_sp or 0, stack.ss_flags, stack.ss_size


@contextlib.contextmanager
def kept_signal_stack() -> Iterator[None]:
    """Runs the block, then gives the calling thread back the alternate signal stack it had before."""
    if _LIBC is None:
        yield
        return
    before = _SignalStack()
    if _LIBC.sigaltstack(None, ctypes.byref(before)) != 0:
        raise OSError(ctypes.get_errno(), "sigaltstack failed")
    try:
        yield
    finally:
        # The flag that says the thread runs on it now is read-only; SS_DISABLE (no stack) is kept.
        before.ss_flags &= ~1  # SS_ONSTACK
        if _LIBC.sigaltstack(ctypes.byref(before), None) != 0:
            raise OSError(ctypes.get_errno(), "sigaltstack failed")
