"""Object storage: one interface, a local folder or S3 (through prefect-aws).

Outputs are published through a staging area, so a failed job never leaves a partial output visible:
write under `_staging/<token>/`, then `promote` moves everything under its final prefix, or `discard` drops it.
"""

from __future__ import annotations

import builtins
import os
import re
import shutil
import unicodedata
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, cast
from urllib.parse import unquote, urlparse

from pydantic import SecretStr

from roadie.errors import StorageKeyError, TransientError
from roadie.settings import Settings, get_settings

if TYPE_CHECKING:
    from boto3.s3.transfer import TransferConfig
    from prefect_aws import S3Bucket

T = TypeVar("T")

STAGING_ROOT = "_staging"
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# Unicode control, format (bidi overrides, zero-width), surrogate, private-use and line/paragraph separators.
_BAD_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Zl", "Zp"})
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")


def validate_key(key: str) -> str:
    """Reject keys that could escape the storage root (or an S3 prefix) or confuse a backend. Returns the key
    unchanged.

    Refused: absolute keys (`/x`, `C:x`), backslashes, `.`/`..`/empty segments (so no trailing `/`), control and
    invisible format characters, NUL, `%` (so no URL-encoded `%2e%2e` or `%2f` that a proxy or server might decode
    into a traversal), and keys that only become a traversal once Unicode-normalised (`．．／` is `../` under NFKC)."""
    if not isinstance(key, str) or not key:
        raise StorageKeyError("storage key is empty")
    try:
        size = len(key.encode())
    except UnicodeEncodeError:
        raise StorageKeyError(f"storage key is not valid Unicode text: {key[:60]!r}") from None
    if size > 1024:
        raise StorageKeyError(f"storage key is longer than 1024 bytes: {key[:60]!r}…")
    if _CONTROL.search(key) or any(unicodedata.category(c) in _BAD_CATEGORIES for c in key):
        raise StorageKeyError(f"storage key contains a control or format character: {key!r}")
    if "%" in key:
        raise StorageKeyError(f"storage key contains '%' (URL-encoded forms are not keys): {key!r}")
    for form in dict.fromkeys((key, unicodedata.normalize("NFKC", key))):
        if form.startswith("/") or "\\" in form or re.match(r"^[A-Za-z]:", form):
            raise StorageKeyError(f"storage key must be relative: {key!r}")
        # No empty segment either: "a//b" and "a/" mean different objects to a folder and to S3.
        if any(part in ("", ".", "..") for part in form.split("/")):
            raise StorageKeyError(f"storage key has an empty, '.' or '..' segment: {key!r}")
    return key


def safe_filename(name: str, default: str = "upload") -> str:
    """A file name from an untrusted upload, reduced to characters that are safe in any key or path."""
    base = Path(name.replace("\\", "/")).name
    stem, dot, ext = base.rpartition(".")
    if not dot:
        stem, ext = base, ""
    stem = _SAFE_NAME.sub("_", stem).strip("._-")[:100] or default
    ext = _SAFE_NAME.sub("", ext)[:10].lower()
    return f"{stem}.{ext}" if ext else stem


def join_key(*parts: str) -> str:
    return validate_key("/".join(p.strip("/") for p in parts if p and p.strip("/")))


class Storage(Protocol):
    url: str
    bucket: str

    def put_file(self, key: str, path: Path, content_type: str | None = None) -> None: ...
    def put_bytes(self, key: str, data: bytes, content_type: str | None = None) -> None: ...
    def get_bytes(self, key: str) -> bytes: ...
    def download(self, key: str, path: Path) -> None: ...
    def exists(self, key: str) -> bool: ...
    def size(self, key: str) -> int: ...
    def list(self, prefix: str) -> list[str]: ...
    def delete(self, keys: builtins.list[str]) -> None: ...
    def move(self, src: str, dst: str) -> None: ...
    def url_for(self, key: str) -> str: ...


def delete_prefix(storage: Storage, prefix: str) -> int:
    keys = storage.list(prefix)
    storage.delete(keys)
    return len(keys)


@dataclass
class Stage:
    """Objects written for one job, not visible under their final keys until promoted."""

    storage: Storage
    final_prefix: str
    token: str

    @property
    def prefix(self) -> str:
        return join_key(STAGING_ROOT, self.token)

    def put_file(self, relkey: str, path: Path, content_type: str | None = None) -> str:
        self.storage.put_file(join_key(self.prefix, relkey), path, content_type)
        return join_key(self.final_prefix, relkey)

    def put_bytes(self, relkey: str, data: bytes, content_type: str | None = None) -> str:
        self.storage.put_bytes(join_key(self.prefix, relkey), data, content_type)
        return join_key(self.final_prefix, relkey)

    def put_dir(self, directory: Path) -> list[str]:
        """Stage every file of a directory (flat); returns the final keys, sorted."""
        return sorted(
            self.put_file(p.name, p, content_type_for(p.name)) for p in sorted(directory.iterdir()) if p.is_file()
        )

    def promote(self, replace: bool = True) -> list[str]:
        """Move staged objects under the final prefix; with `replace`, stale objects there are removed first."""
        staged = self.storage.list(self.prefix)
        finals = [join_key(self.final_prefix, k[len(self.prefix) + 1 :]) for k in staged]
        if replace:
            stale = sorted(set(self.storage.list(self.final_prefix)) - set(finals))
            self.storage.delete(stale)
        moved: list[str] = []
        try:
            for src, dst in zip(staged, finals, strict=False):
                self.storage.move(src, dst)
                moved.append(dst)
        except BaseException:
            # Half a rendition is worse than none: take back what was moved.
            self.storage.delete(moved)
            self.discard()
            raise
        return sorted(finals)

    def discard(self) -> None:
        delete_prefix(self.storage, self.prefix)


@contextmanager
def staged(storage: Storage, final_prefix: str) -> Iterator[Stage]:
    """Stage objects; on any error they are discarded. Call `stage.promote()` to publish."""
    stage = Stage(storage, join_key(final_prefix), uuid.uuid4().hex)
    try:
        yield stage
    except BaseException:
        stage.discard()
        raise
    else:
        # Whatever was not promoted inside the block is dropped, never left behind.
        stage.discard()


_CONTENT_TYPES = {
    ".m3u8": "application/vnd.apple.mpegurl",
    ".m4s": "video/iso.segment",
    ".mp4": "audio/mp4",
    ".json": "application/json",
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".dat": "application/octet-stream",
    ".wav": "audio/wav",
    ".flac": "audio/flac",
    ".mp3": "audio/mpeg",
    ".m4a": "audio/mp4",
    ".ogg": "audio/ogg",
    ".opus": "audio/ogg",
}


def content_type_for(name: str) -> str:
    return _CONTENT_TYPES.get(Path(name).suffix.lower(), "application/octet-stream")


class LocalStorage:
    """A folder on disk. Moves are renames, so promotion is cheap."""

    bucket = "local"

    def __init__(self, root: Path):
        self.root = root.resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.url = self.root.as_uri()

    def _path(self, key: str) -> Path:
        path = (self.root / validate_key(key)).resolve()
        if self.root not in path.parents:
            raise StorageKeyError(f"storage key escapes the storage root: {key!r}")
        return path

    def put_file(self, key: str, path: Path, content_type: str | None = None) -> None:
        dst = self._path(key)
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp = dst.with_name(f".{dst.name}.{uuid.uuid4().hex}.part")
        try:
            shutil.copyfile(path, tmp)
            os.replace(tmp, dst)
        finally:
            tmp.unlink(missing_ok=True)

    def put_bytes(self, key: str, data: bytes, content_type: str | None = None) -> None:
        dst = self._path(key)
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp = dst.with_name(f".{dst.name}.{uuid.uuid4().hex}.part")
        try:
            tmp.write_bytes(data)
            os.replace(tmp, dst)
        finally:
            tmp.unlink(missing_ok=True)

    def get_bytes(self, key: str) -> bytes:
        return self._path(key).read_bytes()

    def download(self, key: str, path: Path) -> None:
        shutil.copyfile(self._path(key), path)

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def size(self, key: str) -> int:
        return self._path(key).stat().st_size

    def list(self, prefix: str) -> list[str]:
        base = self._path(prefix) if prefix else self.root
        if base.is_file():
            return [validate_key(prefix)]
        if not base.is_dir():
            return []
        return sorted(
            p.relative_to(self.root).as_posix() for p in base.rglob("*") if p.is_file() and not p.name.endswith(".part")
        )

    def delete(self, keys: builtins.list[str]) -> None:
        for key in keys:
            path = self._path(key)
            path.unlink(missing_ok=True)
            self._prune(path.parent)

    def _prune(self, directory: Path) -> None:
        while directory != self.root and self.root in directory.parents:
            try:
                directory.rmdir()
            except OSError:
                return
            directory = directory.parent

    def move(self, src: str, dst: str) -> None:
        source, target = self._path(src), self._path(dst)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(source, target)
        self._prune(source.parent)

    def url_for(self, key: str) -> str:
        return self._path(key).as_uri()


# boto3, botocore and prefect_aws (which imports Prefect) are imported where S3 is used, never at the top: they cost
# ~1.5 s, and a file:// storage (`roadie register`, the laptop's `roadie ingest`, the tests) never needs them.


def _transfer_config() -> TransferConfig:
    """Files go up and down in 8 MiB parts, at most four in flight: a 2 GB original streams through 32 MiB of
    buffers (boto3's default of ten parts in flight would take 80 MiB of the flow's memory)."""
    from boto3.s3.transfer import TransferConfig  # noqa: PLC0415  (deferred: S3 only, see above)

    return TransferConfig(multipart_threshold=8 << 20, multipart_chunksize=8 << 20, max_concurrency=4)


class S3Storage:
    """An S3 bucket (AWS, MinIO, SeaweedFS) through a prefect-aws S3Bucket block (its credentials and folder).

    Every object key is made by `_full` alone (the folder, "/", a validated key), for uploads, downloads and copies
    too, so no second way of joining paths can put an object outside the folder."""

    def __init__(self, bucket_block: S3Bucket):
        self.block = bucket_block
        self.bucket = bucket_block.bucket_name
        self.prefix = (bucket_block.bucket_folder or "").strip("/")
        self.url = f"s3://{self.bucket}" + (f"/{self.prefix}" if self.prefix else "")
        self._client = bucket_block.credentials.get_s3_client()

    def _full(self, key: str) -> str:
        validate_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _rel(self, full: str) -> str:
        return full[len(self.prefix) + 1 :] if self.prefix else full

    def _call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        from botocore.exceptions import BotoCoreError, ClientError  # noqa: PLC0415  (deferred: S3 only)

        try:
            return fn(*args, **kwargs)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code in ("NoSuchKey", "404", "NoSuchBucket"):
                raise FileNotFoundError(str(exc)) from exc
            if code.startswith("5") or code in ("SlowDown", "RequestTimeout", "InternalError"):
                raise TransientError(f"S3 error: {exc}") from exc
            raise
        except BotoCoreError as exc:
            raise TransientError(f"S3 unreachable: {exc}") from exc

    def ensure_bucket(self) -> None:
        from botocore.exceptions import ClientError  # noqa: PLC0415  (deferred: S3 only)

        try:
            self._client.head_bucket(Bucket=self.bucket)
        except ClientError:
            self._call(self._client.create_bucket, Bucket=self.bucket)

    def put_file(self, key: str, path: Path, content_type: str | None = None) -> None:
        extra = {"ExtraArgs": {"ContentType": content_type}} if content_type else {}
        self._call(
            self._client.upload_file, str(path), self.bucket, self._full(key), Config=_transfer_config(), **extra
        )

    def put_bytes(self, key: str, data: bytes, content_type: str | None = None) -> None:
        extra = {"ContentType": content_type} if content_type else {}
        self._call(self._client.put_object, Bucket=self.bucket, Key=self._full(key), Body=data, **extra)

    def get_bytes(self, key: str) -> bytes:
        return self._call(self._client.get_object, Bucket=self.bucket, Key=self._full(key))["Body"].read()

    def download(self, key: str, path: Path) -> None:
        self.size(key)  # a clear FileNotFoundError before boto's generic 404
        self._call(self._client.download_file, self.bucket, self._full(key), str(path), Config=_transfer_config())

    def exists(self, key: str) -> bool:
        try:
            self.size(key)
            return True
        except FileNotFoundError:
            return False

    def size(self, key: str) -> int:
        return self._call(self._client.head_object, Bucket=self.bucket, Key=self._full(key))["ContentLength"]

    def list(self, prefix: str) -> list[str]:
        folder = self._full(prefix).rstrip("/") + "/" if prefix else f"{self.prefix}/" if self.prefix else ""
        paginator = self._client.get_paginator("list_objects_v2")
        keys: list[str] = []
        for page in self._call(lambda: list(paginator.paginate(Bucket=self.bucket, Prefix=folder))):
            keys.extend(self._rel(obj["Key"]) for obj in page.get("Contents", []))
        return sorted(keys)

    def delete(self, keys: builtins.list[str]) -> None:
        for start in range(0, len(keys), 1000):
            chunk = [{"Key": self._full(k)} for k in keys[start : start + 1000]]
            self._call(self._client.delete_objects, Bucket=self.bucket, Delete={"Objects": chunk, "Quiet": True})

    def move(self, src: str, dst: str) -> None:
        self._call(
            self._client.copy,
            {"Bucket": self.bucket, "Key": self._full(src)},
            self.bucket,
            self._full(dst),
            Config=_transfer_config(),
        )
        self.delete([src])

    def url_for(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._full(key)}"


def s3_bucket_block(settings: Settings, bucket: str, folder: str) -> S3Bucket:
    from prefect_aws import AwsClientParameters, AwsCredentials, S3Bucket  # noqa: PLC0415  (deferred: S3 only)

    if settings.s3_bucket_block:
        # Typed as the block or its coroutine (Prefect's async_dispatch); called from sync code it is the block.
        return cast("S3Bucket", S3Bucket.load(settings.s3_bucket_block))
    # Endpoint goes through aws_client_parameters: S3Bucket(endpoint_url=...) is silently ignored.
    # One quick retry inside boto, no more: the flows' own transient retries (roadie.retries) wait out an outage,
    # and boto's default retries on top of them made one failed attempt take 15-20 s against a stopped server.
    params: dict = {
        "config": {"retries": {"max_attempts": 2, "mode": "standard"}, "connect_timeout": 5, "read_timeout": 60}
    }
    if settings.s3_endpoint_url:
        params["endpoint_url"] = settings.s3_endpoint_url
    credentials = AwsCredentials(
        aws_access_key_id=settings.s3_access_key,
        aws_secret_access_key=SecretStr(settings.s3_secret_key) if settings.s3_secret_key is not None else None,
        region_name=settings.s3_region,
        aws_client_parameters=AwsClientParameters.model_validate(params),
    )
    return S3Bucket(bucket_name=bucket, bucket_folder=folder, credentials=credentials)


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
