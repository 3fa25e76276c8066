"""The upload pipeline on real PostgreSQL, a real S3 server (and the local folder), real ffmpeg and Prefect."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import func, select

from roadie.catalog.registration import register_upload
from roadie.db.models import TrackVersion, Transcode
from roadie.db.session import session_scope
from roadie.storage import get_storage
from tasks.media.ffmpeg import ffmpeg_binary, ffprobe_binary
from tasks.media.hls import parse_master_playlist, parse_media_playlist
from tests.support import encode, music_like, write_wav

SECONDS = 14.5  # two full 6 s segments and a partial one
CODEC_NAMES = {"hls_opus": "opus", "hls_aac": "aac", "hls_alac": "alac"}


def make_input(tmp_path: Path, container: str, sr: int, channels: int, name: str = "take") -> tuple[Path, float]:
    wav = write_wav(tmp_path / f"{name}-src.wav", music_like(SECONDS, sr, channels, seed=sr + channels), sr)
    if container == "wav":
        return wav.rename(tmp_path / f"{name}.wav"), SECONDS
    if container == "flac":
        return encode(wav, tmp_path / f"{name}.flac"), SECONDS
    return encode(wav, tmp_path / f"{name}.mp3", "-b:a", "192k"), SECONDS


def run_ingest(version_id: str, formats: list[str]) -> dict:
    from flows.ingest import media_ingest

    return media_ingest(version_id, formats)


def decoded_codec(storage, init_key: str, segment_keys: list[str], tmp_path: Path, fmt: str) -> tuple[str, float]:
    """Concatenate init + segments as a player would and let ffprobe say what it holds."""
    joined = tmp_path / f"{fmt}-joined.mp4"
    with joined.open("wb") as out:
        for key in [init_key, *segment_keys]:
            out.write(storage.get_bytes(key))
    probe = subprocess.run(
        [
            ffprobe_binary(),
            "-v",
            "error",
            "-show_entries",
            "stream=codec_name:format=duration",
            "-of",
            "json",
            str(joined),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    data = json.loads(probe.stdout)
    decode = subprocess.run(
        [ffmpeg_binary(), "-v", "error", "-i", str(joined), "-f", "null", "-"], capture_output=True, text=True
    )
    assert decode.returncode == 0 and not decode.stderr.strip(), decode.stderr
    return data["streams"][0]["codec_name"], float(data["format"]["duration"])


@pytest.mark.parametrize("roadie_env", ["s3"], indirect=True)
@pytest.mark.parametrize("container", ["wav", "flac", "mp3"])
@pytest.mark.parametrize("sr,channels", [(44100, 1), (48000, 2), (44100, 2), (48000, 1)])
def test_ingest_makes_hls_renditions(roadie_env, prefect_api, tmp_path, container, sr, channels):
    src, seconds = make_input(tmp_path, container, sr, channels)
    reg = register_upload(src, title="Take", owner="artist-a", lossless=True)
    formats = ["hls_opus", "hls_aac", "hls_alac"] if container == "flac" else ["hls_opus", "hls_aac"]
    result = run_ingest(reg.version_id, formats)
    storage = get_storage()

    assert result["status"] == "ready" and result["error"] is None
    assert set(result["transcodes"]) == set(formats)
    for fmt in formats:
        t = result["transcodes"][fmt]
        assert t["status"] == "ready"
        playlist = parse_media_playlist(storage.get_bytes(t["playlist_key"]).decode())
        durations = [d for d, _ in playlist.segments]
        # Segments cut on codec frame boundaries: ALAC's 4096-sample frames at 44.1 kHz are 93 ms long.
        assert all(abs(d - 6.0) < 0.1 for d in durations[:-1]), durations
        assert 0 < durations[-1] <= 6.0
        assert abs(sum(durations) - seconds) <= 0.1, (fmt, sum(durations))
        assert [f"{reg.version_id}/{fmt}/segment_{i:03d}.m4s" for i in range(len(durations))] == t["segment_keys"]
        codec, _ = decoded_codec(storage, t["init_key"], t["segment_keys"], tmp_path, fmt)
        assert codec == CODEC_NAMES[fmt]

    variants = parse_master_playlist(storage.get_bytes(result["master_key"]).decode())
    assert [v["uri"] for v in variants] == [f"{fmt}/playlist.m3u8" for fmt in formats]
    assert [v["CODECS"] for v in variants] == [
        {"hls_opus": "opus", "hls_aac": "mp4a.40.2", "hls_alac": "alac"}[f] for f in formats
    ]
    assert all(int(v["BANDWIDTH"]) > 0 for v in variants)
    assert storage.list("_staging") == []
    assert list(Path(os.environ["ROADIE_TMP_DIR"]).iterdir()) == []


@pytest.mark.parametrize("roadie_env", ["file"], indirect=True)
def test_ingest_on_local_folder(roadie_env, prefect_api, tmp_path):
    src, _ = make_input(tmp_path, "wav", 48000, 2)
    reg = register_upload(src)
    result = run_ingest(reg.version_id, ["hls_opus"])
    assert result["status"] == "ready"
    assert result["storage_url"].startswith("file://")
    root = Path(result["storage_url"].removeprefix("file://"))
    assert (root / result["master_key"]).is_file()
    assert (root / result["transcodes"]["hls_opus"]["init_key"]).is_file()


def truncated_flac(tmp_path: Path) -> Path:
    good, _ = make_input(tmp_path, "flac", 44100, 2, name="whole")
    data = good.read_bytes()
    bad = tmp_path / "cut.flac"
    bad.write_bytes(data[: len(data) * 6 // 10])
    return bad


BAD_INPUTS = {
    "empty.wav": lambda p: p.write_bytes(b""),
    "noise.wav": lambda p: p.write_bytes(os.urandom(50_000)),
    "letter.mp3": lambda p: p.write_text("Dear artist, this is not audio.\n" * 200),
}


@pytest.mark.parametrize("roadie_env", ["s3"], indirect=True)
@pytest.mark.parametrize("kind", [*BAD_INPUTS, "truncated.flac"])
def test_bad_input_fails_cleanly(roadie_env, prefect_api, tmp_path, kind):
    if kind == "truncated.flac":
        src = truncated_flac(tmp_path)
    else:
        src = tmp_path / kind
        BAD_INPUTS[kind](src)
    reg = register_upload(src)
    with pytest.raises(Exception):
        run_ingest(reg.version_id, ["hls_opus", "hls_aac"])
    with session_scope() as session:
        version = session.get(TrackVersion, __import__("uuid").UUID(reg.version_id))
        assert version.status == "failed"
        assert version.error and len(version.error) > 10
        rows = session.scalars(select(Transcode).where(Transcode.track_version_id == version.id)).all()
        assert all(t.status == "failed" for t in rows)
    storage = get_storage()
    assert storage.list(reg.version_id) == []
    assert storage.list("_staging") == []
    assert storage.exists(reg.asset_key)  # the original is kept: nothing is lost
    assert list(Path(os.environ["ROADIE_TMP_DIR"]).iterdir()) == []


def test_truncated_flac_names_the_problem(roadie_env, prefect_api, tmp_path):
    reg = register_upload(truncated_flac(tmp_path))
    with pytest.raises(Exception):
        run_ingest(reg.version_id, ["hls_opus"])
    with session_scope() as session:
        error = session.get(TrackVersion, __import__("uuid").UUID(reg.version_id)).error
    assert "truncated" in error or "damaged" in error or "invalid" in error.lower(), error


@pytest.mark.parametrize("roadie_env", ["s3"], indirect=True)
def test_same_upload_twice_and_rerun_are_safe(roadie_env, prefect_api, tmp_path):
    src, _ = make_input(tmp_path, "wav", 44100, 2)
    first, second = register_upload(src), register_upload(src)
    assert first.version_id != second.version_id
    run_ingest(first.version_id, ["hls_opus", "hls_aac"])
    run_ingest(second.version_id, ["hls_opus", "hls_aac"])
    again = run_ingest(first.version_id, ["hls_opus", "hls_aac"])  # a re-run of the same version
    assert again["status"] == "ready"
    with session_scope() as session:
        counts = session.execute(
            select(Transcode.track_version_id, func.count())
            .group_by(Transcode.track_version_id)
            .where(
                Transcode.track_version_id.in_(
                    [__import__("uuid").UUID(first.version_id), __import__("uuid").UUID(second.version_id)]
                )
            )
        ).all()
    assert sorted(n for _, n in counts) == [2, 2]
    storage = get_storage()
    segs = [k for k in storage.list(first.version_id) if k.endswith(".m4s")]
    assert len(segs) == 2 * 3  # a rerun replaces the outputs, it does not pile up


HOSTILE_NAMES = [
    "$(touch PWNED).wav",
    "a;b; rm -rf x.wav",
    "my song 'final' \"v2\".wav",
    "Sigur Rós – Hoppípolla ☃.wav",
    "-rf.wav",
    "concat:x|y.wav",
]


@pytest.mark.parametrize("roadie_env", ["s3"], indirect=True)
def test_cli_json_contract_and_hostile_names(roadie_env, prefect_api, tmp_path):
    """The real `roadie ingest --json`: good audio under hostile names is ready; bad input exits 1."""
    good, _ = make_input(tmp_path, "wav", 44100, 1)
    inputs = []
    for name in HOSTILE_NAMES:
        path = tmp_path / name
        path.write_bytes(good.read_bytes())
        inputs.append(path)
    bad = tmp_path / "$(touch PWNED2) bad.mp3"
    bad.write_text("not audio")
    env = {**os.environ}
    proc = subprocess.run(
        [sys.executable, "-m", "roadie", "ingest", "--json", "--formats", "hls_opus", *map(str, inputs), str(bad)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=600,
    )
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert proc.returncode == 1, proc.stderr
    assert [r["input"] for r in lines] == [str(p) for p in [*inputs, bad]]
    for r in lines[:-1]:
        assert r["status"] == "ready", r
        assert r["storage_url"].startswith("s3://")
        assert r["master_key"] == f"{r['version_id']}/master.m3u8"
        t = r["transcodes"]["hls_opus"]
        assert t["status"] == "ready" and t["segment_keys"] and abs(t["duration_s"] - SECONDS) < 0.1
        assert r["warnings"] == [] and r["error"] is None
    assert lines[-1]["status"] == "failed" and lines[-1]["error"]
    assert not list(tmp_path.rglob("PWNED*"))
