"""Global concurrency and rate limits that protect the machines (names shared by flows and setup)."""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager as ContextManager
from contextlib import ExitStack, contextmanager
from typing import Any, Literal, TypeVar

T = TypeVar("T")

# The defaults (settings may change the sizes): at most 2 ffmpeg encodes at once across every worker: encodes
# are CPU-bound, one core each.
TRANSCODE_CONCURRENCY = ("transcode", 2, None)
# At most 10 transcode jobs (one per version) started a minute: a slot decays every 6 s.
TRANSCODE_RATE = ("transcode-rate", 10, 10 / 60)
# Database-heavy batch work (rollup days in a backfill) at most 2 at a time.
DB_BATCH_CONCURRENCY = ("db-batch", 2, None)

ALL_LIMITS = (TRANSCODE_CONCURRENCY, TRANSCODE_RATE, DB_BATCH_CONCURRENCY)


def configured_limits() -> tuple[tuple[str, int, float | None], ...]:
    """ALL_LIMITS with the sizes ROADIE_TRANSCODE_CONCURRENCY and ROADIE_TRANSCODE_RATE_PER_MINUTE give."""
    from roadie.settings import get_settings

    settings = get_settings()
    per_minute = settings.transcode_rate_per_minute
    return (
        (TRANSCODE_CONCURRENCY[0], settings.transcode_concurrency, None),
        (TRANSCODE_RATE[0], max(1, round(per_minute)), per_minute / 60),
        DB_BATCH_CONCURRENCY,
    )


def ensure_limits() -> None:
    """Create or update every limit on the current Prefect API. Idempotent.

    The CLI calls this before every flow run: one read of all limits, and a write only for a limit that is missing
    or different (what `upsert_global_concurrency_limit_by_name` would change), instead of a read per limit."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        existing = {current.name: current for current in client.read_global_concurrency_limits(limit=200)}
        for name, limit, decay in configured_limits():
            current = existing.get(name)
            if (
                current is None
                or current.limit != limit
                or (decay is not None and current.slot_decay_per_second != decay)
            ):
                client.upsert_global_concurrency_limit_by_name(name, limit, slot_decay_per_second=decay)


# One slot request at a time from this process. On a Prefect server that keeps its state in SQLite (the laptop
# `roadie ingest`), two increments at once (the primary's rate slot and the secondary's encode slot) collide:
# SQLite answers SQLITE_BUSY_SNAPSHOT, the server 503, and Prefect's client sleeps ~2 s before retrying. The
# requests take milliseconds, so queueing them here costs nothing and saves those seconds.
_SLOT_REQUESTS = threading.Lock()


def transcode_started() -> None:
    """Take one slot of the per-minute transcode rate (blocks while the rate is exhausted)."""
    from prefect.concurrency.sync import rate_limit

    with _SLOT_REQUESTS:
        rate_limit(TRANSCODE_RATE[0], occupy=1, strict=True)


@contextmanager
def _held(name: str) -> Iterator[None]:
    """Hold a slot of Prefect's global limit `name`. strict: a missing limit is an error, never unthrottled.

    The request is queued behind this process's other slot requests, and may wait there for a free slot: the
    requests queued behind it would need one too. The release is not queued, because a release must never wait
    behind a request that is waiting for that very slot."""
    from prefect.concurrency.sync import concurrency

    with ExitStack() as held:
        with _SLOT_REQUESTS:
            held.enter_context(
                concurrency(
                    name, occupy=1, strict=True, lease_duration=SLOT_LEASE_S, raise_on_lease_renewal_failure=False
                )
            )
        yield


# A slot is leased: a run killed outright (SIGKILL, OOM, a lost machine) holds it until the lease runs out. Prefect's
# default of 300 s left a killed worker's encode slot (of 2) taken for 5 minutes; 60 s is the server's minimum.
# A lease renewal that fails (the Prefect server restarting) must not kill an encode in progress: the slot is a
# throttle, not a lock anything's correctness depends on.
SLOT_LEASE_S = 60


def encode_slot() -> ContextManager[None]:
    """Hold one of the global encode slots."""
    return _held(TRANSCODE_CONCURRENCY[0])


def db_batch_slot() -> ContextManager[None]:
    return _held(DB_BATCH_CONCURRENCY[0])


Lane = Literal["playable", "background"]


def lane_cpus(lane: Lane) -> frozenset[int] | None:
    """The CPUs of a lane: "background" is the last CPU this process may use, "playable" the others. None when
    lanes are off (ROADIE_CPU_LANES=false), unsupported (not Linux) or pointless (a single CPU)."""
    from roadie.settings import get_settings

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
