"""Decoding an upload once into PCM, and ffmpeg's loudness from that one decode."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from tasks.media import ffmpeg, loudness
from tasks.media.decode import PcmFeed, decode, measure_pcm_feed, measure_with_ffmpeg, probe_stream
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
    assert decoded.loudness is None and decoded.ebur128_stderr == ""


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
    assert np.max(np.abs(flac.samples - x)) < 2 ** -22


@pytest.mark.parametrize("channels", CHANNELS)
@pytest.mark.parametrize("sr", RATES)
def test_loudness_from_the_same_decode(tmp_path: Path, sr: int, channels: int):
    """A -23 dBFS 1 kHz tone reads -23.0 LUFS (dual mono for mono) from the split branch of the decode, from the
    decoded PCM fed back to ffmpeg, and from a separate ffmpeg run on the file: all three the same."""
    path = write_wav(tmp_path / "tone.wav", sine(1000, 12.0, sr, dbfs=-23.0, channels=channels), sr)
    decoded = decode(path, measure_loudness=True)
    assert "Summary:" in decoded.ebur128_stderr
    assert decoded.loudness.integrated_lufs == pytest.approx(-23.0, abs=0.1)
    assert decoded.loudness.true_peak_dbtp == pytest.approx(-23.0, abs=0.2)
    assert measure_with_ffmpeg(decoded) == decoded.loudness
    assert loudness.measure_ffmpeg(path, channels) == decoded.loudness


def test_silence_decodes_and_has_no_measurable_loudness(tmp_path: Path):
    path = write_wav(tmp_path / "silence.wav", np.zeros((48000 * 2, 2)), 48000)
    decoded = decode(path, measure_loudness=True)
    assert decoded.frames == 96000 and not decoded.samples.any()
    assert decoded.loudness.integrated_lufs is None


def test_three_channel_layout_is_kept(tmp_path: Path):
    """-ac would remix a 3.0 FLAC into 2.1; the channels come out as they are, and ebur128 on the PCM gets the
    real layout (centre weighted 1, not an LFE weighted 0), as the split branch inside the decode does."""
    x = music_like(3.0, 44100, 3, seed=2).astype(np.float32)
    x[:, 2] = music_like(3.0, 44100, 1, seed=9)[:, 0]
    sf.write(str(tmp_path / "three.flac"), x, 44100, subtype="PCM_16")
    decoded = decode(tmp_path / "three.flac", measure_loudness=True)
    assert decoded.stream.channel_layout == "3.0"
    np.testing.assert_allclose(decoded.samples, x, atol=1 / 32768)
    assert measure_with_ffmpeg(decoded) == decoded.loudness


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


@pytest.mark.parametrize("kind", ["empty", "random", "text", "truncated-flac", "truncated-wav", "header-only",
                                  "missing", "directory", "no-audio"])
@pytest.mark.parametrize("measure", [False, True])
def test_bad_input_is_unreadable_media(tmp_path: Path, kind: str, measure: bool):
    path = make_bad(tmp_path, kind)
    with pytest.raises(UnreadableMedia) as caught:
        decode(path, measure_loudness=measure)
    message = str(caught.value)
    assert message and str(tmp_path) not in message  # readable, and without our own paths in it
    assert "Conversion failed" not in message


def test_truncated_flac_is_caught_by_the_decode_not_the_probe(tmp_path: Path):
    """ffprobe reads a truncated FLAC's header happily; only -xerror makes the decode fail instead of
    concealing the missing frames."""
    path = make_bad(tmp_path, "truncated-flac")
    assert probe_stream(path).codec == "flac"
    with pytest.raises(UnreadableMedia, match="truncated or corrupt"):
        decode(path)


@pytest.mark.parametrize("name", ["$(touch pwned).wav", "a;b.wav", "with space.wav", "quo'te\"s.wav",
                                  "ünïcødé ♫.wav", "-i.wav", "concat:x.wav", "http:x.wav"])
def test_file_names_are_data(tmp_path: Path, name: str, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)
    write_wav(tmp_path / name, sine(440, 0.5, 8000, channels=1), 8000)
    decoded = decode(Path(name), measure_loudness=True)
    assert decoded.frames == 4000 and decoded.loudness is not None
    assert not (tmp_path / "pwned").exists()


def test_the_decode_command_is_one_argument_list_with_file_protocol(tmp_path: Path):
    cmd = ffmpeg.build_decode_measure_cmd(tmp_path / "x;y.flac", sample_rate=44100, meter_filter="ebur128")
    assert isinstance(cmd, list) and all(isinstance(a, str) for a in cmd)
    assert "file:" + str((tmp_path / "x;y.flac").resolve()) in cmd
    assert "-xerror" in cmd and "-ac" not in cmd
    assert cmd.count("pipe:1") == 1 and "asplit=2[pcm][meter];[meter]ebur128[measured]" in " ".join(cmd)


def test_overlong_audio_is_refused_without_decoding_it_all(tmp_path: Path):
    """A few kB of FLAC silence can decode to hours: the decode stops at the limit instead of filling memory."""
    path = write_wav(tmp_path / "long.wav", np.zeros((44100 * 12, 1)), 44100)
    assert decode(path, max_seconds=12).frames == 44100 * 12  # exactly at the limit is fine
    for limit in (6, 11.99):
        with pytest.raises(UnreadableMedia, match="longer than"):
            decode(path, max_seconds=limit)
    flac = encode(path, tmp_path / "long.flac")
    with pytest.raises(UnreadableMedia, match="longer than 0.1 minutes"):
        decode(flac, max_seconds=6, measure_loudness=True)


@pytest.mark.parametrize("channels", CHANNELS)
@pytest.mark.parametrize("sr", RATES)
def test_ebur128_measures_the_pcm_while_it_is_decoded(tmp_path: Path, sr: int, channels: int):
    """The meter fed chunk by chunk during the decode reads exactly what it reads from the finished array."""
    path = write_wav(tmp_path / "tone.wav", sine(1000, 12.0, sr, dbfs=-23.0, channels=channels), sr)
    feed = PcmFeed()
    with ThreadPoolExecutor(max_workers=1) as pool:
        streamed = pool.submit(measure_pcm_feed, feed, probe_stream(path))
        try:
            decoded = decode(path, on_pcm=feed.put)
        finally:
            feed.close()
        reading = streamed.result(timeout=60)
    assert reading.integrated_lufs == pytest.approx(-23.0, abs=0.1)
    assert reading == measure_with_ffmpeg(decoded)


def test_truncated_upload_stops_the_streamed_meter_too(tmp_path: Path):
    """The decode fails half way: the analysis raises the decode's reason and does not wait on its meter."""
    from tasks.media.analysis import analyze_file

    with pytest.raises(UnreadableMedia, match="truncated or corrupt"):
        analyze_file(make_bad(tmp_path, "truncated-flac"))
