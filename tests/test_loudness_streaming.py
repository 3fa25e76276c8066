"""LoudnessMeter, fed chunk by chunk, against an independent whole-array meter.

The reference (tests/reference_loudness.py) is an independent whole-array meter: K-weighting derived from the
BS.1770 table, every gating block summed on its own and the true peak by upfirdn over the entire array.
Whatever the chunking, the streamed reading must equal it within 0.01 (LUFS, LU, dBTP), and the meter must not
hold more memory for a longer signal.
"""

from __future__ import annotations

import math
import tracemalloc

import numpy as np
import pytest

from tasks.media import loudness_meter
from tasks.media.loudness import LoudnessReading
from tasks.media.loudness_meter import LoudnessMeter, measure_pcm
from tests import reference_loudness
from tests.support import music_like, sine

TOL = 0.01
RATES = [44100, 48000, 96000]


def program(seconds: float, sr: int, channels: int, seed: int = 0) -> np.ndarray:
    """Music-like audio with what a streamed meter can get wrong at chunk edges.

    Level steps for the gates and LRA: one segment 20 dB down (below the relative gate), a digital silence and
    a -80 dB stretch (below the absolute gate). An fs/4 burst at 45 degrees straddles frame 65536 (the meter's
    default slice edge; the middle of a shorter signal): its samples read 3 dB below its true peak, which is the
    loudest point of the signal."""
    x = music_like(seconds, sr, channels, seed=seed, gain_db=-12.0)
    n = len(x)
    segments = [(0.25, 0.0), (0.2, -20.0), (0.2, -8.0), (0.05, None), (0.1, -80.0), (0.2, -3.0)]
    gain = np.concatenate(
        [np.full(round(fraction * n), 0.0 if db is None else 10 ** (db / 20)) for fraction, db in segments]
    )
    gain = np.pad(gain, (0, max(0, n - len(gain))), mode="edge")[:n]
    x = x * gain[:, None]
    centre, half = min(65536, n // 2), int(0.015 * sr)
    frames = np.arange(centre - half, centre + half)
    x[frames] = 0.5 * np.sin(np.pi / 2 * frames + np.pi / 4)[:, None]
    return x


def stream(x: np.ndarray, sr: int, sizes, *, mono_1d: bool = False, dtype=None, **kwargs) -> LoudnessReading:
    """Feed x in chunks of the given sizes (an int repeats), the rest in one last chunk."""
    meter = LoudnessMeter(sr, x.shape[1], **kwargs)
    data = x[:, 0] if mono_1d else x
    if dtype is not None:
        data = data.astype(dtype)
    start = 0
    for size in [sizes] * -(-len(x) // sizes) if isinstance(sizes, int) else sizes:
        meter.feed(data[start : start + size])
        start += size
    meter.feed(data[start:])
    return meter.finish()


def assert_same(got: LoudnessReading, expected: LoudnessReading) -> None:
    for field in ("integrated_lufs", "loudness_range_lu", "true_peak_dbtp"):
        g, e = getattr(got, field), getattr(expected, field)
        assert (g is None) == (e is None), (field, got, expected)
        if e is not None:
            assert g == pytest.approx(e, abs=TOL), (field, got, expected)


def sample_peak_db(x: np.ndarray) -> float:
    return 20 * math.log10(np.abs(x.astype(np.float32)).max())


# ---------------------------------------------------------------- same reading whatever the chunking


@pytest.mark.parametrize("chunk", [1, 4799, 48000])
@pytest.mark.parametrize("channels", [1, 2])
@pytest.mark.parametrize("sr", RATES)
def test_streamed_equals_whole_array(sr: int, channels: int, chunk: int) -> None:
    seconds = 3.0 if chunk == 1 else 20.0  # a Python call per frame: keep that one short
    x = program(seconds, sr, channels, seed=sr + channels)
    expected = reference_loudness.measure_pcm(x, sr)
    # Mono comes as 1-D chunks, and one chunking as float32, as a decoder may hand them over.
    got = stream(x, sr, chunk, mono_1d=channels == 1, dtype=np.float32 if chunk == 4799 else None)
    assert_same(got, expected)
    assert_same(measure_pcm(x, sr), expected)
    # The signal does exercise the gates, the range and the inter-sample peak.
    assert expected.integrated_lufs is not None
    assert expected.true_peak_dbtp > sample_peak_db(x) + 2.0
    if seconds >= 20:
        assert expected.loudness_range_lu > 3.0


@pytest.mark.parametrize("buffer_frames", [LoudnessMeter.BUFFER_FRAMES, 4801, 1000])
def test_random_chunk_sizes(buffer_frames: int) -> None:
    """Chunks of 0 to ~3 buffers, so slices start and end inside sub-blocks and oversampler blocks."""
    sr = 44100
    x = program(12.0, sr, 2, seed=7)
    rng = np.random.default_rng(buffer_frames)
    sizes = list(rng.integers(0, 3 * buffer_frames, 40_000 * 12 // buffer_frames + 10))
    sizes[::7] = [0] * len(sizes[::7])
    got = stream(x, sr, sizes, buffer_frames=buffer_frames)
    assert_same(got, reference_loudness.measure_pcm(x, sr))


@pytest.mark.parametrize("sr", RATES)
def test_small_buffer_one_frame_at_a_time(sr: int) -> None:
    """A buffer of 37 frames: a slice ends at every offset of the 16-frame oversampler block."""
    x = program(1.5, sr, 2, seed=3)
    assert_same(stream(x, sr, 1, buffer_frames=37), reference_loudness.measure_pcm(x, sr))


@pytest.mark.parametrize("buffer_frames", [LoudnessMeter.BUFFER_FRAMES, 4801])
def test_filter_state_carries_over_slice_edges(buffer_frames: int) -> None:
    """A quiet tone on a large DC offset: K-weighting's high pass removes the offset, but a filter restarted
    from rest at a slice edge would see it as a step and ring loudly. Music hides that ringing; this does not."""
    sr = 48000
    x = 0.5 + sine(1000, 10.0, sr, dbfs=-40.0)
    expected = reference_loudness.measure_pcm(x, sr)
    assert expected.integrated_lufs == pytest.approx(-40.0, abs=1.0)  # the offset's one step, at the start
    assert_same(stream(x, sr, 48000, buffer_frames=buffer_frames), expected)


@pytest.mark.parametrize("where", ["start", "end"])
@pytest.mark.parametrize("chunk", [1, 5000])
def test_true_peak_before_the_first_and_after_the_last_sample(where: str, chunk: int) -> None:
    """A -a, +a step at the end peaks after the last sample: only the zero-padded tail flushed at finish sees
    it. Mirrored at the start, only the zero history before the first sample sees it."""
    sr = 48000
    x = sine(1000, 1.0, sr, dbfs=-30.0)
    edge = np.array([[-0.6, -0.6], [0.6, 0.6]])
    if where == "end":
        x[-2:] = edge
    else:
        x[:2] = edge[::-1]
    expected = reference_loudness.measure_pcm(x, sr)
    assert expected.true_peak_dbtp > sample_peak_db(x) + 0.5
    assert_same(stream(x, sr, chunk), expected)
    assert_same(stream(x, sr, chunk, buffer_frames=4097), expected)


def test_many_channels_and_explicit_weights() -> None:
    sr = 48000
    x = program(6.0, sr, 6, seed=2) * np.array([1.0, 0.9, 0.8, 0.5, 0.7, 0.6])  # 5.1: LFE (index 3) weighs 0
    assert_same(stream(x, sr, 3000), reference_loudness.measure_pcm(x, sr))
    mono = program(6.0, sr, 1, seed=2)
    assert_same(stream(mono, sr, 3000, weights=[1.0]), reference_loudness.measure_pcm(mono, sr, weights=[1.0]))
    assert_same(measure_pcm(mono, sr, weights=[1.0]), reference_loudness.measure_pcm(mono, sr, weights=[1.0]))


def test_half_frame_sub_blocks_count_as_the_whole_array_meter_did() -> None:
    """At 11025 Hz a sub-block is 1102.5 frames: 5512 frames close five rint'ed sub-blocks, but 5512 * 10 // sr
    is four. The loud fifth one must not count, as it did not in the whole-array meter."""
    sr = 11025
    x = sine(440, 5512 / sr, sr, dbfs=-20.0, channels=1)
    x[4410:] *= 5
    expected = reference_loudness.measure_pcm(x, sr)
    assert expected.integrated_lufs is not None
    assert_same(stream(x, sr, 1), expected)
    assert_same(stream(x, sr, 1000, buffer_frames=1100), expected)


# ---------------------------------------------------------------- edges: nothing, too short, silence


def test_nothing_fed_gives_nothing() -> None:
    assert LoudnessMeter(48000, 2).finish() == LoudnessReading(None, None, None)
    meter = LoudnessMeter(48000, 2)
    meter.feed(np.zeros((0, 2)))
    meter.feed(np.zeros((0, 2), dtype=np.float32))
    assert meter.finish() == LoudnessReading(None, None, None)
    mono = LoudnessMeter(44100, 1)
    mono.feed(np.zeros(0))
    assert mono.finish() == LoudnessReading(None, None, None)
    assert measure_pcm(np.zeros((0, 2)), 48000) == LoudnessReading(None, None, None)
    assert measure_pcm(np.zeros(0), 48000) == LoudnessReading(None, None, None)


@pytest.mark.parametrize("frames", [1, 5, 16, 35, 4800, 19_199])  # all shorter than one 400 ms block
def test_shorter_than_one_block(frames: int) -> None:
    sr = 48000
    x = program(1.0, sr, 2, seed=frames)[20_000 : 20_000 + frames]
    expected = reference_loudness.measure_pcm(x, sr)
    got = stream(x, sr, 3)
    assert got.integrated_lufs is None and got.loudness_range_lu is None
    assert_same(got, expected)
    short = sine(1000, 0.3, sr, dbfs=-20.0)
    reading = stream(short, sr, 1000)
    assert reading.integrated_lufs is None and reading.true_peak_dbtp == pytest.approx(-20.0, abs=0.1)


def test_silence_and_below_the_gate() -> None:
    sr = 48000
    assert stream(np.zeros((sr * 5, 2)), sr, 7000) == LoudnessReading(None, None, None)
    quiet = sine(1000, 5, sr, dbfs=-80.0)
    reading = stream(quiet, sr, 7000)
    assert reading.integrated_lufs is None and reading.loudness_range_lu is None
    assert reading.true_peak_dbtp == pytest.approx(-80.0, abs=0.1)
    assert_same(reading, reference_loudness.measure_pcm(quiet, sr))


def test_misuse_is_refused() -> None:
    meter = LoudnessMeter(48000, 2)
    with pytest.raises(ValueError, match="2 channels"):
        meter.feed(np.zeros((10, 3)))
    with pytest.raises(ValueError):
        meter.feed(np.zeros(10))  # 1-D is mono only
    with pytest.raises(ValueError, match="1 channel weights for 2 channels"):
        LoudnessMeter(48000, 2, weights=[1.0])
    meter.feed(np.zeros((10, 2)))
    meter.finish()
    with pytest.raises(RuntimeError):
        meter.feed(np.zeros((10, 2)))
    with pytest.raises(RuntimeError):
        meter.finish()


# ---------------------------------------------------------------- bounded memory


def held_bytes(meter: LoudnessMeter) -> int:
    """Bytes of every numpy array the meter (and its true-peak part) holds, the per-100 ms energies aside."""
    arrays: dict[int, np.ndarray] = {}
    objects = [meter]
    while objects:
        for name, value in vars(objects.pop()).items():
            if name == "_energies":
                continue
            if isinstance(value, np.ndarray):
                while isinstance(value.base, np.ndarray):  # a view holds its base alive
                    value = value.base
                arrays[id(value)] = value
            elif type(value).__module__ == loudness_meter.__name__ and hasattr(value, "__dict__"):
                objects.append(value)
    return sum(a.nbytes for a in arrays.values())


def test_buffers_stay_bounded() -> None:
    sr = 48000
    chunk = program(1.0, sr, 2, seed=1)[:48000]  # one second, fed over and over
    LoudnessMeter(sr, 2).feed(chunk)  # first-use costs (filter design, oversampler, BLAS scan) out of the way
    meter = LoudnessMeter(sr, 2)
    tracemalloc.start()
    try:
        for _ in range(10):
            meter.feed(chunk)
        after_10s, peak_10s = held_bytes(meter), tracemalloc.get_traced_memory()[1]
        for _ in range(50):
            meter.feed(chunk)
        after_60s, peak_60s = held_bytes(meter), tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert after_60s <= after_10s < 4_000_000
    # Over 50 more seconds only the energies grow: 8 bytes per 100 ms (plus a list entry per slice).
    assert peak_60s - peak_10s < 100_000
    assert peak_60s < 8_000_000
    assert 0 < len(meter._energies) <= 600  # one per 100 ms
    assert meter.finish().integrated_lufs is not None


def test_measure_pcm_makes_no_copy_of_a_long_input() -> None:
    """The production failure: the whole-array meter held several float32 copies of the upload at once."""
    sr = 48000
    x = np.random.default_rng(0).uniform(-0.3, 0.3, (sr * 60, 2)).astype(np.float32)  # 23 MB
    measure_pcm(x[:sr], sr)
    tracemalloc.start()
    try:
        reading = measure_pcm(x, sr)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < x.nbytes / 4
    assert reading.integrated_lufs == pytest.approx(reference_loudness.measure_pcm(x, sr).integrated_lufs, abs=TOL)
