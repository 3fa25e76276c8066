"""The streaming waveform builder: byte-identical to the whole-array path for any chunking, a whole-track PNG made
without knowing the length in advance, and memory that does not grow with the track (bar the output pixels)."""

from __future__ import annotations

import io
import tracemalloc
from collections.abc import Iterator
from functools import cache

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from roadie.errors import InvalidInput
from tasks.media import waveform as wf
from tasks.media import waveform_builder as wfb
from tasks.media import waveform_png

RATES = [44100, 48000, 96000]
CHUNKS = [1, 4799, 48000]


# ---------------------------------------------------------------- signals and chunkings


@cache
def signal(frames: int, channels: int, integer_pcm: bool, seed: int) -> np.ndarray:
    """Random audio with the values where the arithmetic differs planted in it: full scale, odd negative sums
    (-3 + 0 mixes to -1, not -2), small negatives; over full scale for float PCM (clipped, not wrapped)."""
    rng = np.random.default_rng(seed)
    ints = rng.integers(-20000, 20000, (frames, channels))
    ints[rng.integers(0, frames, 20)] = 32767
    ints[rng.integers(0, frames, 20)] = -32768
    ints[rng.integers(0, frames, 50)] = rng.integers(-300, 300, (50, channels))
    if channels > 1:
        odd = rng.integers(0, frames, 50)
        ints[odd, 0], ints[odd, 1] = -3, 0
    if integer_pcm:  # what ffmpeg decodes integer PCM to: exact multiples of 2^-15
        x = ints.astype(np.float32) / np.float32(32768)
    else:
        x = (ints / 32767.0 + rng.normal(0, 1e-5, ints.shape)).astype(np.float32)
        x[rng.integers(0, frames, 10)] = 1.25
        x[rng.integers(0, frames, 10)] = -1.5
    x.setflags(write=False)
    return x


def chunked(x: np.ndarray, sizes: list[int]) -> Iterator[np.ndarray]:
    """`x` in consecutive chunks whose sizes cycle through `sizes` (zero-length chunks included)."""
    if not any(sizes):
        sizes = [*sizes, 1]
    start, i = 0, 0
    while start < len(x):
        size = sizes[i % len(sizes)]
        yield x[start : start + size]
        start += size
        i += 1


def build(
    x: np.ndarray,
    sr: int,
    spp: int,
    sizes: list[int],
    *,
    integer_pcm: bool,
    split: bool = False,
    png_width: int | None = 1800,
    mono_1d: bool = False,
) -> wfb.WaveformBuilder:
    builder = wfb.WaveformBuilder(
        sr, x.shape[1], spp, integer_pcm=integer_pcm, split_channels=split, png_width=png_width
    )
    for chunk in chunked(x, sizes):
        builder.feed(chunk[:, 0] if mono_1d else chunk)
    assert builder.frames == len(x)
    return builder


def assert_same_waveform(got: wf.Waveform, want: wf.Waveform) -> None:
    assert got.length == want.length and got.channels == want.channels
    assert got.mins.dtype == want.mins.dtype == np.int16
    assert np.array_equal(got.mins, want.mins) and np.array_equal(got.maxs, want.maxs)
    assert got.to_json(8) == want.to_json(8)
    assert got.to_json(16) == want.to_json(16)
    assert got.to_dat(16) == want.to_dat(16)
    assert got.to_dat(8) == want.to_dat(8)


def whole_array(x: np.ndarray, sr: int, spp: int, *, integer_pcm: bool, split: bool = False) -> wf.Waveform:
    """The whole-array path (prepare + summarize), independent of the builder."""
    return wf.summarize(wf.prepare(x, integer_pcm=integer_pcm, split_channels=split), sr, spp)


# ---------------------------------------------------------------- identical to the whole-array waveform


@pytest.mark.parametrize("integer_pcm", [True, False])
@pytest.mark.parametrize("chunk", CHUNKS)
@pytest.mark.parametrize("channels", [1, 2])
@pytest.mark.parametrize("sr", RATES)
def test_any_chunking_gives_the_whole_array_waveform(sr: int, channels: int, chunk: int, integer_pcm: bool):
    seconds = 0.6 if chunk == 1 else 2.3
    frames = int(sr * seconds) + 7  # ends in a partial pixel at both scales
    x = signal(frames, channels, integer_pcm, seed=sr + channels)
    for spp in (sr // 20, 300):  # 300 divides none of the chunk sizes: pixels straddle chunk edges
        assert frames % spp
        want = wfb.compute(x, sr, spp, integer_pcm=integer_pcm)
        assert_same_waveform(want, whole_array(x, sr, spp, integer_pcm=integer_pcm))
        got = build(x, sr, spp, [chunk], integer_pcm=integer_pcm, mono_1d=channels == 1 and chunk == 4799)
        assert_same_waveform(got.finish(), want)
        assert got.finish().length == -(-frames // spp) and got.finish().sample_rate == sr


@pytest.mark.parametrize("chunk", CHUNKS)
@pytest.mark.parametrize("channels", [2, 3])
def test_split_channels_any_chunking(channels: int, chunk: int):
    sr = 48000
    x = signal(int(sr * (0.5 if chunk == 1 else 2.1)) + 3, channels, True, seed=channels)
    for spp in (sr // 20, 256):
        want = wfb.compute(x, sr, spp, integer_pcm=True, split_channels=True)
        assert want.channels == channels
        assert_same_waveform(want, whole_array(x, sr, spp, integer_pcm=True, split=True))
        assert_same_waveform(build(x, sr, spp, [chunk], integer_pcm=True, split=True).finish(), want)


@settings(max_examples=60, deadline=None)
@given(
    frames=st.integers(0, 12000),
    channels=st.integers(1, 4),
    spp=st.integers(2, 5000),
    sizes=st.lists(st.one_of(st.integers(0, 3), st.integers(0, 100), st.integers(0, 7000)), min_size=1, max_size=40),
    integer_pcm=st.booleans(),
    split=st.booleans(),
    seed=st.integers(0, 1000),
)
def test_random_chunk_sizes(frames, channels, spp, sizes, integer_pcm, split, seed):
    x = signal(frames, channels, integer_pcm, seed) if frames else np.zeros((0, channels), np.float32)
    want = whole_array(x, 44100, spp, integer_pcm=integer_pcm, split=split)
    got = build(x, 44100, spp, sizes, integer_pcm=integer_pcm, split=split, png_width=64).finish()
    assert_same_waveform(got, want)


def test_a_pixel_spanning_many_chunks_and_a_chunk_spanning_many_pixels():
    sr, spp = 48000, 2400
    x = signal(sr * 3 + 11, 2, True, seed=5)
    want = wfb.compute(x, sr, spp, integer_pcm=True)
    # 70-frame chunks (above the tiny-chunk stage): ~34 chunks per pixel; then 1M frames: the whole track at once.
    for sizes in ([70], [1 << 20], [0, 70, 0, 1, 2399, 2401, 0, 100000]):
        assert_same_waveform(build(x, sr, spp, sizes, integer_pcm=True).finish(), want)


def test_no_frames_and_empty_chunks():
    builder = wfb.WaveformBuilder(48000, 2, 256, integer_pcm=True)
    builder.feed(np.zeros((0, 2), np.float32))
    got = builder.finish()
    assert builder.frames == 0
    assert_same_waveform(got, wfb.compute(np.zeros((0, 2), np.float32), 48000, 256, integer_pcm=True))
    assert got.to_json(8) == (
        '{"version":2,"channels":1,"sample_rate":48000,"samples_per_pixel":256,"bits":8,"length":0,"data":[]}\n'
    )
    image = Image.open(io.BytesIO(builder.png(300, 50)))
    assert image.size == (300, 50) and not np.all(np.asarray(image) == waveform_png.WAVE, axis=2).any()


def test_finish_is_idempotent_and_a_short_track_is_one_partial_pixel():
    builder = wfb.WaveformBuilder(8000, 2, 2400, integer_pcm=True)
    builder.feed(np.array([[-3 / 32768, 0.0]], np.float32))
    builder.feed(np.array([[5 / 32768, 5 / 32768]], np.float32))
    first = builder.finish()
    assert builder.finish() is first
    assert first.length == 1 and first.mins.tolist() == [[-1]] and first.maxs.tolist() == [[5]]  # -3/2 -> -1


def test_misuse_is_refused():
    with pytest.raises(InvalidInput):
        wfb.WaveformBuilder(48000, 2, 1, integer_pcm=True)
    with pytest.raises(InvalidInput):
        wfb.WaveformBuilder(48000, wf.MAX_CHANNELS + 1, 256, integer_pcm=True)
    builder = wfb.WaveformBuilder(48000, 2, 256, integer_pcm=True, png_width=600)
    with pytest.raises(ValueError):
        builder.feed(np.zeros(10, np.float32))  # 1-D is for mono only
    with pytest.raises(ValueError):
        builder.feed(np.zeros((10, 3), np.float32))
    builder.feed(np.zeros((10, 2), np.float32))
    with pytest.raises(RuntimeError):
        builder.png(600, 100)  # before finish()
    builder.finish()
    with pytest.raises(RuntimeError):
        builder.feed(np.zeros((10, 2), np.float32))
    with pytest.raises(InvalidInput):
        builder.png(601, 100)  # wider than the envelope was kept for
    no_png = wfb.WaveformBuilder(48000, 1, 256, integer_pcm=True, png_width=None)
    no_png.finish()
    with pytest.raises(InvalidInput):
        no_png.png(100, 100)


# ---------------------------------------------------------------- the whole-track PNG


def wave_mask(png: bytes, size: tuple[int, int]) -> np.ndarray:
    image = Image.open(io.BytesIO(png))
    assert image.format == "PNG" and image.size == size
    return np.all(np.asarray(image.convert("RGB")) == waveform_png.WAVE, axis=2)


def burst_track(sr: int, seconds: float, at: float, burst_s: float, channels: int) -> np.ndarray:
    """Quiet noise with a full-height square burst starting at fraction `at` of the track."""
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((int(sr * seconds), channels)) * 0.01).astype(np.float32)
    start, length = int(at * len(x)), int(burst_s * sr)
    x[start : start + length] = np.where(np.arange(length) % 2, 0.9, -0.9)[:, None]
    return x


@pytest.mark.parametrize("at", [0.1, 0.5, 0.75, 0.93])
def test_png_puts_a_burst_at_its_place_in_the_track(at: float):
    sr, seconds, burst_s, width, height = 48000, 30, 0.25, 1800, 280
    x = burst_track(sr, seconds, at, burst_s, channels=2)
    expected_first = at * width
    expected_last = (at + burst_s / seconds) * width
    pngs = set()
    for sizes in ([48000], [4799], [1 << 20], [0, 17, 130000, 3, 64, 999, 250000]):
        builder = build(x, sr, sr // 20, sizes, integer_pcm=False, png_width=width)
        builder.finish()
        png = builder.png(width, height)
        pngs.add(png)
        tall = np.flatnonzero(wave_mask(png, (width, height)).sum(axis=0) > 0.5 * height)
        assert abs(tall[0] - expected_first) <= 2 and abs(tall[-1] - expected_last) <= 2
        assert len(tall) == tall[-1] - tall[0] + 1  # one burst, nothing tall elsewhere
    assert len(pngs) == 1  # the same picture whatever the chunking


def test_png_is_the_same_whatever_the_chunking_and_matches_whole_track_png():
    sr, width, height = 8000, 640, 120
    x = signal(sr * 7 + 5, 2, False, seed=9)  # longer than the envelope's capacity (4 x 640 blocks of 2 frames)
    pictures = []
    for split in (False, True):
        builder = build(x, sr, 400, [1], integer_pcm=False, split=split, png_width=width)
        builder.finish()
        one_frame = builder.png(width, height)
        for sizes in ([4799], [1 << 20], [0, 1, 2, 3, 63, 64, 65, 5000]):
            other = build(x, sr, 400, sizes, integer_pcm=False, split=split, png_width=width)
            other.finish()
            assert other.png(width, height) == one_frame
        prepared = wf.prepare(x, integer_pcm=False, split_channels=split)
        assert wfb.whole_track_png(prepared, sr, width, height) == one_frame
        assert wave_mask(one_frame, (width, height)).mean() > 0.5  # loud random audio: mostly wave
        pictures.append(one_frame)
    assert pictures[0] != pictures[1]  # one mixed band, then one band per channel


@pytest.mark.parametrize("frames", [1, 7, 500, 1799, 1802, 7199, 7202, 100003])
def test_png_of_any_length_is_valid_and_filled_edge_to_edge(frames: int):
    """Shorter tracks than the image are stretched, longer ones squeezed: every column shows signal. Blocks are at
    least 2 frames (audiowaveform's minimum zoom, as `fit_samples_per_pixel`), so each column has both extremes,
    except where an odd-length track's last block is its lone final sample: a dot, over its share of the width."""
    x = np.where(np.arange(frames) % 2, 0.5, -0.5).astype(np.float32)
    builder = wfb.WaveformBuilder(44100, 1, 256, integer_pcm=False)
    builder.feed(x)
    builder.finish()
    for width, height in ((1800, 280), (640, 100), (1, 2)):
        columns = wave_mask(builder.png(width, height), (width, height)).sum(axis=0)
        assert columns.min() >= 1
        if frames > 1:
            last = (frames - 1) * width // frames if frames % 2 else width  # the column of the final sample
            assert columns[: max(last, 1)].min() >= 0.45 * height  # +-0.5, from the left edge on
        if frames == 7 and width == 1800:  # frames 6..7 of 7, stretched over 1800 - 1542 columns: a dot
            assert last == 1542 and columns[last:].max() <= 2


def test_png_envelope_block_size_depends_on_the_length_only():
    sr = 8000
    x = signal(sr * 20, 1, True, seed=2)
    envelopes = []
    for sizes in ([1], [3001], [len(x)]):
        builder = build(x[: sr * 2 if sizes == [1] else len(x)], sr, 400, sizes, integer_pcm=True, png_width=100)
        if sizes == [1]:  # then the rest in one go: the block size must coarsen past many doublings at once
            builder.feed(x[sr * 2 :])
        builder.finish()
        envelope = builder._envelope
        assert envelope.length <= envelope.capacity == wfb.PNG_CAPACITY * 100
        envelopes.append(
            (
                envelope.blocks.size,
                envelope.length,
                envelope.low[: envelope.length].tobytes(),
                envelope.high[: envelope.length].tobytes(),
            )
        )
    assert envelopes[0] == envelopes[1] == envelopes[2]
    size, length = envelopes[0][:2]
    assert size == 512 and length == len(x) // 512  # the smallest power of two that fits 160000 frames in 400


# ---------------------------------------------------------------- bounded memory


def test_memory_does_not_grow_with_the_track():
    """After 60 s and after 600 s of 48 kHz stereo fed in big chunks: the same working buffers, and traced memory
    grown by the output pixels only (600 s of frames would be 230 MB of float32)."""
    sr, spp = 48000, 2400
    period = np.where(np.arange(96) < 48, 0.5, -0.5).astype(np.float32)
    chunk = np.tile(period, 5000)[:, None].repeat(2, axis=1)  # 480000 frames: 10 s
    builder = wfb.WaveformBuilder(sr, 2, spp, integer_pcm=False)
    tracemalloc.start()
    try:
        for _ in range(6):
            builder.feed(chunk)
        after_60 = builder.working_nbytes
        memory_60, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        for _ in range(54):
            builder.feed(chunk)
        memory_600, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert builder.frames == 600 * sr
    after_600 = builder.working_nbytes
    envelope = builder._envelope
    assert after_60 == after_600 < 128 * 1024
    assert envelope.length <= wfb.PNG_CAPACITY * 1800
    pixel_bytes = 2 * 2 * (600 - 60) * 20  # mins and maxs, int16, one mixed channel, 20 px/s
    assert memory_600 - memory_60 < 4 * pixel_bytes + 16 * 1024  # the pixel arrays double when full
    assert peak - memory_60 < 8 * 1024 * 1024  # per-piece temporaries only: 540 s of frames would be 207 MB
    waveform = builder.finish()
    assert waveform.length == 600 * 20 and set(waveform.maxs[:, 0].tolist()) == {16383}
