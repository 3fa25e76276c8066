"""Prefect's global concurrency and rate limits that protect the machines (names shared by flows and setup).
Where the work runs inside one process (CPU lanes, niceness) is roadie.cpu."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager as ContextManager
from contextlib import contextmanager
from typing import TYPE_CHECKING

from roadie.errors import RoadieError
from roadie.settings import get_settings

if TYPE_CHECKING:
    from uuid import UUID

    import httpx

# Prefect is imported in the functions that talk to it (marked): `roadie rollup` and `roadie distribute` import this
# module for DB_BATCH_CONCURRENCY and run without Prefect, which costs them ~1 s to import.

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
    from prefect.client.orchestration import get_client  # noqa: PLC0415  (deferred: Prefect, see the top)

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
    """Take one slot of the per-minute transcode rate (blocks while the rate is exhausted). strict: a missing limit
    is an error, never unthrottled. Prefect's rate_limit(), the same request and the same "acquired" event, but for
    how a busy server is met (_slot_request)."""
    # deferred: Prefect, see the top
    from prefect.client.schemas.responses import MinimalConcurrencyLimitResponse  # noqa: PLC0415
    from prefect.concurrency._events import emit_concurrency_acquisition_events  # noqa: PLC0415
    from prefect.concurrency.sync import rate_limit  # noqa: PLC0415

    name = TRANSCODE_RATE[0]
    with _SLOT_REQUESTS:
        response = _slot_request(
            "/v2/concurrency_limits/increment", {"names": [name], "slots": 1, "mode": "rate_limit"}
        )
    if response is None:
        rate_limit(name, occupy=1, strict=True)
        return
    limits = [MinimalConcurrencyLimitResponse.model_validate(item) for item in response.json()]
    if not limits:
        raise _missing(name)
    emit_concurrency_acquisition_events(limits, 1)


def _slot_request(path: str, body: dict[str, object]) -> httpx.Response | None:
    """POST one slot request (take or give back) to Prefect's concurrency API; None when the server wants CSRF
    tokens (off by default): the caller then uses Prefect's own call.

    Prefect's own calls, but for how a 503 is met. The increment endpoints read, then write, in one deferred
    transaction; on a SQLite Prefect server (the laptop's) the server's own event writes often commit in between,
    SQLite refuses the write (SQLITE_BUSY_SNAPSHOT) and the server answers 503: 13 times in 8 `roadie ingest` runs
    of a 1 s file, measured, and 2 of 3 runs still met it on the encode slot after the rate slot was fixed. Prefect's
    client then waits 2 s, even when told to retry no more (it sleeps before it checks). A refused request changed
    nothing, so it is sent again here after 50 ms, doubling, through the client's own connection (its base URL and
    auth) but not its retrying send(); so are the connection errors that send() retries (a reset kept-alive
    connection). A 423 (no slot free) is waited out for its Retry-After, as Prefect does."""
    import httpx  # noqa: PLC0415  (deferred: Prefect's client, see the top)
    from prefect.client.orchestration import get_client  # noqa: PLC0415

    busy = 0
    with get_client(sync_client=True) as client:
        http = client._client  # Prefect's httpx.Client; httpx.Client.send is the plain send, without the 2 s waits
        while True:
            try:
                response = httpx.Client.send(http, http.build_request("POST", path, json=body))
            except httpx.TransportError:  # e.g. a kept-alive connection the server closed: Prefect's send retries too
                if busy >= BUSY_RETRIES:
                    raise
            else:
                if response.status_code == 423:  # no slot free; the server says when to ask again
                    time.sleep(float(response.headers.get("Retry-After", 1)))
                    continue
                if response.status_code == 403 and "csrf" in response.text.lower():
                    return None
                if response.status_code != 503 or busy >= BUSY_RETRIES:
                    return response.raise_for_status()
            time.sleep(0.05 * 2**busy)  # busy (503) or disconnected: the request changed nothing, ask again
            busy += 1


# 50 ms doubling, 8 times: 12.75 s in all before the 503 (or the connection error) is the caller's: the transcode
# task fails with it, and the ingest treats that like any failed encode.
BUSY_RETRIES = 8


def _missing(name: str) -> RoadieError:
    return RoadieError(f"the Prefect concurrency limit {name!r} does not exist: run `roadie setup`")


@contextmanager
def _held(name: str) -> Iterator[None]:
    """Hold a slot of Prefect's global limit `name`: Prefect's concurrency() (a leased slot, renewed while held, the
    same events), with its requests sent as _slot_request sends them. strict: a missing limit is an error, never
    unthrottled.

    The request is queued behind this process's other slot requests, and may wait there for a free slot: the
    requests queued behind it would need one too. The release is not queued, because a release must never wait
    behind a request that is waiting for that very slot."""
    # deferred: Prefect, see the top
    from prefect.client.schemas.responses import ConcurrencyLimitWithLeaseResponse  # noqa: PLC0415
    from prefect.concurrency._events import (  # noqa: PLC0415
        emit_concurrency_acquisition_events,
        emit_concurrency_release_events,
    )
    from prefect.concurrency._leases import maintain_concurrency_lease  # noqa: PLC0415
    from prefect.concurrency.sync import concurrency  # noqa: PLC0415

    body = {"names": [name], "slots": 1, "mode": "concurrency", "lease_duration": SLOT_LEASE_S}
    with _SLOT_REQUESTS:
        response = _slot_request("/v2/concurrency_limits/increment-with-lease", body)
    if response is None:
        with concurrency(
            name, occupy=1, strict=True, lease_duration=SLOT_LEASE_S, raise_on_lease_renewal_failure=False
        ):
            yield
        return
    granted = ConcurrencyLimitWithLeaseResponse.model_validate(response.json())
    if not granted.limits:
        raise _missing(name)
    events = emit_concurrency_acquisition_events(granted.limits, 1)
    try:
        with maintain_concurrency_lease(granted.lease_id, SLOT_LEASE_S, raise_on_lease_renewal_failure=False):
            yield
    finally:
        _release(granted.lease_id)
        emit_concurrency_release_events(granted.limits, 1, events)


def _release(lease_id: UUID) -> None:
    """Give a leased slot back. A release that fails for good (the Prefect server gone for longer than the re-asks
    last) leaves the slot to its lease, SLOT_LEASE_S, as a killed run's is: the work done in it stands."""
    from prefect.concurrency._sync import release_concurrency_slots_with_lease  # noqa: PLC0415  (deferred: Prefect)

    try:
        if _slot_request("/v2/concurrency_limits/decrement-with-lease", {"lease_id": str(lease_id)}) is None:
            release_concurrency_slots_with_lease(lease_id)  # a server that wants CSRF tokens: Prefect's own call
    except Exception as exc:
        logging.getLogger(__name__).warning(
            "could not give back concurrency slot lease %s (%s); it frees itself within %d s",
            lease_id,
            exc,
            SLOT_LEASE_S,
        )


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
