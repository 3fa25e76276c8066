"""The one settings object. Everything configurable comes from ROADIE_* environment variables."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import AliasChoices, Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

FORMATS = ("hls_opus", "hls_aac", "hls_alac")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ROADIE_", extra="ignore")

    # ~/.roadie keeps one embedded install per user, wherever the CLI is run from.
    home: Path = Field(default_factory=lambda: Path.home() / ".roadie")
    database_url: str = ""
    storage_url: str = ""

    # S3-compatible endpoint (MinIO, SeaweedFS); empty means AWS itself.
    s3_endpoint_url: str | None = None
    s3_access_key: str | None = None
    s3_secret_key: str | None = None
    s3_region: str = "us-east-1"
    # A saved prefect-aws S3Bucket block to use instead of the three values above.
    s3_bucket_block: str | None = None

    # Where flows report to. Unset: the CLI starts (once) and reuses a local server under ROADIE_HOME.
    prefect_api_url: str | None = Field(
        default=None, validation_alias=AliasChoices("ROADIE_PREFECT_API_URL", "PREFECT_API_URL")
    )
    prefect_local_port: int = 4242
    # The local server's own database (postgresql+asyncpg://…). Unset: beside roadie's data, a `<name>_prefect`
    # database on roadie's PostgreSQL server, or SQLite under ROADIE_HOME/prefect when roadie itself is on SQLite
    # (see roadie.prefect_local.prefect_database_url for why SQLite is only for one-at-a-time use).
    prefect_database_url: str | None = None

    ffmpeg_binary: str | None = None
    fpcalc_binary: str = "fpcalc"
    tmp_dir: Path | None = None

    # The longest upload roadie accepts, read from the probe before any work; the decode also stops there, whatever
    # a header claims. Memory does not grow with length (the analysis streams), so this bounds time and disk.
    max_duration_s: float = Field(default=4 * 3600, gt=0)

    # Prefect's global limits (roadie.limits), set on the server by every `roadie setup`/`serve`/`ingest`: encodes at
    # once across all workers (one core each), and ingests started a minute (a bucket of that many slots, one
    # freed every 60/N s).
    transcode_concurrency: int = Field(default=2, ge=1)
    transcode_rate_per_minute: float = Field(default=10, gt=0)

    default_formats: tuple[str, ...] = ("hls_opus", "hls_aac")
    hls_segment_seconds: int = 6
    # Off (default, playable first): every encode and the analysis share every CPU, the secondary renditions at a
    # lower priority (nice 10). On (Linux, 2+ CPUs): the secondary renditions get the worker's last CPU to
    # themselves and the primary rendition and the analysis share the others: all outputs sooner, playable later
    # (bench/ingest, 240 s on 2 cores: playable 5.1 -> 8.1 s, all outputs 15.6 -> 12.6 s).
    cpu_lanes: bool = False

    # `roadie serve`'s workers fork each flow run from a pre-imported interpreter (roadie.ops.warm_worker): a run
    # starts in ~1 s instead of ~6 s (bench/api_latency). False: plain `prefect worker start`.
    worker_warm: bool = True

    # Operations: health, metrics, dead letters, crash detection.
    # The pool whose workers count as "online" for /health and roadie_workers_online.
    work_pool: str = "roadie-process"
    health_host: str = "0.0.0.0"  # noqa: S104 - the container health check and Prometheus reach it
    health_port: int = 3001
    # Unhealthy when more than `health_max_failed` runs failed or crashed in the last `health_window_minutes`.
    health_window_minutes: int = 60
    health_max_failed: int = 100
    # Runs older than this are not read at the exporter's first scrape (later scrapes are incremental).
    metrics_backfill_hours: int = 24
    # The first wait of the transient-failure retries (then x2, x4): 3 retries cover about 7x this long an outage.
    retry_backoff_seconds: float = Field(default=5, gt=0)
    # A running flow with no heartbeat for this long is marked Crashed (flows beat every 30 s).
    zombie_after_seconds: int = 90
    # Dead-letter notifications: a plain JSON POST, and/or a saved Prefect notification block ("slack-webhook/ops").
    dead_letter_webhook_url: str | None = None
    dead_letter_notify_block: str | None = None
    # Prefect server auth (PREFECT_SERVER_API_AUTH_STRING on the server), sent as HTTP basic auth.
    prefect_api_auth_string: str | None = Field(
        default=None, validation_alias=AliasChoices("ROADIE_PREFECT_API_AUTH_STRING", "PREFECT_API_AUTH_STRING")
    )

    @model_validator(mode="after")
    def _derive_defaults(self) -> Settings:
        self.home = self.home.expanduser().resolve()
        if not self.database_url:
            self.database_url = f"sqlite:///{self.home / 'roadie.db'}"
        if not self.storage_url:
            self.storage_url = (self.home / "storage").as_uri()
        for fmt in self.default_formats:
            if fmt not in FORMATS:
                raise ValueError(f"unknown format {fmt!r} in ROADIE_DEFAULT_FORMATS; choose from {FORMATS}")
        return self


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()


def reload_settings() -> Settings:
    """Forget the cached settings (tests and the CLI change the environment)."""
    get_settings.cache_clear()
    return get_settings()
