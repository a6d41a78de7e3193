"""Ctrl-C that cannot be swallowed.

Python turns SIGINT into :class:`KeyboardInterrupt` wherever the main thread happens to be — and
code rooftop does not own (a C extension that maps a pending signal to its own error, an
``except Exception`` around it, a Hydra launcher that records a failed job and goes on) may turn
it into something else or drop it. :func:`installed` replaces the handler for the duration of a
command: it records the interrupt *and* raises KeyboardInterrupt as Python's default handler
does. Whatever happens to that exception, :func:`interrupted` still says so, so the command ends
with exit 130 (``compiler.driver.app``), and :func:`check` stops a multirun at the next point
(``compiler.driver.sweep.run_point``).
"""
from __future__ import annotations

import contextlib
import signal
import threading

_STATE = {"interrupted": False}


def _handler(signum, frame):  # noqa: ARG001 - the signal module's signature
    _STATE["interrupted"] = True
    raise KeyboardInterrupt


@contextlib.contextmanager
def installed():
    """Record SIGINT for the duration of the block (main thread only; elsewhere a no-op)."""
    _STATE["interrupted"] = False
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    try:
        previous = signal.getsignal(signal.SIGINT)
    except (ValueError, OSError):  # pragma: no cover - no signal support
        yield
        return
    # a process started with SIGINT ignored (nohup, a background job of a non-interactive shell)
    # keeps ignoring it, as Python itself does
    if previous is signal.SIG_IGN:
        yield
        return
    signal.signal(signal.SIGINT, _handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def interrupted() -> bool:
    """Whether SIGINT arrived since :func:`installed` began (even if its exception was lost)."""
    return _STATE["interrupted"]


def check() -> None:
    """Raise KeyboardInterrupt if SIGINT arrived (a multirun stops before its next point)."""
    if _STATE["interrupted"]:
        raise KeyboardInterrupt


def note() -> None:
    """Record an interrupt seen as a KeyboardInterrupt raised elsewhere (e.g. Python's default handler)."""
    _STATE["interrupted"] = True


__all__ = ["installed", "interrupted", "check", "note"]
