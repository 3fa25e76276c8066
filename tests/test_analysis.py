"""The composite analysis (one decode -> waveform, loudness cross-check, fingerprint), its graceful degradation,
and publishing the waveform."""

from __future__ import annotations

import io
import json
import uuid
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from roadie.catalog import results
from roadie.settings import reload_settings
from tasks.media import analysis, loudness, loudness_meter
from tasks.media import waveform_builder as wf
from tasks.media.decode import decode
from tasks.media.ffmpeg import UnreadableMedia
from tests.support import encode, music_like, new_version, sine, write_wav

KEYS = {"input", "duration_s", "sample_rate", "channels", "codec", "loudness", "waveform", "fingerprint", "warnings"}


@pytest.mark.parametrize("channels", [1, 2])
@pytest.mark.parametrize("sr", [44100, 48000])
def test_everything_from_one_decode(tmp_path: Path, sr: int, channels: int):
    path = write_wav(tmp_path / "song.wav", music_like(12.0, sr, channels, seed=sr + channels), sr)
    result = analysis.analyze_file(path)
    obj = result.as_dict()
    assert set(obj) == KEYS and obj["warnings"] == []
    assert (obj["sample_rate"], obj["channels"], obj["duration_s"]) == (sr, channels, 12.0)
    loud = obj["loudness"]
    assert loud["agrees"] is True and abs(loud["delta_lu"]) <= 0.2
    assert loud["integrated_lufs"] == loud["ffmpeg"]["integrated_lufs"]  # the published values are ffmpeg's
    assert loud["integrated_lufs"] == loudness.measure_ffmpeg(path, channels).integrated_lufs
    assert obj["waveform"] == {
        "samples_per_pixel": sr // 20,
        "length": -(-12 * sr // (sr // 20)),
        "bits": 8,
        "channels": 1,
        "pixels_per_second": round(sr / (sr // 20), 3),
    }
    doc = json.loads(result.waveform_json)
    assert doc["bits"] == 8 and doc["length"] == obj["waveform"]["length"] and len(doc["data"]) == 2 * doc["length"]
    decoded = decode(path)
    expected = wf.compute(decoded.samples, sr, sr // 20, integer_pcm=True).to_json(8)
    assert result.waveform_json == expected
    assert Image.open(io.BytesIO(result.png)).size == analysis.PNG_SIZE
    fp = obj["fingerprint"]
    assert fp["item_count"] == len(fp["items"]) > 50 and fp["duration_s"] == 12.0
    assert dict(result.timings)["total_s"] > 0


def test_mono_tone_reads_as_dual_mono(tmp_path: Path):
    path = write_wav(tmp_path / "mono.wav", sine(1000, 12.0, 48000, dbfs=-23.0, channels=1), 48000)
    loud = analysis.analyze_file(path, png_size=None).as_dict()["loudness"]
    assert loud["integrated_lufs"] == pytest.approx(-23.0, abs=0.1)
    assert loud["pyloudnorm"]["integrated_lufs"] == pytest.approx(-23.0, abs=0.1)


def test_lossy_upload(tmp_path: Path):
    src = write_wav(tmp_path / "src.wav", music_like(10.0, 44100, 2, seed=8), 44100)
    result = analysis.analyze_file(encode(src, tmp_path / "song.mp3", "-b:a", "192k"))
    assert result.codec == "mp3" and result.duration_s == pytest.approx(10.0, abs=0.03)
    assert result.loudness.agrees and result.fingerprint is not None and result.warnings == ()


def test_silence_has_no_integrated_loudness_and_says_so(tmp_path: Path):
    path = write_wav(tmp_path / "silence.wav", np.zeros((44100 * 3, 2)), 44100)
    result = analysis.analyze_file(path)
    loud = result.as_dict()["loudness"]
    assert loud["integrated_lufs"] is None and loud["pyloudnorm"]["integrated_lufs"] is None
    assert any("no measurable loudness" in w for w in result.warnings)
    assert result.waveform is not None and set(json.loads(result.waveform_json)["data"]) == {0}


def test_unreadable_upload_raises(tmp_path: Path):
    (tmp_path / "junk.flac").write_bytes(np.random.default_rng(1).bytes(20_000))
    with pytest.raises(UnreadableMedia):
        analysis.analyze_file(tmp_path / "junk.flac")


# ---------------------------------------------------------------- graceful degradation


@pytest.fixture
def song(tmp_path: Path) -> Path:
    return write_wav(tmp_path / "song.wav", music_like(6.0, 44100, 2, seed=4), 44100)


def test_missing_fpcalc_is_a_warning(song: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("ROADIE_FPCALC_BINARY", "/nonexistent/fpcalc")
    reload_settings()
    try:
        result = analysis.analyze_file(song)
    finally:
        monkeypatch.delenv("ROADIE_FPCALC_BINARY")
        reload_settings()
    assert result.fingerprint is None and result.as_dict()["fingerprint"] is None
    assert any(w.startswith("fingerprint unavailable: fpcalc not found") for w in result.warnings)
    assert result.loudness is not None and result.waveform is not None and result.png is not None


class _BrokenStep:
    """A step that fails on its first chunk, as a meter out of memory or a drawing bug would."""

    error: BaseException

    def __init__(self, *args, **kwargs):
        pass

    def feed(self, chunk):
        raise self.error


def test_failing_numpy_meter_keeps_ffmpeg_values(song: Path, monkeypatch: pytest.MonkeyPatch):
    broken = type("BrokenMeter", (_BrokenStep,), {"error": MemoryError("no room for the meter")})
    monkeypatch.setattr(loudness_meter, "LoudnessMeter", broken)
    result = analysis.analyze_file(song)
    assert result.loudness.integrated_lufs is not None and result.loudness.pyloudnorm.integrated_lufs is None
    assert not result.loudness.agrees
    assert any("cross-check unavailable (MemoryError: no room for the meter)" in w for w in result.warnings)
    assert result.fingerprint is not None


def test_failing_waveform_is_a_warning(song: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(
        wf, "WaveformBuilder", type("BrokenBuilder", (_BrokenStep,), {"error": ValueError("cannot draw")})
    )
    result = analysis.analyze_file(song)
    assert result.waveform is None and result.png is None and result.waveform_json is None
    assert "waveform unavailable: ValueError: cannot draw" in result.warnings
    assert result.loudness is not None and result.fingerprint is not None


# ---------------------------------------------------------------- publishing the waveform


def test_save_waveform_publishes_and_reruns_in_place(roadie_env, pg: Session, song: Path):
    from roadie.db.models import Asset, Waveform
    from roadie.storage import STAGING_ROOT, get_storage

    storage = get_storage()
    version_id = new_version(pg).id
    result = analysis.analyze_file(song)
    keys = results.save_waveform(pg, storage, str(version_id), result)
    assert keys.as_dict() == {
        "json_key": f"{version_id}/waveform/waveform.json",
        "png_key": f"{version_id}/waveform/waveform.png",
    }
    assert storage.get_bytes(keys.json_key).decode() == result.waveform_json
    assert storage.get_bytes(keys.png_key) == result.png
    row = pg.scalar(select(Waveform).where(Waveform.track_version_id == version_id))
    json_asset = pg.get(Asset, row.json_asset_id)
    assert (json_asset.key, json_asset.content_type, json_asset.size_bytes) == (
        keys.json_key,
        "application/json",
        len(result.waveform_json),
    )
    assert pg.get(Asset, row.png_asset_id).key == keys.png_key

    again = results.save_waveform(pg, storage, str(version_id), analysis.analyze_file(song, png_size=None))
    assert again.png_key is None and again.json_asset_id == keys.json_asset_id
    assert pg.scalar(select(func.count()).select_from(Waveform).where(Waveform.track_version_id == version_id)) == 1
    pg.refresh(row)
    assert row.png_asset_id is None
    assert storage.list(f"{version_id}/waveform") == [keys.json_key]  # the stale PNG went with the rerun
    assert not storage.list(STAGING_ROOT)


def test_save_waveform_needs_a_waveform_and_a_version(roadie_env, pg: Session, song: Path, monkeypatch):
    from roadie.errors import InvalidInput
    from roadie.storage import get_storage

    with pytest.raises(InvalidInput):
        results.save_waveform(pg, get_storage(), str(uuid.uuid4()), analysis.analyze_file(song, png_size=None))
    monkeypatch.setattr(wf, "WaveformBuilder", type("BrokenBuilder", (_BrokenStep,), {"error": ValueError("x")}))
    with pytest.raises(InvalidInput, match="no waveform"):
        results.save_waveform(pg, get_storage(), str(new_version(pg).id), analysis.analyze_file(song))


def test_task_wrappers_publish_through_their_own_transaction(roadie_env, song: Path, tmp_path: Path):
    """The Prefect tasks' bodies (called without an engine): a committed waveforms row and a track with artwork."""
    from roadie.db.models import Track, TrackVersion, Waveform
    from roadie.db.session import session_scope
    from roadie.storage import get_storage
    from tasks.media import tasks as media_tasks

    with session_scope() as session:
        version_id = str(new_version(session).id)
    result = media_tasks.analyze_audio.fn(song)
    keys = media_tasks.publish_waveform.fn(version_id, result)
    art = media_tasks.extract_artwork.fn(song, tmp_path)
    cover = media_tasks.publish_artwork.fn(version_id, art)
    assert not cover.embedded and get_storage().exists(cover.thumbnail_key)
    with session_scope() as session:
        version = session.get(TrackVersion, uuid.UUID(version_id))
        assert session.scalar(select(Waveform.json_asset_id).where(Waveform.track_version_id == version.id))
        assert str(session.get(Track, version.track_id).artwork_thumb_asset_id) == cover.thumbnail_asset_id
    assert get_storage().get_bytes(keys.json_key).decode() == result.waveform_json


def test_failing_ffmpeg_meter_means_no_loudness(song: Path, monkeypatch: pytest.MonkeyPatch):
    from tasks.media import ffmpeg

    real = ffmpeg.build_measure_pcm_cmd
    monkeypatch.setattr(
        ffmpeg, "build_measure_pcm_cmd", lambda *a, **k: [x if x != "-af" else "-bogus_option" for x in real(*a, **k)]
    )
    result = analysis.analyze_file(song)
    assert result.loudness is None and result.as_dict()["loudness"] is None
    assert any(w.startswith("loudness unavailable: ffmpeg ebur128 failed: ") for w in result.warnings)
    assert result.waveform is not None and result.fingerprint is not None
