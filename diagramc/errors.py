"""User-facing errors: one line, what was wrong and what is expected.

Also the deadline on symbolic steps (sympy's derivatives, simplification, printing): the
command line sets one (:func:`set_symbolic_deadline`), and every step wrapped in
:func:`symbolic_step` that runs past it stops with a :class:`SymbolicDeadlineError`, which
the command line prints as its one-line error. Library calls have no deadline unless they
set one.
"""
from __future__ import annotations

import contextlib
import os
import signal
import threading


class DiagramcError(ValueError):
    """Bad input from a user. The command line prints it as one line, exit status 2."""


class SymbolicDeadlineError(DiagramcError):
    """A symbolic step ran past the deadline the command line set."""


# Seconds a symbolic step may take (None: no deadline); the command line's default, and the
# environment variable that changes it.
DEFAULT_SYMBOLIC_DEADLINE = 60.0
DEADLINE_ENV = "DIAGRAMC_SYMBOLIC_DEADLINE"

_state = {"seconds": None, "active": False}


def set_symbolic_deadline(seconds: "float | None") -> None:
    """Bound every later symbolic step to this many seconds of wall time (None: unbounded)."""
    _state["seconds"] = None if seconds is None or seconds <= 0 else float(seconds)


def symbolic_deadline_from_environment() -> "float | None":
    """The command line's deadline: DIAGRAMC_SYMBOLIC_DEADLINE seconds (0: none), else the default."""
    text = os.environ.get(DEADLINE_ENV, "").strip()
    if not text:
        return DEFAULT_SYMBOLIC_DEADLINE
    try:
        return float(text)
    except ValueError:
        raise DiagramcError(f"{DEADLINE_ENV}={text!r} is not a number of seconds") from None


@contextlib.contextmanager
def symbolic_step(what: str):
    """Run a symbolic step under the deadline, if one is set (on the main thread, by SIGALRM);
    steps inside steps share the outermost one's deadline."""
    seconds = _state["seconds"]
    usable = (seconds is not None and not _state["active"] and hasattr(signal, "setitimer")
              and threading.current_thread() is threading.main_thread())
    if not usable:
        yield
        return

    def expire(signum, frame):
        raise SymbolicDeadlineError(
            f"{what} took more than {seconds:g} s (the deadline on symbolic steps; set {DEADLINE_ENV} "
            "to change it): ask for a lower order or a shorter activation expression"
        )

    previous = signal.signal(signal.SIGALRM, expire)
    _state["active"] = True
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        _state["active"] = False
