"""roadie's worker topology on a Prefect server, created idempotently: pools, prioritised queues, global
limits and the crash-detection automation. `roadie setup` runs this; so does `python -m deployments.topology`.

Deployments themselves come from prefect.yaml (process pool) or deployments/prefect.docker.yaml (Docker pool),
and the dead-letter automation comes with the `dead-letter` deployment's trigger in those files.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from prefect.client.schemas.actions import WorkPoolCreate
from prefect.events.schemas.automations import AutomationCore
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound
from prefect.settings import PREFECT_API_URL, temporary_settings
from prefect.utilities.asyncutils import run_coro_as_sync
from prefect.workers.utilities import get_default_base_job_template_for_infrastructure_type

from roadie.limits import ensure_limits as create_limits
from roadie.prefect_api import connect
from roadie.settings import get_settings

if TYPE_CHECKING:
    from prefect.client.orchestration import SyncPrefectClient

PROCESS_POOL = "roadie-process"
DOCKER_POOL = "roadie-docker"


@dataclass(frozen=True)
class Queue:
    name: str
    priority: int  # lower runs first
    description: str


# Uploads become playable first; dead letters are tiny and should not wait behind analysis; batch runs last.
QUEUES = (
    Queue("ingest", 1, "media-ingest and transcode: what makes an upload playable"),
    Queue("ops", 2, "dead-letter recording"),
    Queue("analysis", 10, "waveform, artwork-extract, loudness, fingerprint reprocessing"),
    Queue("batch", 20, "analytics-rollup and distribution"),
)

ZOMBIE_AUTOMATION = "roadie-crashed-runs"
# Flow runs beat every `PREFECT_FLOWS_HEARTBEAT_FREQUENCY` s (30 in prefect.yaml's job env).
FINAL_EVENTS = (
    "prefect.flow-run.Completed",
    "prefect.flow-run.Failed",
    "prefect.flow-run.Crashed",
    "prefect.flow-run.Cancelled",
    "prefect.flow-run.TimedOut",
)


def zombie_automation(within_seconds: int) -> dict[str, Any]:
    """Runs whose process died (worker SIGKILLed, machine gone) stop beating: mark them Crashed.

    Proactive trigger: after a heartbeat, expect another heartbeat or a final state within the window."""
    return {
        "name": ZOMBIE_AUTOMATION,
        "description": f"Mark roadie runs Crashed after {within_seconds} s without a heartbeat; the Crashed "
        "event then files them as dead letters.",
        "enabled": True,
        "trigger": {
            "type": "event",
            "posture": "Proactive",
            "match": {"prefect.resource.id": "prefect.flow-run.*"},
            "match_related": {"prefect.resource.role": "tag", "prefect.resource.id": "prefect.tag.roadie"},
            "after": ["prefect.flow-run.heartbeat"],
            "expect": ["prefect.flow-run.heartbeat", *FINAL_EVENTS],
            "for_each": ["prefect.resource.id"],
            "threshold": 1,
            "within": within_seconds,
        },
        "actions": [
            {
                "type": "change-flow-run-state",
                "state": "CRASHED",
                "message": f"no heartbeat for {within_seconds} s: the worker or its machine died",
            }
        ],
    }


def default_job_template(pool_type: str) -> dict[str, Any]:
    """The worker type's own base job template (offline: Prefect ships the Docker one in its registry)."""
    template = run_coro_as_sync(get_default_base_job_template_for_infrastructure_type(pool_type))
    if not template:
        raise RuntimeError(f"no base job template known for work pool type {pool_type!r}")
    return template


def ensure_pool(client: SyncPrefectClient, name: str, pool_type: str, description: str) -> bool:
    """Create the pool if missing. Returns True when created. An existing pool keeps its template."""
    try:
        client.read_work_pool(name)
        return False
    except ObjectNotFound:
        pass
    pool = WorkPoolCreate(
        name=name, type=pool_type, description=description, base_job_template=default_job_template(pool_type)
    )
    try:
        client.create_work_pool(pool)
    except ObjectAlreadyExists:  # another setup made it meanwhile
        return False
    return True


def ensure_queue(client: SyncPrefectClient, pool: str, queue: Queue) -> None:
    try:
        client.create_work_queue(
            queue.name, description=queue.description, priority=queue.priority, work_pool_name=pool
        )
    except ObjectAlreadyExists:
        existing = client.read_work_queue_by_name(queue.name, work_pool_name=pool)
        client.update_work_queue(existing.id, priority=queue.priority, description=queue.description)


def upsert_automation(client: SyncPrefectClient, spec: dict[str, Any]) -> str:
    automation = AutomationCore.model_validate(spec)
    found = client.read_automations_by_name(spec["name"])
    if found:
        client.update_automation(found[0].id, automation)
        for extra in found[1:]:  # an earlier race left a duplicate
            client.delete_automation(extra.id)
        return str(found[0].id)
    return str(client.create_automation(automation))


def ensure_limits(api_url: str) -> None:
    """The global transcode (2 at once, 10 a minute) and db-batch limits, via roadie.limits."""
    with temporary_settings(updates={PREFECT_API_URL: api_url}):
        create_limits()


def ensure_topology(client: SyncPrefectClient, *, docker: bool = True, zombie_after_seconds: int | None = None) -> dict:
    """Everything the deployments need, safe to run any number of times. Returns what it did."""
    within = zombie_after_seconds or get_settings().zombie_after_seconds
    created = []
    pools = [(PROCESS_POOL, "process", "roadie workers as local processes (roadie serve, one machine)")]
    if docker:
        pools.append((DOCKER_POOL, "docker", "roadie workers as containers of the image from docker/"))
    for name, pool_type, description in pools:
        if ensure_pool(client, name, pool_type, description):
            created.append(name)
        for queue in QUEUES:
            ensure_queue(client, name, queue)
    ensure_limits(str(client.api_url).rstrip("/"))
    automation_id = upsert_automation(client, zombie_automation(within))
    return {
        "pools": [p[0] for p in pools],
        "created_pools": created,
        "queues": [q.name for q in QUEUES],
        "limits": ["transcode", "transcode-rate", "db-batch"],
        "zombie_automation": automation_id,
        "zombie_after_seconds": within,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--api-url", help="Prefect API (default: ROADIE_PREFECT_API_URL / PREFECT_API_URL)")
    parser.add_argument("--no-docker", action="store_true", help="skip the roadie-docker pool")
    args = parser.parse_args(argv)
    with connect(args.api_url) as client:
        print(ensure_topology(client, docker=not args.no_docker))


if __name__ == "__main__":
    main()
