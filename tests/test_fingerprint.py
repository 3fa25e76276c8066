"""Fingerprints and duplicates: real fpcalc on generated music-like audio and its re-encodes, real PostgreSQL.

Pure tones fingerprint alike, so every signal is notes with harmonics over a beat (tests/support.py).
"""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from roadie.catalog import results
from tasks.media import duplicates
from tasks.media import fingerprint as fpm
from tasks.media import fingerprint_match as fpmatch
from tasks.media.fingerprint import FpcalcFailed, FpcalcNotFound
from tasks.media.fingerprint_match import match_score
from tests.support import encode, music_like, write_wav

SECONDS = 35
COMBOS = [(44100, 1), (44100, 2), (48000, 1), (48000, 2)]


def decode(path: Path, sr: int) -> np.ndarray:
    """The copy as float PCM, as the analysis would see it (one decode)."""
    from tasks.media.ffmpeg import build_decode_cmd

    raw = subprocess.run(build_decode_cmd(path, sample_rate=sr, channels=2), capture_output=True, check=True).stdout
    return np.frombuffer(raw, dtype="<f4").reshape(-1, 2)


@pytest.fixture(scope="module", params=COMBOS, ids=[f"{sr}Hz-{ch}ch" for sr, ch in COMBOS])
def audio(request, tmp_path_factory) -> dict[str, object]:
    sr, channels = request.param
    d = tmp_path_factory.mktemp(f"fp-{sr}-{channels}")
    original = write_wav(d / "original.wav", music_like(SECONDS, sr, channels=channels, seed=7), sr)
    other_rate = 48000 if sr == 44100 else 44100
    files = {
        "original": original,
        "mp3": encode(original, d / "copy.mp3", "-c:a", "libmp3lame", "-b:a", "128k"),
        # Trimmed by 7.3 s (not a whole number of fingerprint items) and 4 dB quieter.
        "aac trimmed -4 dB": encode(
            original, d / "copy.m4a", "-ss", "7.3", "-af", "volume=-4dB", "-c:a", "aac", "-b:a", "128k"
        ),
        "resampled": encode(original, d / "resampled.wav", "-ar", str(other_rate)),
        "opus cut short": encode(original, d / "short.opus", "-t", str(SECONDS - 9), "-c:a", "libopus", "-b:a", "64k"),
        "unrelated": write_wav(d / "unrelated.wav", music_like(SECONDS, sr, channels=channels, seed=8), sr),
    }
    return {
        "sr": sr,
        "channels": channels,
        "files": files,
        "fingerprints": {name: fpm.fingerprint_file(path) for name, path in files.items()},
    }


@pytest.mark.parametrize("copy", ["mp3", "aac trimmed -4 dB", "resampled", "opus cut short"])
def test_copies_are_flagged(audio, copy: str) -> None:
    prints = audio["fingerprints"]
    match = match_score(prints[copy], prints["original"])
    assert match.score >= fpmatch.DUPLICATE_THRESHOLD + 0.3, match
    assert match.ber < 0.1
    if copy == "aac trimmed -4 dB":
        assert match.offset_s == pytest.approx(7.3, abs=fpm.ITEM_SECONDS)
    else:
        assert match.offset == 0
    # The index would put the original among the copy's candidates.
    shared = set(fpmatch.index_keys(prints[copy])) & set(fpmatch.index_keys(prints["original"]))
    assert len(shared) >= 5 * fpmatch.MIN_INDEX_HITS


def test_unrelated_audio_is_never_flagged(audio) -> None:
    prints = audio["fingerprints"]
    for name in ("original", "mp3", "aac trimmed -4 dB", "resampled"):
        match = match_score(prints["unrelated"], prints[name])
        assert match.score < fpmatch.DUPLICATE_THRESHOLD - 0.2, (name, match)
        assert match.ber > 0.3


def test_unrelated_seeds_stay_far_below_the_threshold() -> None:
    sr = 44100
    base = fpm.fingerprint_pcm(music_like(SECONDS, sr, seed=7), sr)
    scores = [
        match_score(fpm.fingerprint_pcm(music_like(SECONDS, sr, seed=seed), sr), base).score for seed in range(20, 28)
    ]
    assert max(scores) < fpmatch.DUPLICATE_THRESHOLD - 0.2, scores


def test_pcm_and_file_fingerprints_agree(audio) -> None:
    sr = audio["sr"]
    for name in ("original", "aac trimmed -4 dB"):
        from_pcm = fpm.fingerprint_pcm(decode(audio["files"][name], sr), sr)
        from_file = audio["fingerprints"][name]
        assert abs(len(from_pcm.items) - len(from_file.items)) <= 1
        assert match_score(from_pcm, from_file).ber < 0.02
    from_pcm = fpm.fingerprint_pcm(decode(audio["files"]["original"], sr), sr)
    assert from_pcm.duration_s == pytest.approx(SECONDS, abs=0.01)


@pytest.mark.parametrize("chunk_frames", [1, 4799, 48000])
@pytest.mark.parametrize("sr,channels", [(44100, 1), (44100, 2), (48000, 2), (96000, 2)])
def test_streamed_fingerprint_is_identical_to_the_whole_signal(sr: int, channels: int, chunk_frames: int) -> None:
    """fpcalc fed the PCM chunk by chunk (its first 120 s; the rest only counted) prints exactly the fingerprint
    of the whole signal at once."""
    seconds = 8 if chunk_frames == 1 else 125  # past the 120 s fpcalc reads, so the cut-off is exercised
    x = music_like(seconds, sr, channels=channels, seed=3).astype(np.float32)
    # The reference: fpcalc given its 120 s of mono s16 in one write, as a plain subprocess call.
    cmd = [
        fpm.fpcalc_binary(),
        "-raw",
        "-json",
        "-length",
        str(fpm.FINGERPRINT_SECONDS),
        "-format",
        "s16le",
        "-rate",
        str(sr),
        "-channels",
        "1",
        "-",
    ]
    out = subprocess.run(cmd, input=fpm.pcm_to_s16_mono(x[: fpm.FINGERPRINT_SECONDS * sr]), capture_output=True)
    whole = fpm.parse_fpcalc_json(out.stdout.decode(), out.returncode, out.stderr.decode())
    if chunk_frames == 1:
        chunks = (x[i : i + 1] for i in range(len(x)))
    else:
        chunks = (x[i : i + chunk_frames] for i in range(0, len(x), chunk_frames))
    streamed = fpm.fingerprint_chunks(chunks, sr)
    assert streamed.items == whole.items and len(whole.items) >= 6 * seconds // 2
    assert streamed.duration_s == pytest.approx(seconds)


# ---------------------------------------------------------------- BER against a plain reference


def reference_ber(a: list[int], b: list[int], offset: int) -> tuple[float, int]:
    """Bit by bit in pure Python: a[i] against b[i + offset]."""
    pairs = [(a[i], b[i + offset]) for i in range(len(a)) if 0 <= i + offset < len(b)]
    bits = sum(bin(x ^ y).count("1") for x, y in pairs)
    return bits / (32 * len(pairs)), len(pairs)


def test_match_score_against_reference() -> None:
    rng = np.random.default_rng(1)
    a = rng.integers(0, 2**32, 300, dtype=np.uint64).astype(np.uint32)
    flips = (rng.random((300, 32)) < 0.05) @ (1 << np.arange(32, dtype=np.uint64))
    shift = 17
    b = np.concatenate([rng.integers(0, 2**32, shift, dtype=np.uint64).astype(np.uint32), a ^ flips.astype(np.uint32)])[
        :280
    ]
    match = match_score(a, b)
    assert match.offset == shift
    expected_ber, expected_overlap = reference_ber(a.tolist(), b.tolist(), shift)
    assert match.overlap == expected_overlap
    assert match.ber == pytest.approx(expected_ber, abs=1e-12)  # exact counts, only float division differs
    assert match.ber == pytest.approx(0.05, abs=0.01)
    assert match.score == pytest.approx(expected_overlap / 280 * (1 - 2 * expected_ber), abs=1e-12)
    # Every other offset in range is worse, as the reference says.
    for offset in range(-fpmatch.MAX_OFFSET_ITEMS, fpmatch.MAX_OFFSET_ITEMS + 1):
        ber, overlap = reference_ber(a.tolist(), b.tolist(), offset)
        assert overlap / 280 * (1 - 2 * ber) <= match.score + 1e-12


def test_far_offsets_come_from_the_histogram() -> None:
    rng = np.random.default_rng(2)
    long = rng.integers(0, 2**32, 900, dtype=np.uint64).astype(np.uint32)
    excerpt = long[400:600]  # 50 s into the track: far beyond the +-10 s searched exhaustively
    match = match_score(excerpt, long)
    assert (match.offset, match.ber, match.score) == (400, 0.0, 1.0)


# ---------------------------------------------------------------- fpcalc's edges


def test_fpcalc_exit_code_3_at_end_of_file_is_accepted(tmp_path: Path) -> None:
    wav = encode(write_wav(tmp_path / "in.flac", music_like(10, 44100, seed=3), 44100), tmp_path / "ffmpeg.wav")
    raw = subprocess.run([fpm.fpcalc_binary(), "-raw", "-json", str(wav)], capture_output=True)
    assert raw.returncode == 3 and b"End of file" in raw.stderr  # the quirk is real on this machine
    fp = fpm.fingerprint_file(wav)
    assert len(fp.items) > 50 and fp.warnings == ()
    assert fp.duration_s == pytest.approx(10.0, abs=0.05)


def test_fpcalc_errors_are_typed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from roadie.settings import reload_settings

    with pytest.raises(FpcalcNotFound, match="fpcalc not found"):
        fpm.fingerprint_file(tmp_path / "x.wav", fpcalc=str(tmp_path / "no-fpcalc"))
    monkeypatch.setenv("ROADIE_FPCALC_BINARY", "fpcalc-not-installed")
    reload_settings()
    try:
        with pytest.raises(FpcalcNotFound):
            fpm.fingerprint_pcm(music_like(5, 44100), 44100)
    finally:
        monkeypatch.delenv("ROADIE_FPCALC_BINARY")
        reload_settings()
    not_audio = tmp_path / "notes.wav"
    not_audio.write_text("not audio at all")
    with pytest.raises(FpcalcFailed, match="Invalid data") as err:
        fpm.fingerprint_file(not_audio)
    assert err.value.returncode == 2
    too_short = write_wav(tmp_path / "short.wav", music_like(1, 44100), 44100)
    with pytest.raises(FpcalcFailed, match="[Ee]mpty fingerprint"):
        fpm.fingerprint_file(too_short)
    with pytest.raises(FpcalcFailed, match="empty fingerprint"):
        fpm.parse_fpcalc_json('{"duration": 1.0, "fingerprint": []}', 3, "ERROR: Error decoding (End of file)")
    kept = fpm.parse_fpcalc_json('{"duration": 9.0, "fingerprint": [1, 2, 3]}', 3, "ERROR: broken frame at 4 s")
    assert kept.items == (1, 2, 3) and kept.warnings == ("ERROR: broken frame at 4 s",)


def test_hostile_file_name_is_just_a_file(tmp_path: Path) -> None:
    hostile = write_wav(tmp_path / "-length 1 concat:x;$(rm -rf ~).wav", music_like(8, 44100, seed=9), 44100)
    fp = fpm.fingerprint_file(hostile)
    assert fp.duration_s == pytest.approx(8.0, abs=0.05) and len(fp.items) > 40


# ---------------------------------------------------------------- the database path


def new_track_version(session: Session, track_id: uuid.UUID | None = None) -> tuple[uuid.UUID, uuid.UUID]:
    from roadie.db.models import Asset, Track, TrackVersion, User

    asset = Asset(bucket="roadie", key=f"originals/{uuid.uuid4()}/a.wav", size_bytes=1)
    session.add(asset)
    if track_id is None:
        user = User(username=f"u-{uuid.uuid4().hex[:8]}")
        session.add(user)
        session.flush()
        track = Track(owner_user_id=user.id, title="t")
        session.add(track)
        session.flush()
        track_id = track.id
    session.flush()
    version = TrackVersion(track_id=track_id, original_asset_id=asset.id, warnings=[])
    session.add(version)
    session.flush()
    return version.id, track_id


@pytest.fixture(params=["postgresql", "sqlite"])
def db(request, tmp_path: Path):
    if request.param == "postgresql":
        yield request.getfixturevalue("pg")
        return
    from roadie.db.session import upgrade

    url = f"sqlite:///{tmp_path / 'roadie.db'}"
    upgrade(url)
    engine = sa.create_engine(url)
    with Session(engine) as session:
        yield session
    engine.dispose()


def test_store_find_and_report_duplicates(db: Session, tmp_path: Path) -> None:
    from roadie.db.models import AudioFingerprint, FingerprintIndex, Report

    sr = 44100
    original = write_wav(tmp_path / "o.wav", music_like(SECONDS, sr, seed=12), sr)
    prints = {
        "original": fpm.fingerprint_file(original),
        "same track, flac": fpm.fingerprint_file(encode(original, tmp_path / "v2.flac")),
        "mp3 upload": fpm.fingerprint_file(encode(original, tmp_path / "dup.mp3", "-b:a", "160k")),
        "unrelated": fpm.fingerprint_pcm(music_like(SECONDS, sr, seed=13), sr),
    }
    first, track = new_track_version(db)
    second, _ = new_track_version(db, track_id=track)  # a new version of the same track
    upload, upload_track = new_track_version(db)
    stranger, _ = new_track_version(db)
    for vid, name in (
        (first, "original"),
        (second, "same track, flac"),
        (upload, "mp3 upload"),
        (stranger, "unrelated"),
    ):
        results.store_fingerprint(db, vid, prints[name], fpmatch.index_keys(prints[name]))

    row = db.scalar(sa.select(AudioFingerprint).where(AudioFingerprint.track_version_id == upload))
    assert row.chromaprint_data == list(prints["mp3 upload"].items) and row.item_count == len(row.chromaprint_data)
    assert row.fingerprint_hash == prints["mp3 upload"].sha256 != prints["original"].sha256
    index_rows = db.scalar(sa.select(sa.func.count()).where(FingerprintIndex.track_version_id == upload))
    assert index_rows == len(fpmatch.index_keys(prints["mp3 upload"])) > 0

    # The upload finds both versions of the original track through the index, and nothing else.
    found = duplicates.find_duplicates(db, upload, prints["mp3 upload"])
    assert {m.version_id for m in found} == {str(first), str(second)}
    assert all(m.track_id == str(track) and m.score > 0.8 for m in found)
    # The same track's versions are never reported against each other: the second version finds only the upload.
    assert {m.version_id for m in duplicates.find_duplicates(db, second, prints["same track, flac"])} == {str(upload)}
    assert duplicates.find_duplicates(db, stranger, prints["unrelated"]) == []

    # One report for the upload, listing every version it matches with score and offset.
    report_id = results.report_duplicates(db, upload, found)
    reports = list(db.scalars(sa.select(Report).where(Report.target_id == upload)))
    assert [str(r.id) for r in reports] == [report_id]
    [report] = reports
    assert (report.target_type, report.reason, report.status) == ("track_version", "duplicate", "pending")
    assert report.description.startswith("same audio as 2 other version(s):")
    for match in found:
        line = next(ln for ln in report.description.splitlines() if match.version_id in ln)
        assert str(track) in line and f"score {match.score:.2f}" in line and f"offset {match.offset_s:+.1f} s" in line

    # A rerun stores, indexes and reports the same things once, and keeps the moderator's verdict.
    report.status = "reviewed"
    results.store_fingerprint(db, upload, prints["mp3 upload"], fpmatch.index_keys(prints["mp3 upload"]))
    again = duplicates.find_duplicates(db, upload, prints["mp3 upload"])
    assert again == found
    assert results.report_duplicates(db, upload, again) == report_id
    assert db.scalar(sa.select(sa.func.count()).where(Report.target_id == upload)) == 1
    assert db.scalar(sa.select(Report.status).where(Report.id == report.id)) == "reviewed"
    assert db.scalar(sa.select(sa.func.count()).where(FingerprintIndex.track_version_id == upload)) == index_rows
    assert db.scalar(sa.select(sa.func.count()).where(AudioFingerprint.track_version_id == upload)) == 1
    # Fewer matches later: the same report is updated, not a second one added.
    assert results.report_duplicates(db, upload, found[:1]) == report_id
    db.refresh(report)
    assert (
        report.description.startswith("same audio as 1 other version(s):")
        and found[1].version_id not in report.description
    )
    # No match any more: a pending report goes, a reviewed one stays.
    assert results.report_duplicates(db, upload, []) is None
    assert [r.status for r in db.scalars(sa.select(Report).where(Report.target_id == upload))] == ["reviewed"]
    report.status = "pending"
    assert results.report_duplicates(db, upload, []) is None
    assert db.scalar(sa.select(sa.func.count()).where(Report.target_id == upload)) == 0
    assert upload_track != track
