"""Waveforms compatible with BBC audiowaveform 1.10.

The expected values are computed here, independently and slowly, from audiowaveform's documented integer
arithmetic (int16 samples, the mono mix summed as integers and divided with truncation toward zero, 8-bit values
as int16 / 256 truncated toward zero, the partial last pixel kept), and compared exactly with what roadie makes of
real files decoded by ffmpeg.
"""

from __future__ import annotations

import io
import json
import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from roadie.errors import InvalidInput
from tasks.media import waveform as wf
from tasks.media import waveform_builder as wfb
from tasks.media import waveform_png
from tasks.media.decode import decode
from tests.support import music_like

RATES = [22050, 44100, 48000]
CHANNELS = [1, 2, 3]


# ---------------------------------------------------------------- the reference


def c_div(a: int, b: int) -> int:
    """C integer division: truncation toward zero."""
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b > 0) else -q


def reference_pixels(ints: np.ndarray, spp: int, split: bool) -> list[list[tuple[int, int]]]:
    """Per pixel, per output channel, (min, max) of the int16 samples, exactly as WaveformGenerator::process."""
    rows = [[int(v) for v in row] for row in ints]
    channels = len(rows[0])
    signal = rows if split or channels == 1 else [[c_div(sum(row), channels)] for row in rows]
    pixels = []
    for start in range(0, len(signal), spp):  # the last, partial pixel too
        block = signal[start : start + spp]
        pixels.append([(min(r[c] for r in block), max(r[c] for r in block)) for c in range(len(block[0]))])
    return pixels


def reference_json(pixels, sample_rate: int, spp: int, bits: int) -> str:
    data = []
    for pixel in pixels:
        for lo, hi in pixel:
            data += [c_div(lo, 256), c_div(hi, 256)] if bits == 8 else [lo, hi]
    doc = {
        "version": 2,
        "channels": len(pixels[0]),
        "sample_rate": sample_rate,
        "samples_per_pixel": spp,
        "bits": bits,
        "length": len(pixels),
        "data": data,
    }
    return json.dumps(doc, separators=(",", ":")) + "\n"


def reference_dat(pixels, sample_rate: int, spp: int, bits: int) -> bytes:
    channels = len(pixels[0])
    out = struct.pack("<i", 1 if channels == 1 else 2) + struct.pack("<I", 1 if bits == 8 else 0)
    out += struct.pack("<iiI", sample_rate, spp, len(pixels))
    if channels > 1:
        out += struct.pack("<i", channels)
    for pixel in pixels:
        for lo, hi in pixel:
            out += struct.pack("<bb", c_div(lo, 256), c_div(hi, 256)) if bits == 8 else struct.pack("<hh", lo, hi)
    return out


def test_reference_arithmetic_is_the_documented_one():
    # The field notes' examples: -3 / 2 = -1 (not -2); -255 -> 0 in 8 bits (not -1 as with >> 8).
    assert c_div(-3, 2) == -1 and c_div(3, 2) == 1 and c_div(-255, 256) == 0 and c_div(-256, 256) == -1
    stereo = np.array([[-3, 0], [1, 2], [5, 5]])
    assert reference_pixels(stereo, 2, split=False) == [[(-1, 1)], [(5, 5)]]  # (1 + 2) / 2 = 1; partial pixel kept


# ---------------------------------------------------------------- signals


def edge_signal(seconds: float, sr: int, channels: int, seed: int) -> np.ndarray:
    """Music-like int16 audio with the values where the arithmetic differs planted in it: odd negative sums,
    values between -255 and -1, full scale."""
    x = np.round(music_like(seconds, sr, channels, seed=seed, gain_db=-3.0) * 32767).astype(np.int64)
    rng = np.random.default_rng(seed)
    n = len(x)
    quiet = rng.integers(0, n, 400)
    x[quiet] = rng.integers(-300, 300, (400, channels))
    x[rng.integers(0, n, 10)] = 32767
    x[rng.integers(0, n, 10)] = -32768
    if channels > 1:
        odd = rng.integers(0, n, 200)
        x[odd, 0], x[odd, 1] = -3, 0  # mixes to -1 (stereo) or -1 (3 channels: -3 / 3)
    return x.astype(np.int16)


def write_pcm(path: Path, ints: np.ndarray, sr: int, subtype: str) -> Path:
    sf.write(str(path), ints, sr, subtype=subtype)
    return path


def roadie_waveform(path: Path, spp: int, split: bool) -> wf.Waveform:
    decoded = decode(path)
    return wfb.compute(
        decoded.samples, decoded.sample_rate, spp, integer_pcm=decoded.stream.integer_pcm, split_channels=split
    )


# ---------------------------------------------------------------- JSON and .dat against the reference


@pytest.mark.parametrize("channels", CHANNELS)
@pytest.mark.parametrize("sr", RATES)
@pytest.mark.parametrize("container", ["wav", "flac"])
def test_json_matches_the_reference_arithmetic(tmp_path: Path, sr: int, channels: int, container: str):
    ints = edge_signal(1.317, sr, channels, seed=sr + channels)
    path = write_pcm(tmp_path / f"in.{container}", ints, sr, "PCM_16")
    spp = wf.samples_per_pixel(sr, pixels_per_second=20)
    assert spp == sr // 20
    assert len(ints) % spp, "the signal must end in a partial pixel"
    mixed = roadie_waveform(path, spp, split=False)
    pixels = reference_pixels(ints, spp, split=False)
    assert mixed.length == len(pixels) == -(-len(ints) // spp)
    for bits in (8, 16):
        assert mixed.to_json(bits) == reference_json(pixels, sr, spp, bits)
        assert mixed.to_dat(bits) == reference_dat(pixels, sr, spp, bits)
    split = roadie_waveform(path, spp, split=True)
    split_pixels = reference_pixels(ints, spp, split=True)
    assert split.channels == channels
    assert split.to_json(16) == reference_json(split_pixels, sr, spp, 16)
    assert split.to_dat(8) == reference_dat(split_pixels, sr, spp, 8)


@pytest.mark.parametrize("sr", [44100, 48000])
def test_24_bit_flac_reads_as_its_top_16_bits(tmp_path: Path, sr: int):
    """libsndfile (audiowaveform's reader) gives 24-bit FLAC as sample >> 8: floor, not rounding."""
    rng = np.random.default_rng(7)
    ints24 = (music_like(1.0, sr, 2, seed=3) * (2**23 - 1)).astype(np.int64)
    ints24[rng.integers(0, len(ints24), 300)] = rng.integers(-700, 700, (300, 2))  # low bits that must floor
    path = tmp_path / "in24.flac"
    sf.write(str(path), (ints24 * 256).astype(np.int32), sr, subtype="PCM_24")
    decoded = decode(path)
    assert decoded.stream.integer_pcm and decoded.stream.bits_per_sample == 24
    ints16 = (ints24 >> 8).astype(np.int16)
    np.testing.assert_array_equal(wf.to_int16(decoded.samples, integer_pcm=True), ints16)
    spp = 512
    got = wfb.compute(decoded.samples, sr, spp, integer_pcm=True)
    assert got.to_json(16) == reference_json(reference_pixels(ints16, spp, False), sr, spp, 16)


@pytest.mark.parametrize("channels", [1, 2])
def test_float_wav_is_scaled_by_32767_and_truncated(tmp_path: Path, channels: int):
    sr = 44100
    x = music_like(1.1, sr, channels, seed=11, gain_db=-1.0).astype(np.float32)
    x[100] = 1.0
    x[200] = -1.0
    x[300] = 1.5  # over full scale: clipped, not wrapped
    path = tmp_path / "float.wav"
    sf.write(str(path), x, sr, subtype="FLOAT")
    decoded = decode(path)
    assert not decoded.stream.integer_pcm
    # C: static_cast<short>(float * 32767) in float32 arithmetic
    ints = np.clip(np.trunc(x * np.float32(32767)), -32768, 32767).astype(np.int16)
    np.testing.assert_array_equal(wf.to_int16(decoded.samples, integer_pcm=False), ints)
    spp = 300
    got = wfb.compute(decoded.samples, sr, spp, integer_pcm=False)
    assert got.to_json(8) == reference_json(reference_pixels(ints, spp, False), sr, spp, 8)


@settings(max_examples=60, deadline=None)
@given(
    channels=st.integers(1, 4),
    frames=st.integers(1, 700),
    spp=st.integers(2, 64),
    seed=st.integers(0, 2**32 - 1),
    split=st.booleans(),
    extreme=st.booleans(),
)
def test_vectorised_path_equals_the_reference_on_any_int16_signal(channels, frames, spp, seed, split, extreme):
    rng = np.random.default_rng(seed)
    low, high = (-32768, 32768) if extreme else (-600, 600)
    ints = rng.integers(low, high, (frames, channels)).astype(np.int16)
    samples = ints.astype(np.float32) / 32768  # what ffmpeg's decoder gives for s16
    got = wfb.compute(samples, 8000, spp, integer_pcm=True, split_channels=split)
    pixels = reference_pixels(ints, spp, split)
    assert got.length == len(pixels)
    assert got.to_json(8) == reference_json(pixels, 8000, spp, 8)
    assert got.to_json(16) == reference_json(pixels, 8000, spp, 16)


def test_json_is_one_line_with_a_trailing_newline_and_keys_in_order():
    ints = np.array([[-3, 0], [1, 2], [100, -300], [7, 7], [-32768, 32767]], dtype=np.int16)
    text = wfb.compute(ints / np.float32(32768), 8000, 2, integer_pcm=True).to_json(16)
    assert text.endswith("}\n") and text.count("\n") == 1 and " " not in text
    assert list(json.loads(text)) == [
        "version",
        "channels",
        "sample_rate",
        "samples_per_pixel",
        "bits",
        "length",
        "data",
    ]
    assert json.loads(text)["data"] == [-1, 1, -100, 7, 0, 0]  # mono mix: -3/2 -> -1; (-32768+32767)/2 -> 0


def test_empty_audio_has_no_pixels():
    got = wfb.compute(np.zeros((0, 2), dtype=np.float32), 48000, 256, integer_pcm=True)
    assert got.length == 0
    assert (
        got.to_json(8) == '{"version":2,"channels":1,"sample_rate":48000,"samples_per_pixel":256,"bits":8,'
        '"length":0,"data":[]}\n'
    )
    assert len(got.to_dat(8)) == 20


def test_scale_options():
    assert wf.samples_per_pixel(48000, pixels_per_second=20) == 2400
    assert wf.samples_per_pixel(44100, pixels_per_second=20) == 2205
    assert wf.samples_per_pixel(44100, pixels_per_second=7) == 6300  # integer division
    assert wf.samples_per_pixel(44100) == wf.DEFAULT_ZOOM == 256
    assert wf.samples_per_pixel(44100, zoom=2) == 2
    for bad in (
        {"zoom": 1},
        {"zoom": 0},
        {"pixels_per_second": 30000},
        {"pixels_per_second": 0},
        {"zoom": 4, "pixels_per_second": 4},
    ):
        with pytest.raises(InvalidInput):
            wf.samples_per_pixel(44100, **bad)
    assert wf.fit_samples_per_pixel(48000 * 240, 1800) == 6400
    assert wf.fit_samples_per_pixel(1801, 1800) == 2
    assert wf.fit_samples_per_pixel(10, 1800) == 2


# ---------------------------------------------------------------- audiowaveform itself, when installed


@pytest.mark.skipif(shutil.which("audiowaveform") is None, reason="audiowaveform is not installed (not in Debian)")
@pytest.mark.parametrize(
    "options",
    [["-b", "8", "--pixels-per-second", "20"], ["-b", "16", "-z", "300"], ["-b", "8", "-z", "512", "--split-channels"]],
)
@pytest.mark.parametrize("container", ["wav", "flac"])
def test_byte_for_byte_with_audiowaveform(tmp_path: Path, options: list[str], container: str):
    ints = edge_signal(2.0, 44100, 2, seed=5)
    path = write_pcm(tmp_path / f"in.{container}", ints, 44100, "PCM_16")
    for suffix in ("json", "dat"):
        theirs = tmp_path / f"theirs.{suffix}"
        subprocess.run(["audiowaveform", "-i", str(path), "-o", str(theirs), *options], check=True, capture_output=True)
        ours = tmp_path / f"ours.{suffix}"
        subprocess.run(
            [shutil.which("roadie") or "roadie", "waveform", str(path), "-o", str(ours), *options],
            check=True,
            capture_output=True,
        )
        assert ours.read_bytes() == theirs.read_bytes()


# ---------------------------------------------------------------- the PNG shows the whole track


def test_png_shows_the_whole_track():
    """A burst only in the last second of a 30 s track must reach the right edge of the picture (the original
    design's 1800 x 256 samples showed the first 9.6 s only)."""
    sr, seconds, width, height = 8000, 30, 1800, 280
    x = np.zeros((sr * seconds, 2), dtype=np.float32)
    square = np.where(np.arange(sr) % 2, 1.0, -1.0).astype(np.float32)  # both extremes in every pixel
    x[: sr // 2, 0] = 0.3 * square[: sr // 2]  # a short, quiet start on the left channel
    x[-sr:, 1] = 0.9 * square  # a loud last second on the right channel
    prepared = wf.prepare(x, integer_pcm=False, split_channels=True)
    image = np.asarray(Image.open(io.BytesIO(wfb.whole_track_png(prepared, sr, width, height))))
    assert image.shape == (height, width, 3)
    wave = np.all(image == waveform_png.WAVE, axis=2)
    band = height // 2
    left, right = wave[:band].sum(axis=0), wave[band:].sum(axis=0)
    per_second = width // seconds
    assert right[-per_second:].min() > 0.85 * band  # the end of the track fills the right edge
    assert right[: -per_second - 1].max() <= 2  # silence elsewhere: a hairline
    assert left[: per_second // 2 - 1].min() > 0.25 * band and left[per_second:].max() <= 2


def test_mono_png_is_one_band():
    sr = 8000
    x = (0.5 * np.sign(np.sin(np.arange(sr * 3) / 2.0))).astype(np.float32)[:, None]
    png = wfb.whole_track_png(wf.prepare(x, integer_pcm=False), sr, 300, 100)
    wave = np.all(np.asarray(Image.open(io.BytesIO(png))) == waveform_png.WAVE, axis=2)
    rows = np.flatnonzero(wave.any(axis=1))
    assert wave.all(axis=1).sum() >= 45 and rows.min() >= 20 and rows.max() <= 80  # +-0.5: the middle half


def test_png_size_and_validity(tmp_path: Path):
    x = music_like(3.0, 22050, 1, seed=1).astype(np.float32)
    png = wfb.compute(x, 22050, wf.fit_samples_per_pixel(len(x), 640), integer_pcm=False).to_png(640, 120)
    image = Image.open(io.BytesIO(png))
    assert image.format == "PNG" and image.size == (640, 120)
    with pytest.raises(InvalidInput):
        wfb.compute(x, 22050, 256, integer_pcm=False).to_png(0, 120)
