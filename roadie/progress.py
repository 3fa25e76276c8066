"""Progress of long steps, fanned out to whoever listens (the CLI prints it; flows make artifacts)."""

from __future__ import annotations

import threading
from collections.abc import Callable

from prefect.context import FlowRunContext, TaskRunContext

Listener = Callable[[str, str, float], None]  # (version_id, step, percent)
_listeners: list[Listener] = []
_lock = threading.Lock()


def add_listener(listener: Listener) -> None:
    with _lock:
        _listeners.append(listener)


def remove_listener(listener: Listener) -> None:
    with _lock:
        if listener in _listeners:
            _listeners.remove(listener)


def report(version_id: str, step: str, percent: float) -> None:
    with _lock:
        listeners = list(_listeners)
    for listener in listeners:
        listener(version_id, step, percent)


def in_prefect_run() -> bool:
    """Artifacts belong to a flow or task run; a plain call (CLI, tests) makes none."""
    return FlowRunContext.get() is not None or TaskRunContext.get() is not None
