"""Settings of the operations side (health, metrics, dead letters), from ROADIE_* like the core settings.

Kept apart from roadie.settings so the ops knobs live with the code that reads them; same prefix, same rules.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Optional

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class OpsSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ROADIE_", extra="ignore")

    # The pool whose workers count as "online" for /health and roadie_workers_online.
    work_pool: str = "roadie-process"
    health_host: str = "0.0.0.0"
    health_port: int = 3001
    # Unhealthy when more than `health_max_failed` runs failed or crashed in the last `health_window_minutes`.
    health_window_minutes: int = 60
    health_max_failed: int = 100
    # Runs older than this are not read at the exporter's first scrape (later scrapes are incremental).
    metrics_backfill_hours: int = 24
    # A running flow with no heartbeat for this long is marked Crashed (flows beat every 30 s).
    zombie_after_seconds: int = 90
    # Dead-letter notifications: a plain JSON POST, and/or a saved Prefect notification block ("slack-webhook/ops").
    dead_letter_webhook_url: Optional[str] = None
    dead_letter_notify_block: Optional[str] = None
    # Prefect server auth (PREFECT_SERVER_API_AUTH_STRING on the server), sent as HTTP basic auth.
    prefect_api_auth_string: Optional[str] = Field(
        default=None, validation_alias=AliasChoices("ROADIE_PREFECT_API_AUTH_STRING", "PREFECT_API_AUTH_STRING"))


@lru_cache(maxsize=1)
def get_ops_settings() -> OpsSettings:
    return OpsSettings()


def reload_ops_settings() -> OpsSettings:
    get_ops_settings.cache_clear()
    return get_ops_settings()
