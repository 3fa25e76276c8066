"""The one retry policy: transient failures (storage, database, network) retry 3 times, 5 s, 10 s, 20 s with
jitter (ROADIE_RETRY_BACKOFF_SECONDS scales the steps: 2 gives 2, 4, 8 s); invalid input never retries."""

from __future__ import annotations

from typing import Any

from prefect.tasks import exponential_backoff

from roadie.errors import is_transient
from roadie.settings import get_settings


def retry_on_transient(task: Any, task_run: Any, state: Any) -> bool:
    try:
        state.result()
    except Exception as exc:  # the failure the task raised
        return is_transient(exc)
    return False


def transient_retries() -> dict[str, Any]:
    """Keyword arguments for @task(...)."""
    return {
        "retries": 3,
        "retry_delay_seconds": exponential_backoff(backoff_factor=get_settings().retry_backoff_seconds),
        "retry_jitter_factor": 0.2,
        "retry_condition_fn": retry_on_transient,
    }
