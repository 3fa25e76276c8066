"""Decoding an upload once as a stream of PCM chunks, the fan-out to its consumers, and ffmpeg's loudness over
that stream."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from roadie.errors import InvalidInput
from tasks.media import ffmpeg, loudness
from tasks.media.analysis import analyze_file
from tasks.media.decode import PcmFanout, decode, decode_stream, measure_ebur128
from tasks.media.ffmpeg import UnreadableMedia
from tests.support import encode, music_like, sine, write_wav

RATES = [44100, 48000]
CHANNELS = [1, 2]


@pytest.mark.parametrize("channels", CHANNELS)
@pytest.mark.parametrize("sr", RATES)
@pytest.mark.parametrize("container", ["wav", "flac"])
def test_lossless_decodes_bit_exactly(tmp_path: Path, sr: int, channels: int, container: str):
    ints = np.round(music_like(2.0, sr, channels, seed=sr) * 32767).astype(np.int16)
    path = tmp_path / f"in.{container}"
    sf.write(str(path), ints, sr, subtype="PCM_16")
    decoded = decode(path)
    assert decoded.samples.dtype == np.float32 and decoded.samples.shape == (len(ints), channels)
    assert decoded.sample_rate == sr and decoded.channels == channels
    assert decoded.duration_s == pytest.approx(2.0)
    assert decoded.stream.integer_pcm and decoded.stream.bits_per_sample == 16
    np.testing.assert_array_equal(decoded.samples, ints.astype(np.float32) / 32768)  # exact: s16 -> flt


@pytest.mark.parametrize("chunk_frames", [1, 4799, 48000])
def test_chunks_are_fixed_size_and_add_up_to_the_signal(tmp_path: Path, chunk_frames: int):
    ints = np.round(music_like(1.3, 44100, 2, seed=5) * 32767).astype(np.int16)
    path = tmp_path / "in.flac"
    sf.write(str(path), ints, 44100, subtype="PCM_16")
    chunks: list[np.ndarray] = []
    stats = decode_stream(path, ffmpeg.probe(path), chunks.append, chunk_frames=chunk_frames)
    assert stats.frames == len(ints)
    assert all(c.shape == (chunk_frames, 2) for c in chunks[:-1]) and 0 < len(chunks[-1]) <= chunk_frames
    np.testing.assert_array_equal(np.concatenate(chunks), ints.astype(np.float32) / 32768)


@pytest.mark.parametrize("channels", CHANNELS)
@pytest.mark.parametrize("sr", RATES)
def test_lossy_decodes_at_native_rate_without_encoder_delay(tmp_path: Path, sr: int, channels: int):
    src = write_wav(tmp_path / "src.wav", music_like(3.0, sr, channels, seed=1), sr)
    mp3 = encode(src, tmp_path / "in.mp3", "-b:a", "192k")
    decoded = decode(mp3)
    assert decoded.sample_rate == sr and decoded.channels == channels
    assert not decoded.stream.integer_pcm
    assert decoded.duration_s == pytest.approx(3.0, abs=0.03)  # gapless: no encoder delay or padding
    original = sf.read(str(src), dtype="float32")[0].reshape(-1, channels)
    n = min(len(original), decoded.frames)
    correlation = np.corrcoef(original[:n, 0], decoded.samples[:n, 0])[0, 1]
    assert correlation > 0.99  # aligned: the decoder's delay was removed


def test_float_and_24_bit_sources_keep_their_format(tmp_path: Path):
    x = music_like(1.0, 48000, 2, seed=4).astype(np.float32)
    sf.write(str(tmp_path / "f.wav"), x, 48000, subtype="FLOAT")
    decoded = decode(tmp_path / "f.wav")
    assert decoded.stream.sample_format == "flt" and not decoded.stream.integer_pcm
    np.testing.assert_array_equal(decoded.samples, x)
    sf.write(str(tmp_path / "x.flac"), x, 48000, subtype="PCM_24")
    flac = decode(tmp_path / "x.flac")
    assert flac.stream.integer_pcm and flac.stream.bits_per_sample == 24
    assert np.max(np.abs(flac.samples - x)) < 2**-22


def streamed_ebur128(path: Path, chunk_frames: int = 4799) -> loudness.LoudnessReading:
    info = ffmpeg.probe(path)
    fanout = PcmFanout({"ebur128": lambda chunks: measure_ebur128(chunks, info)})
    try:
        decode_stream(path, info, fanout.put, chunk_frames=chunk_frames)
    finally:
        results = fanout.close()
    assert results["ebur128"].error is None
    return results["ebur128"].value


@pytest.mark.parametrize("channels", CHANNELS)
@pytest.mark.parametrize("sr", RATES)
def test_ebur128_measures_the_pcm_as_it_streams(tmp_path: Path, sr: int, channels: int):
    """A -23 dBFS 1 kHz tone reads -23.0 LUFS (dual mono for mono) from the decoded PCM streamed into ffmpeg's
    meter, exactly what a separate ffmpeg run on the file reads."""
    path = write_wav(tmp_path / "tone.wav", sine(1000, 12.0, sr, dbfs=-23.0, channels=channels), sr)
    reading = streamed_ebur128(path)
    assert reading.integrated_lufs == pytest.approx(-23.0, abs=0.1)
    assert reading.true_peak_dbtp == pytest.approx(-23.0, abs=0.2)
    assert reading == loudness.measure_ffmpeg(path, channels)


def test_silence_decodes_and_has_no_measurable_loudness(tmp_path: Path):
    path = write_wav(tmp_path / "silence.wav", np.zeros((48000 * 2, 2)), 48000)
    decoded = decode(path)
    assert decoded.frames == 96000 and not decoded.samples.any()
    assert streamed_ebur128(path).integrated_lufs is None


def test_three_channel_layout_is_kept(tmp_path: Path):
    """-ac would remix a 3.0 FLAC into 2.1; the channels come out as they are, and ebur128 on the PCM gets the
    real layout (centre weighted 1, not an LFE weighted 0), as ffmpeg reading the file does."""
    x = music_like(3.0, 44100, 3, seed=2).astype(np.float32)
    x[:, 2] = music_like(3.0, 44100, 1, seed=9)[:, 0]
    path = tmp_path / "three.flac"
    sf.write(str(path), x, 44100, subtype="PCM_16")
    decoded = decode(path)
    assert decoded.stream.channel_layout == "3.0"
    np.testing.assert_allclose(decoded.samples, x, atol=1 / 32768)
    assert streamed_ebur128(path) == loudness.measure_ffmpeg(path, 3)


# ---------------------------------------------------------------- the fan-out


def test_a_failing_or_early_consumer_never_blocks_the_others():
    """fpcalc stops after 120 s and a broken step stops at once: both keep draining, so the decoder and the
    other consumers see every chunk, and each failure is data."""

    def total(chunks: Iterator[np.ndarray]) -> int:
        return sum(len(c) for c in chunks)

    def first_only(chunks: Iterator[np.ndarray]) -> int:
        return len(next(chunks))

    def broken(chunks: Iterator[np.ndarray]) -> int:
        next(chunks)
        raise ValueError("boom")

    fanout = PcmFanout({"total": total, "first": first_only, "broken": broken}, depth=2)
    for _ in range(50):  # far more chunks than the queues hold
        fanout.put(np.zeros((1000, 2), dtype=np.float32))
    results = fanout.close()
    assert results["total"].value == 50_000 and results["total"].error is None
    assert results["first"].value == 1000
    assert results["broken"].value is None and results["broken"].error == "ValueError: boom"


# ---------------------------------------------------------------- bad input


def make_bad(tmp_path: Path, kind: str) -> Path:
    good = write_wav(tmp_path / "good.wav", music_like(4.0, 44100, 2, seed=3), 44100)
    if kind == "empty":
        (tmp_path / "empty.wav").write_bytes(b"")
        return tmp_path / "empty.wav"
    if kind == "random":
        (tmp_path / "random.wav").write_bytes(np.random.default_rng(0).bytes(50_000))
        return tmp_path / "random.wav"
    if kind == "text":
        (tmp_path / "text.mp3").write_text("this is not audio, just a few words of text\n" * 20)
        return tmp_path / "text.mp3"
    if kind == "truncated-flac":
        flac = encode(good, tmp_path / "full.flac")
        data = flac.read_bytes()
        (tmp_path / "cut.flac").write_bytes(data[: len(data) * 2 // 3])
        return tmp_path / "cut.flac"
    if kind == "truncated-wav":
        data = good.read_bytes()
        (tmp_path / "cut.wav").write_bytes(data[: len(data) // 2])
        return tmp_path / "cut.wav"
    if kind == "header-only":
        (tmp_path / "header.flac").write_bytes(encode(good, tmp_path / "full.flac").read_bytes()[:60])
        return tmp_path / "header.flac"
    if kind == "missing":
        return tmp_path / "does-not-exist.wav"
    if kind == "directory":
        (tmp_path / "folder.wav").mkdir()
        return tmp_path / "folder.wav"
    if kind == "no-audio":
        from PIL import Image

        Image.new("RGB", (16, 16), (200, 20, 20)).save(tmp_path / "picture.png")
        return tmp_path / "picture.png"
    raise AssertionError(kind)


@pytest.mark.parametrize(
    "kind",
    ["empty", "random", "text", "truncated-flac", "truncated-wav", "header-only", "missing", "directory", "no-audio"],
)
@pytest.mark.parametrize("entry", ["decode", "analysis"])
def test_bad_input_is_unreadable_media(tmp_path: Path, kind: str, entry: str):
    path = make_bad(tmp_path, kind)
    with pytest.raises(UnreadableMedia) as caught:
        decode(path) if entry == "decode" else analyze_file(path)
    message = str(caught.value)
    assert message and str(tmp_path) not in message  # readable, and without our own paths in it
    assert "Conversion failed" not in message


def test_truncated_flac_is_caught_by_the_decode_not_the_probe(tmp_path: Path):
    """ffprobe reads a truncated FLAC's header happily; only -xerror makes the decode fail instead of
    concealing the missing frames."""
    path = make_bad(tmp_path, "truncated-flac")
    assert ffmpeg.probe(path).codec == "flac"
    with pytest.raises(UnreadableMedia, match="truncated or corrupt"):
        decode(path)


@pytest.mark.parametrize(
    "name",
    [
        "$(touch pwned).wav",
        "a;b.wav",
        "with space.wav",
        "quo'te\"s.wav",
        "ünïcødé ♫.wav",
        "-i.wav",
        "concat:x.wav",
        "http:x.wav",
    ],
)
def test_file_names_are_data(tmp_path: Path, name: str, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)
    write_wav(tmp_path / name, sine(440, 0.5, 8000, channels=1), 8000)
    analysis = analyze_file(Path(name), png_size=None)
    assert analysis.duration_s == 0.5 and analysis.loudness is not None and analysis.waveform is not None
    assert not (tmp_path / "pwned").exists()


def test_the_decode_command_is_one_argument_list_with_file_protocol(tmp_path: Path):
    cmd = ffmpeg.build_decode_pcm_cmd(tmp_path / "x;y.flac", sample_rate=44100, max_seconds=60)
    assert isinstance(cmd, list) and all(isinstance(a, str) for a in cmd)
    assert "file:" + str((tmp_path / "x;y.flac").resolve()) in cmd
    assert "-xerror" in cmd and "-ac" not in cmd and cmd.count("pipe:1") == 1
    assert cmd[cmd.index("-t") + 1] == "60.000000" and cmd.index("-t") < cmd.index("-i")  # an input option


def test_overlong_audio_is_refused_without_decoding_it_all(tmp_path: Path):
    """A few kB of FLAC silence can decode to hours: the decode stops at the limit instead of filling memory."""
    path = write_wav(tmp_path / "long.wav", np.zeros((44100 * 12, 1)), 44100)
    assert decode(path, max_seconds=12).frames == 44100 * 12  # exactly at the limit is fine
    for limit in (6, 11.99):
        with pytest.raises(UnreadableMedia, match="longer than"):
            decode(path, max_seconds=limit)
    flac = encode(path, tmp_path / "long.flac")
    with pytest.raises(UnreadableMedia, match="longer than 0.1 minutes"):
        decode(flac, max_seconds=6)


def test_a_header_that_lies_is_caught_by_the_decode(tmp_path: Path):
    """The probe's duration passes the limit, but the decode reads what is really there and stops at the limit."""
    import dataclasses

    path = write_wav(tmp_path / "long.wav", np.zeros((8000 * 12, 1)), 8000)
    lying = dataclasses.replace(ffmpeg.probe(path), duration_s=3.0)
    with pytest.raises(UnreadableMedia, match="longer than 0.1 minutes.*header says 0.1 minutes"):
        analyze_file(path, info=lying, max_seconds=6)


def test_the_length_limit_is_checked_from_the_probe_before_any_work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from roadie.settings import reload_settings

    path = write_wav(tmp_path / "song.wav", np.zeros((8000 * 30, 1)), 8000)
    monkeypatch.setenv("ROADIE_MAX_DURATION_S", "20")
    reload_settings()
    try:
        with pytest.raises(InvalidInput) as caught:
            analyze_file(path)
        assert "0:00:30 long, over roadie's limit of 0:00:20" in str(caught.value)
        assert "raise ROADIE_MAX_DURATION_S" in str(caught.value)
        monkeypatch.setenv("ROADIE_MAX_DURATION_S", "30")
        assert reload_settings().max_duration_s == 30
        assert analyze_file(path, png_size=None).duration_s == 30.0
    finally:
        monkeypatch.delenv("ROADIE_MAX_DURATION_S")
        reload_settings()


def test_truncated_upload_stops_the_streamed_meter_too(tmp_path: Path):
    """The decode fails half way: the analysis raises the decode's reason and does not wait on its meter."""
    with pytest.raises(UnreadableMedia, match="truncated or corrupt"):
        analyze_file(make_bad(tmp_path, "truncated-flac"))
