"""Object storage: one interface, a local folder or S3 (through prefect-aws).

The package's modules: `keys` (key validation, building, content types), `base` (the Storage protocol and staged
publishing: a failed job never leaves a partial output visible), `local` (LocalStorage) and `s3` (S3Storage and its
bucket block). Here: the storage a URL names, and the configured one (`get_storage`).
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlparse

from roadie.settings import Settings, get_settings
from roadie.storage.base import STAGING_ROOT, Stage, Storage, delete_prefix, staged
from roadie.storage.keys import content_type_for, join_key, safe_filename, validate_key
from roadie.storage.local import LocalStorage
from roadie.storage.s3 import S3Storage, s3_bucket_block

__all__ = [
    "STAGING_ROOT",
    "LocalStorage",
    "S3Storage",
    "Stage",
    "Storage",
    "content_type_for",
    "delete_prefix",
    "get_storage",
    "join_key",
    "s3_bucket_block",
    "safe_filename",
    "staged",
    "storage_from_url",
    "validate_key",
]


def storage_from_url(url: str, settings: Settings | None = None) -> Storage:
    settings = settings or get_settings()
    parsed = urlparse(url)
    if parsed.scheme == "file":
        return LocalStorage(Path(unquote(parsed.path)))
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise ValueError(f"ROADIE_STORAGE_URL {url!r} names no bucket; use s3://BUCKET[/prefix]")
        return S3Storage(s3_bucket_block(settings, parsed.netloc, parsed.path.strip("/")))
    raise ValueError(f"unsupported ROADIE_STORAGE_URL {url!r}; use file:///path or s3://bucket[/prefix]")


_cache: dict[str, Storage] = {}


def get_storage() -> Storage:
    url = get_settings().storage_url
    if url not in _cache:
        _cache[url] = storage_from_url(url)
    return _cache[url]
