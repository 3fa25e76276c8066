"""Ctrl-C and `docker stop` for roadie's long-running commands (serve, health --serve)."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


@contextmanager
def stop_on_signals() -> Iterator[None]:
    """SIGINT and SIGTERM raise KeyboardInterrupt in the main thread while inside, so the command stops cleanly.
    Our own handler, because Python raises KeyboardInterrupt on SIGINT only when the signal was not ignored at
    start, and a process started in the background by a script inherits SIGINT ignored. Main thread only."""
    previous = {sig: signal.signal(sig, _interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
