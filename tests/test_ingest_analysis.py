"""The analysis inside media-ingest and the four reprocessing flows, on real PostgreSQL, S3, ffmpeg, fpcalc and
a real Prefect server: what a playable version carries, what degrades to a warning, and duplicates at upload."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import numpy as np
import pyloudnorm
import pytest
import soundfile
from sqlalchemy import func, select

from roadie.catalog.registration import register_upload
from roadie.db.models import AudioFingerprint, Report, Track, TrackVersion, Waveform
from roadie.db.session import session_scope
from roadie.settings import reload_settings
from roadie.storage import get_storage
from tests.support import encode, music_like, write_wav

pytestmark = pytest.mark.parametrize("roadie_env", ["s3"], indirect=True)

SECONDS = 12.0
LOUDNESS_TOLERANCE_LU = 0.2  # the agreement bound between ffmpeg and an independent meter


def song(tmp_path: Path, sr: int, channels: int, seed: int, name: str = "song") -> Path:
    return write_wav(tmp_path / f"{name}.wav", music_like(SECONDS, sr, channels, seed=seed), sr)


def ingest(path: Path, owner: str = "artist-a", formats: list[str] | None = None):
    from flows.ingest import media_ingest

    reg = register_upload(path, title=path.stem, owner=owner)
    state = media_ingest(reg.version_id, formats or ["hls_opus", "hls_aac"], return_state=True)
    return reg, state.result(raise_on_failure=False), state.state_details.flow_run_id


def task_runs(flow_run_id) -> dict[str, object]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    return {run.name.rsplit("-", 1)[0] if run.name.startswith("analyze") else run.name: run for run in runs}


def artifact_keys(flow_run_id) -> set[str]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )
    return {a.key for a in found if a.key}


@pytest.mark.parametrize("sr,channels", [(44100, 1), (48000, 2)])
def test_ready_version_carries_waveform_loudness_artwork_fingerprint(roadie_env, prefect_api, tmp_path, sr, channels):
    src = song(tmp_path, sr, channels, seed=100 + channels)
    reg, result, run_id = ingest(src)
    storage = get_storage()
    assert result["status"] == "ready" and result["warnings"] == [], result

    # Waveform: 8-bit at 20 px/s over the whole track, and a PNG.
    wave = json.loads(storage.get_bytes(result["waveform"]["json_key"]))
    assert wave["bits"] == 8 and wave["sample_rate"] == sr and wave["samples_per_pixel"] == sr // 20
    assert wave["length"] == -(-int(SECONDS * sr) // (sr // 20))
    assert storage.get_bytes(result["waveform"]["png_key"]).startswith(b"\x89PNG")

    # Loudness: ffmpeg's figures stored, and an independent pyloudnorm reading agrees with them.
    data, rate = soundfile.read(src, dtype="float64")
    reference = pyloudnorm.Meter(rate).integrated_loudness(data if channels > 1 else np.column_stack([data, data]))
    loud = result["loudness"]
    assert abs(loud["integrated_lufs"] - reference) <= LOUDNESS_TOLERANCE_LU, (loud, reference)
    assert loud["agrees"] and loud["ffmpeg"]["integrated_lufs"] == loud["integrated_lufs"]

    # Artwork: no embedded cover, so the default, with the track pointing at it.
    assert result["artwork"]["embedded"] is False
    assert storage.exists(result["artwork"]["full_key"]) and storage.exists(result["artwork"]["thumbnail_key"])

    with session_scope() as session:
        version = session.get(TrackVersion, uuid.UUID(reg.version_id))
        assert version.loudness_lufs == loud["integrated_lufs"] and version.true_peak == loud["true_peak_dbtp"]
        assert (
            session.scalar(select(func.count()).select_from(Waveform).where(Waveform.track_version_id == version.id))
            == 1
        )
        assert session.get(Track, version.track_id).artwork_asset_id is not None
        fp = session.scalar(select(AudioFingerprint).where(AudioFingerprint.track_version_id == version.id))
        assert fp is not None and fp.chromaprint_data

    timings = result["timings"]
    assert 0 < timings["playable_s"] <= timings["total_s"]
    # The analysis ran beside the primary encode, not after it.
    runs = task_runs(run_id)
    analyze, primary = runs["analyze_audio"], runs["transcode-hls_opus"]
    assert analyze.start_time < primary.end_time and primary.start_time < analyze.end_time
    assert {f"waveform-{reg.version_id}", f"loudness-{reg.version_id}"} <= artifact_keys(run_id)


def test_missing_fpcalc_leaves_the_version_ready_with_a_warning(roadie_env, prefect_api, tmp_path, monkeypatch):
    monkeypatch.setenv("ROADIE_FPCALC_BINARY", str(tmp_path / "no-such-fpcalc"))
    reload_settings()
    reg, result, _ = ingest(song(tmp_path, 44100, 2, seed=201))
    assert result["status"] == "ready"
    assert any("fingerprint unavailable" in w and "fpcalc not found" in w for w in result["warnings"]), result
    assert result["waveform"]["json_key"] and result["loudness"]["integrated_lufs"] is not None
    with session_scope() as session:
        version = session.get(TrackVersion, uuid.UUID(reg.version_id))
        assert version.status == "ready" and version.warnings == result["warnings"]
        assert session.scalar(select(AudioFingerprint).where(AudioFingerprint.track_version_id == version.id)) is None


def test_broken_cover_art_leaves_the_version_ready_with_the_default(roadie_env, prefect_api, tmp_path):
    from tests.test_artwork import corrupted

    _reg, result, _ = ingest(corrupted(tmp_path, "truncated"), formats=["hls_opus"])
    assert result["status"] == "ready"
    assert result["artwork"]["embedded"] is False
    assert any(w.startswith("cover art ignored, default used") for w in result["warnings"]), result


def test_reencoded_copy_is_reported_and_unrelated_audio_is_not(roadie_env, prefect_api, tmp_path):
    original = song(tmp_path, 48000, 2, seed=777, name="original")
    first, result, _ = ingest(original, owner="artist-a", formats=["hls_opus"])
    assert result["duplicates"] == []

    copy = encode(original, tmp_path / "copy.mp3", "-ar", "44100", "-b:a", "128k", "-af", "volume=-4dB")
    second, result, _ = ingest(copy, owner="someone-else", formats=["hls_opus"])
    assert result["status"] == "ready"
    assert [d["version_id"] for d in result["duplicates"]] == [first.version_id]
    assert result["duplicates"][0]["score"] >= 0.5
    with session_scope() as session:
        report = session.scalar(select(Report).where(Report.target_id == uuid.UUID(second.version_id)))
        assert report.reason == "duplicate" and first.version_id in report.description

    unrelated = song(tmp_path, 48000, 2, seed=31337, name="unrelated")
    _third, result, _ = ingest(unrelated, owner="someone-else", formats=["hls_opus"])
    assert result["duplicates"] == [] and result["duplicate_reports"] == []


def test_reprocessing_flows_replace_and_never_add(roadie_env, prefect_api, tmp_path, monkeypatch):
    from flows.artwork import artwork_extract
    from flows.fingerprint import fingerprint
    from flows.loudness import loudness
    from flows.waveform import waveform

    reg, result, _ = ingest(song(tmp_path, 44100, 2, seed=401), formats=["hls_opus"])
    vid = reg.version_id
    storage = get_storage()

    redrawn = waveform(vid)
    assert redrawn["json_key"] == result["waveform"]["json_key"]
    assert storage.get_bytes(redrawn["json_key"]) == storage.get_bytes(result["waveform"]["json_key"])
    assert loudness(vid)["integrated_lufs"] == result["loudness"]["integrated_lufs"]
    assert fingerprint(vid)["items"] > 0
    assert artwork_extract(vid)["full_key"] == result["artwork"]["full_key"]
    with session_scope() as session:
        version = session.get(TrackVersion, uuid.UUID(vid))
        assert version.status == "ready" and version.warnings == []
        for table in (Waveform, AudioFingerprint):
            assert (
                session.scalar(select(func.count()).select_from(table).where(table.track_version_id == version.id)) == 1
            )

    # Run alone, a step that cannot work fails the run and says why; the version is left as it was.
    monkeypatch.setenv("ROADIE_FPCALC_BINARY", str(tmp_path / "no-such-fpcalc"))
    reload_settings()
    state = fingerprint(vid, return_state=True)
    assert state.is_failed()
    with pytest.raises(Exception, match="fpcalc not found"):
        state.result()
    with session_scope() as session:
        assert session.get(TrackVersion, uuid.UUID(vid)).status == "ready"
