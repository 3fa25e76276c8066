"""Storage keys never escape their prefix, on the local folder and on a real S3 server (SeaweedFS): property tests.

Keys are built from the pieces of known attacks (`..`, absolute paths, NUL, backslashes, URL-encoded and
Unicode look-alike forms) mixed with ordinary names. Every key is either refused with StorageKeyError before
any I/O, or the object it names lands exactly at prefix/key: nothing appears anywhere else in the bucket or on
the disk, and no key that decodes or normalises into a traversal is ever accepted."""

from __future__ import annotations

import os
import re
import unicodedata
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from roadie.errors import StorageKeyError
from roadie.settings import Settings
from roadie.storage import LocalStorage, S3Storage, storage_from_url, validate_key

ATTACKS = [
    "..",
    ".",
    "",
    "/",
    "//",
    "\\",
    "..\\",
    "\x00",
    "%00",
    "%2e%2e",
    "%2E%2E",
    "%2f",
    "%2F",
    "%5c",
    "%252e%252e",
    "..%2f",
    "%2e%2e%2f",
    "C:",
    "c:\\",
    "．．",
    "／",
    "﹒﹒",
    "⁄",
    "\u202e",
    "\u200b",
    "~",
    "\n",
    "\r",
    "\t",
    " ",
    "...",
    ".hidden",
    "a",
    "b.wav",
    "segment_000.m4s",
    "ünï",
    "cödé ok",
    "x:y",
    "?",
    "#",
    "*",
    "+",
    "&",
]
piece = st.one_of(st.sampled_from(ATTACKS), st.text(min_size=1, max_size=8))
key_strategy = st.lists(piece, min_size=1, max_size=6).map("".join)
# Paths with separators in the places where traversal happens.
path_strategy = st.lists(st.one_of(st.sampled_from(ATTACKS), st.text(max_size=6)), min_size=1, max_size=5).map("/".join)
any_key = st.one_of(key_strategy, path_strategy)
NASTY = [
    "a/",
    "../etc/passwd",
    "a/../../b",
    "/abs",
    "%2e%2e/%2e%2e/x",
    "..%2fx",
    "a%2f..%2f..%2fb",
    "a\\..\\b",
    "nul\x00.wav",
    "．．／x",
    "a/．．/b",
    "C:x",
    "\\\\server\\share",
    "%252e%252e/x",
    "a/./b",
    "a//b",
    "a/..",
    "..",
]


def dangerous(key: str) -> bool:
    """Would this key be a traversal to any layer that decodes (percent, repeatedly) or normalises (NFKC) it?"""
    forms = {key}
    decoded = key
    for _ in range(3):
        decoded = unquote(decoded)
        forms.add(decoded)
    forms |= {unicodedata.normalize("NFKC", f) for f in list(forms)}
    for form in forms:
        unified = form.replace("\\", "/")
        parts = unified.split("/")
        if unified.startswith("/") or "\x00" in form or re.match("[A-Za-z]:", form):
            return True
        if any(p in ("..", ".", "") for p in parts):
            return True
    return False


def check(key: str, write, landed) -> None:
    """`write(key)` for an accepted key, then `landed()` must be exactly [that object's full key]."""
    try:
        validate_key(key)
    except StorageKeyError:
        with pytest.raises(StorageKeyError):  # the backend refuses it too, before any I/O
            write(key)
        assert landed() == []
        return
    assert not dangerous(key), f"accepted a key that decodes into a traversal: {key!r}"
    write(key)
    assert landed() == [key], (key, landed())


# ---------------------------------------------------------------------- the local folder


@pytest.fixture(scope="module")
def local(tmp_path_factory) -> Iterator[tuple[Path, LocalStorage]]:
    outer = tmp_path_factory.mktemp("local-keys")
    (outer / "sentinel").write_text("outside the root")
    store = LocalStorage(outer / "root" / "inner")
    yield outer, store


def _files(root: Path) -> list[str]:
    return sorted(
        str(Path(dirpath, name).relative_to(root).as_posix()) for dirpath, _, names in os.walk(root) for name in names
    )


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(key=any_key)
@example(key="../sentinel").via("traversal to a real file")
@example(key="a/b/segment_000.m4s").via("an ordinary key")
def test_local_keys_stay_under_the_root(local, key):
    outer, store = local
    inner = Path(store.root)

    def write(k: str) -> None:
        store.put_bytes(k, b"payload")

    def landed() -> list[str]:
        files = _files(outer)
        outside = [f for f in files if not f.startswith("root/inner/") and f != "sentinel"]
        assert outside == [], f"{key!r} wrote outside the root: {outside}"
        return [f.removeprefix("root/inner/") for f in files if f.startswith("root/inner/")]

    try:
        check(key, write, landed)
    finally:
        for name in _files(inner):
            store.delete([name])
    assert (outer / "sentinel").read_text() == "outside the root"


def assert_every_operation_refuses(store, key: str, tmp_path) -> None:
    """Every Storage operation that takes a key refuses `key` with StorageKeyError (before any I/O)."""
    src = tmp_path / "f"
    src.write_bytes(b"x")
    for call in (
        lambda: store.put_bytes(key, b"x"),
        lambda: store.put_file(key, src),
        lambda: store.get_bytes(key),
        lambda: store.download(key, tmp_path / "out"),
        lambda: store.exists(key),
        lambda: store.size(key),
        lambda: store.delete([key]),
        lambda: store.move("a", key),
        lambda: store.url_for(key),
        lambda: store.list(key),
    ):
        with pytest.raises(StorageKeyError):
            call()


@pytest.mark.parametrize("key", NASTY)
def test_known_traversals_are_refused_by_every_local_operation(local, key, tmp_path):
    _, store = local
    assert_every_operation_refuses(store, key, tmp_path)


# ---------------------------------------------------------------------- the real S3 server


@pytest.fixture(scope="module")
def s3(s3_server: str, tmp_path_factory) -> Iterator[tuple[S3Storage, object, str, Path]]:
    """A bucket of its own, so that the whole bucket can be listed after every write: an object anywhere but
    under the storage's folder would show."""
    bucket = f"roadie-keys-{uuid.uuid4().hex[:8]}"
    config = Settings(s3_endpoint_url=s3_server, s3_access_key="keys-test", s3_secret_key="keys-test-secret")
    store = storage_from_url(f"s3://{bucket}/tenant/inner", config)
    assert isinstance(store, S3Storage)
    store.ensure_bucket()
    client = store._client
    client.put_object(Bucket=bucket, Key="tenant/sentinel", Body=b"outside the prefix")
    src = tmp_path_factory.mktemp("s3-src") / "f"
    src.write_bytes(b"payload")
    yield store, client, bucket, src


def _bucket_keys(client, bucket: str) -> list[str]:
    keys: list[str] = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        keys.extend(obj["Key"] for obj in page.get("Contents", []))
    return sorted(keys)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(key=any_key)
@example(key="../sentinel").via("traversal to a real object")
@example(key="a/b/segment_000.m4s").via("an ordinary key")
@example(key="ünï/cödé ok.wav").via("unicode and a space")
def test_s3_keys_stay_under_the_prefix(s3, key):
    store, client, bucket, src = s3
    use_file = len(key) % 2 == 0  # both upload paths: put_file (managed transfer) and put_bytes

    def write(k: str) -> None:
        store.put_file(k, src) if use_file else store.put_bytes(k, b"payload")

    def landed() -> list[str]:
        keys = _bucket_keys(client, bucket)
        outside = [k for k in keys if not k.startswith("tenant/inner/") and k != "tenant/sentinel"]
        assert outside == [], f"{key!r} wrote outside the prefix: {outside}"
        return [k.removeprefix("tenant/inner/") for k in keys if k.startswith("tenant/inner/")]

    try:
        check(key, write, landed)
        if key in landed():  # the other operations find it where it was written
            assert store.get_bytes(key) == b"payload" and store.exists(key)
            store.move(key, "moved/x")
            assert landed() == ["moved/x"]
    finally:
        store.delete(store.list(""))
    assert client.get_object(Bucket=bucket, Key="tenant/sentinel")["Body"].read() == b"outside the prefix"


@pytest.mark.parametrize("key", NASTY)
def test_known_traversals_are_refused_by_every_s3_operation(s3, key, tmp_path):
    store, client, bucket, _ = s3
    before = _bucket_keys(client, bucket)
    assert_every_operation_refuses(store, key, tmp_path)
    assert _bucket_keys(client, bucket) == before


def test_the_traversal_oracle_is_not_blind():
    """`dangerous` is what the property tests hold accepted keys against: it must see every known attack."""
    assert all(dangerous(k) for k in NASTY)
    assert not any(dangerous(k) for k in ["a", "a/b/segment_000.m4s", "ünï/cödé ok.wav", "...", ".hidden/x"])
