"""Storage on the local folder and on a real S3 server: key validation and staged publishing."""

from __future__ import annotations

import uuid

import pytest

from roadie.errors import StorageKeyError
from roadie.settings import reload_settings
from roadie.storage import LocalStorage, delete_prefix, safe_filename, staged, storage_from_url, validate_key


@pytest.fixture(params=["file", "s3"])
def storage(request, tmp_path, monkeypatch):
    if request.param == "file":
        yield LocalStorage(tmp_path / "root")
        return
    endpoint = request.getfixturevalue("s3_server")
    monkeypatch.setenv("ROADIE_S3_ENDPOINT_URL", endpoint)
    monkeypatch.setenv("ROADIE_S3_ACCESS_KEY", "k")
    monkeypatch.setenv("ROADIE_S3_SECRET_KEY", "s")
    settings = reload_settings()
    yield storage_from_url(f"s3://roadie/st-{uuid.uuid4().hex[:8]}", settings)
    reload_settings()


@pytest.mark.parametrize(
    "key",
    [
        "../etc/passwd",
        "a/../../b",
        "/abs/key",
        "a//b",
        "a/./b",
        "tab\there",
        "nul\x00",
        "new\nline",
        "",
        "..",
        "C:/x",
        "back\\slash",
        "x" * 1100,
    ],
)
def test_bad_keys_are_refused(key):
    with pytest.raises(StorageKeyError):
        validate_key(key)


@pytest.mark.parametrize("key", ["a", "originals/123/song.wav", "v/hls_opus/segment_000.m4s", "ünï/cödé ok.wav"])
def test_good_keys_pass(key):
    assert validate_key(key) == key


@pytest.mark.parametrize(
    "name,expected",
    [
        ("$(touch x).wav", "touch_x.wav"),
        ("../../etc/passwd", "passwd"),
        ("a;b c.MP3", "a_b_c.mp3"),
        ("Sigur Rós.flac", "Sigur_R_s.flac"),
        ("...", "upload"),
        ("noext", "noext"),
        ("C:\\dir\\x.wav", "x.wav"),
    ],
)
def test_safe_filename(name, expected):
    assert safe_filename(name) == expected
    validate_key(safe_filename(name))


def test_roundtrip_list_delete(storage, tmp_path):
    src = tmp_path / "in.bin"
    src.write_bytes(b"abc" * 1000)
    storage.put_file("x/y/in.bin", src)
    storage.put_bytes("x/z.txt", b"hello")
    assert storage.list("x") == ["x/y/in.bin", "x/z.txt"]
    assert storage.size("x/y/in.bin") == 3000 and storage.get_bytes("x/z.txt") == b"hello"
    storage.download("x/y/in.bin", tmp_path / "out.bin")
    assert (tmp_path / "out.bin").read_bytes() == src.read_bytes()
    assert delete_prefix(storage, "x") == 2
    assert storage.list("x") == [] and not storage.exists("x/z.txt")
    with pytest.raises(FileNotFoundError):
        storage.download("x/z.txt", tmp_path / "gone")


def test_staged_publish_is_all_or_nothing(storage, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    for name in ("init.mp4", "segment_000.m4s", "playlist.m3u8"):
        (out / name).write_bytes(name.encode())
    with staged(storage, "v1/hls_opus") as stage:
        stage.put_dir(out)
        assert storage.list("v1") == []  # nothing visible before promotion
        assert stage.promote() == ["v1/hls_opus/init.mp4", "v1/hls_opus/playlist.m3u8", "v1/hls_opus/segment_000.m4s"]
    assert storage.list("_staging") == []

    with pytest.raises(RuntimeError), staged(storage, "v2/hls_opus") as stage:
        stage.put_dir(out)
        raise RuntimeError("encoder died")
    assert storage.list("v2") == [] and storage.list("_staging") == []


def test_promote_replaces_stale_objects(storage):
    with staged(storage, "v/fmt") as stage:
        for i in range(3):
            stage.put_bytes(f"segment_{i:03d}.m4s", b"old")
        stage.promote()
    with staged(storage, "v/fmt") as stage:
        stage.put_bytes("segment_000.m4s", b"new")
        stage.promote()
    assert storage.list("v/fmt") == ["v/fmt/segment_000.m4s"]
    assert storage.get_bytes("v/fmt/segment_000.m4s") == b"new"


def test_local_storage_cannot_escape_root(tmp_path):
    store = LocalStorage(tmp_path / "root")
    (tmp_path / "root" / "link").symlink_to(tmp_path)
    with pytest.raises(StorageKeyError):
        store.put_bytes("link/escaped.txt", b"x")
    assert not (tmp_path / "escaped.txt").exists()
