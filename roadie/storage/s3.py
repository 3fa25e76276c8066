"""An S3 bucket as storage (s3:// URLs), through a prefect-aws S3Bucket block, and the block made from settings."""

from __future__ import annotations

import builtins
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, cast

from pydantic import SecretStr

from roadie.errors import TransientError
from roadie.settings import Settings
from roadie.storage.keys import validate_key

if TYPE_CHECKING:
    from boto3.s3.transfer import TransferConfig
    from prefect_aws import S3Bucket

T = TypeVar("T")

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
