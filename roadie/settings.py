"""The one settings object. Everything configurable comes from ROADIE_* environment variables."""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Optional

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
    s3_endpoint_url: Optional[str] = None
    s3_access_key: Optional[str] = None
    s3_secret_key: Optional[str] = None
    s3_region: str = "us-east-1"
    # A saved prefect-aws S3Bucket block to use instead of the three values above.
    s3_bucket_block: Optional[str] = None

    # Where flows report to. Unset: the CLI starts (once) and reuses a local server under ROADIE_HOME.
    prefect_api_url: Optional[str] = Field(
        default=None, validation_alias=AliasChoices("ROADIE_PREFECT_API_URL", "PREFECT_API_URL")
    )
    prefect_local_port: int = 4242
    # The local server's own database. Unset: SQLite under ROADIE_HOME/prefect, fine for trying roadie out, but
    # Prefect's SQLite backend answers simultaneous concurrency-slot requests with "database is locked" and its
    # client then waits ~2 s. With PostgreSQL (postgresql+asyncpg://…) a short ingest is several times faster.
    prefect_database_url: Optional[str] = None

    ffmpeg_binary: Optional[str] = None
    fpcalc_binary: str = "fpcalc"
    tmp_dir: Optional[Path] = None

    default_formats: tuple[str, ...] = ("hls_opus", "hls_aac")
    hls_segment_seconds: int = 6

    @model_validator(mode="after")
    def _derive_defaults(self) -> "Settings":
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
