"""CPU placement of the work inside one process: lanes (which CPUs a thread may use) and niceness (how much it
yields). The Prefect limits that bound the work across machines are in roadie.limits."""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Literal, TypeVar

from roadie.settings import get_settings

T = TypeVar("T")

Lane = Literal["playable", "background"]


def lane_cpus(lane: Lane) -> frozenset[int] | None:
    """The CPUs of a lane: "background" is the last CPU this process may use, "playable" the others. None when
    lanes are off (ROADIE_CPU_LANES=false), unsupported (not Linux) or pointless (a single CPU)."""
    if not get_settings().cpu_lanes or not hasattr(os, "sched_setaffinity"):
        return None
    allowed = sorted(os.sched_getaffinity(os.getpid()))  # the process's mask, not this (maybe pinned) thread's
    if len(allowed) < 2:
        return None
    return frozenset(allowed[-1:]) if lane == "background" else frozenset(allowed[:-1])


@contextmanager
def cpu_lane(lane: Lane) -> Iterator[bool]:
    """Run the calling thread, and every thread and process it starts meanwhile (they inherit its CPU mask), on
    the lane's CPUs; the thread's own mask comes back afterwards (task threads are reused). Yields whether it
    pinned anything."""
    cpus = lane_cpus(lane)
    if cpus is None:
        yield False
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cpus)
    try:
        yield True
    finally:
        os.sched_setaffinity(0, before)


def lower_thread_priority(by: int) -> None:
    """Raise the calling thread's nice by `by`; the threads and processes it starts later inherit it. Only on
    Linux, which keeps nice per thread: elsewhere this call would lower the whole process. Irreversible without
    privileges, so only for threads that end with their work (see run_niced)."""
    if sys.platform.startswith("linux"):
        os.setpriority(os.PRIO_PROCESS, 0, os.getpriority(os.PRIO_PROCESS, 0) + by)  # 0: this thread


def run_niced(nice: int, fn: Callable[..., T], *args: Any) -> T:
    """fn(*args) in a thread of its own at a lower CPU priority, which every thread and process it starts
    inherits (Linux keeps nice per thread). A fresh thread, because a raised nice cannot be lowered again
    without privileges, and task threads are reused."""
    if nice <= 0 or not sys.platform.startswith("linux"):
        return fn(*args)
    outcome: dict[str, Any] = {}

    def niced() -> None:
        try:
            lower_thread_priority(nice)
            outcome["value"] = fn(*args)
        except BaseException as exc:  # handed to the caller's thread
            outcome["error"] = exc

    worker = threading.Thread(target=niced, name=f"niced-{getattr(fn, '__name__', 'call')}")
    worker.start()
    worker.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]
