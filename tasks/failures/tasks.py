"""Thin Prefect tasks over the dead letters. Reading the API and notifying retry on any error (the network);
the row write retries on transient database errors only."""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.client.orchestration import get_client

from roadie.retries import transient_retries
from tasks.failures import dead_letter

RETRY = transient_retries()
NETWORK_RETRY: dict[str, Any] = {"retries": 3, "retry_delay_seconds": [5, 10, 20], "retry_jitter_factor": 0.2}


@task(**NETWORK_RETRY)
def read_failed_run(flow_run_id: str) -> dead_letter.FailedRun:
    # Inside a run, Prefect's client already points at the run's API (and its auth string).
    with get_client(sync_client=True) as client:
        return dead_letter.describe_failed_run(client, flow_run_id)


@task(**RETRY)
def record_failed_job(failed: dead_letter.FailedRun) -> dead_letter.DeadLetter:
    return dead_letter.record(failed)


@task(**NETWORK_RETRY)
def notify_webhook(letter: dead_letter.DeadLetter, url: str) -> int:
    return dead_letter.notify_webhook(letter, url)


@task(**NETWORK_RETRY)
def notify_block(letter: dead_letter.DeadLetter, block: str) -> None:
    dead_letter.notify_block(letter, block)
