"""Ctrl-C (SIGINT) and SIGTERM: stop cleanly, keep what is saved, exit 128 + the signal's number.

``Interrupted`` derives from ``BaseException`` so that the trainer's ``except Exception`` (which records a
job as failed) never catches it: an interrupted job is resumable, not failed. The first signal raises it;
later ones are ignored while the shutdown runs, so a second or third Ctrl-C cannot cut the cleanup short
(that is what used to end in tracebacks).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(BaseException):
    """A stop signal arrived. ``message`` is filled in by whoever knows what was saved."""

    def __init__(self, signum: int, message: str = "") -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.message = message

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name

    @property
    def exit_code(self) -> int:
        """130 for SIGINT, 143 for SIGTERM: the shell's convention."""
        return 128 + self.signum


_held: list[int] = []
"""Nesting depth of ``deferred`` sections in this process's main thread (one entry per level)."""
_pending: list[int] = []
"""The signal that arrived inside a ``deferred`` section, raised when the outermost one ends."""


def interrupt(signum: int) -> None:
    """What every bioscale stop-signal handler calls: raise ``Interrupted`` now, or, inside ``deferred``, at
    the end of the section (a signal handler runs between any two bytecodes, e.g. half-way through
    ``torch.save``, whose own cleanup would then replace ``Interrupted`` with an unrelated error)."""
    if _held:
        if not _pending:
            _pending.append(signum)
        return
    raise Interrupted(signum)


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """A section a stop signal must not cut in two (writing a checkpoint or a store file): an interrupt that
    arrives inside it is raised when it ends (not at all if it raises anything else first)."""
    if threading.current_thread() is not threading.main_thread():  # handlers only ever run in the main thread
        yield
        return
    _held.append(1)
    try:
        yield
    finally:
        _held.pop()
    if not _held and _pending:
        raise Interrupted(_pending.pop())


class _Once:
    def __init__(self) -> None:
        self.fired: int | None = None

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        if self.fired is not None:
            return  # already stopping: let the cleanup finish
        self.fired = signum
        interrupt(signum)


def install() -> _Once:
    """Make SIGINT and SIGTERM raise ``Interrupted`` once in this process (its main thread)."""
    handler = _Once()
    for sig in SIGNALS:
        signal.signal(sig, handler)
    return handler


@contextlib.contextmanager
def raising() -> Iterator[None]:
    """While active, SIGINT/SIGTERM raise ``Interrupted`` (once); the previous handlers come back after.
    Outside the main thread (where Python cannot install handlers) it does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.getsignal(sig) for sig in SIGNALS}
    install()
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
