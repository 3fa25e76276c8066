"""Waveform data compatible with BBC audiowaveform 1.10 (JSON v2 and the binary .dat): its arithmetic, the
whole-array summary and the streamed min/max blocks. `tasks.media.waveform_builder` streams a track through them
(and keeps the envelope of the whole-track PNG); `tasks.media.waveform_png` draws the picture.

audiowaveform's arithmetic, reproduced exactly:
- samples are int16: integer PCM (WAV, FLAC) as libsndfile reads it (the top 16 bits, i.e. floor(x * 32768) of
  ffmpeg's exact float decode), float PCM multiplied by 32767 in float32 and truncated;
- without --split-channels, channels are mixed by summing the int16 values and dividing by the channel count with
  C truncation toward zero (-3 / 2 = -1);
- a pixel is the min and max of `samples_per_pixel` frames; a partial last pixel is kept, so
  length = ceil(frames / samples_per_pixel);
- 8-bit output is the int16 value / 256, truncated toward zero (-255 -> 0), not >> 8.

Every conversion above is monotonic, so min/max are taken on the float signal first (one vectorised reduceat per
pixel row) and only the per-pixel extremes are converted: 240 s of 48 kHz stereo takes a few tens of ms.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Literal

import numpy as np

from roadie.errors import InvalidInput
from tasks.media import waveform_png
from tasks.media.pcm import Axis, as_frames

INT16_MIN, INT16_MAX = -32768, 32767
MIN_SAMPLES_PER_PIXEL = 2  # audiowaveform: "Invalid zoom: minimum 2"
MAX_CHANNELS = 24  # audiowaveform's WaveformBuffer::MAX_CHANNELS
DEFAULT_ZOOM = 256  # audiowaveform's default samples per pixel
FLAG_8_BIT = 0x1

Bits = Literal[8, 16]


# ---------------------------------------------------------------- scale


def samples_per_pixel(sample_rate: int, *, pixels_per_second: int | None = None, zoom: int | None = None) -> int:
    """audiowaveform's scale: `-z N` as given, `--pixels-per-second P` as sample_rate // P; at least 2."""
    if pixels_per_second is not None and zoom is not None:
        raise InvalidInput("give either pixels per second or a zoom (-z), not both")
    if pixels_per_second is not None:
        if pixels_per_second <= 0:
            raise InvalidInput("pixels per second must be greater than zero")
        spp = int(sample_rate) // int(pixels_per_second)
    else:
        spp = int(zoom if zoom is not None else DEFAULT_ZOOM)
    if spp < MIN_SAMPLES_PER_PIXEL and pixels_per_second is not None:
        raise InvalidInput(
            f"{pixels_per_second} pixels per second is {spp} samples per pixel at {sample_rate} Hz; "
            f"the minimum is {MIN_SAMPLES_PER_PIXEL} (use at most "
            f"{sample_rate // MIN_SAMPLES_PER_PIXEL} pixels per second)"
        )
    if spp < MIN_SAMPLES_PER_PIXEL:
        raise InvalidInput(f"invalid zoom {spp}: the minimum is {MIN_SAMPLES_PER_PIXEL} samples per pixel")
    return spp


def fit_samples_per_pixel(frames: int, width: int) -> int:
    """The zoom that puts the whole track in `width` pixels (audiowaveform's `-z auto`): ceil(frames / width)."""
    if width < 1:
        raise InvalidInput("the image width must be at least 1 pixel")
    return max(MIN_SAMPLES_PER_PIXEL, -(-int(frames) // int(width)))


# ---------------------------------------------------------------- int16 samples


def to_int16(samples: np.ndarray, *, integer_pcm: bool) -> np.ndarray:
    """The int16 samples audiowaveform reads from the same file (see the module docstring). Reference for tests
    and small inputs; `summarize` and the builder avoid converting every sample."""
    x = np.asarray(samples, dtype=np.float32)
    return _convert(x, integer_pcm).astype(np.int16)


def _convert(x: np.ndarray, integer_pcm: bool) -> np.ndarray:
    """float32 in, float32 holding int16 values out. Monotonic non-decreasing in x."""
    if integer_pcm:
        # x * 32768 is exact in float32 (a power of two) and within int16 for a decoded integer sample;
        # floor = libsndfile's arithmetic shift down to 16 bits (24-bit FLAC/WAV: >> 8).
        y = x * np.float32(32768.0)
        return np.floor(y, out=y)
    # C: static_cast<short>(float * 32767): a float32 product, truncated toward zero (clipped: floats may exceed 1).
    y = x * np.float32(INT16_MAX)
    np.trunc(y, out=y)
    return np.clip(y, INT16_MIN, INT16_MAX, out=y)


def check_channels(channels: int) -> None:
    if not 1 <= channels <= MAX_CHANNELS:
        raise InvalidInput(f"cannot make a waveform of audio with {channels} channels (1-{MAX_CHANNELS})")


@dataclass(frozen=True, eq=False)
class PreparedSignal:
    """What the per-pixel min/max runs over, one column per output channel, plus how to finish the extremes:
    'convert' (raw floats: apply the int16 conversion) or 'mix' (sums of int16 values: divide by `divisor`,
    truncating toward zero). Both finishes are monotonic, so min/max commute with them."""

    values: np.ndarray  # float32, frames x output channels
    finish: Literal["convert", "mix"]
    integer_pcm: bool
    divisor: int
    frames = Axis("values", 0)
    channels = Axis("values", 1)


def prepare(samples: np.ndarray, *, integer_pcm: bool, split_channels: bool = False) -> PreparedSignal:
    """The signal to summarise: the channels as they are (split, or mono input), or their int16 sum (mixed)."""
    x = as_frames(samples)
    channels = x.shape[1]
    check_channels(channels)
    x = x.astype(np.float32, copy=False)
    if split_channels or channels == 1:
        return PreparedSignal(x, "convert", integer_pcm, 1)
    # In chunks, so the temporaries stay small and warm in cache instead of page-faulting in 100 MB at a time.
    frames = x.shape[0]
    total = np.empty((frames, 1), dtype=np.float32)
    for start in range(0, frames, CHUNK_FRAMES):
        stop = min(frames, start + CHUNK_FRAMES)
        mix_into(total[start:stop, 0], x[start:stop], integer_pcm)
    return PreparedSignal(total, "mix", integer_pcm, channels)


CHUNK_FRAMES = 1 << 18


def mix_into(out: np.ndarray, x: np.ndarray, integer_pcm: bool) -> None:
    """The int16 sum of the channels of `x` (frames x channels float32) into `out` (frames). Each channel becomes
    int16 before the sum, as in audiowaveform. |sum| <= 24 x 32768 < 2^24: exact in float32, in any order."""
    out[:] = _convert(x[:, 0], integer_pcm)
    for channel in range(1, x.shape[1]):
        out += _convert(x[:, channel], integer_pcm)


def finish_prepared(prepared: PreparedSignal, extremes: np.ndarray) -> np.ndarray:
    return finish_extremes(extremes, prepared.finish, prepared.integer_pcm, prepared.divisor)


def finish_extremes(
    extremes: np.ndarray, finish: Literal["convert", "mix"], integer_pcm: bool, divisor: int
) -> np.ndarray:
    """int16 values of prepared extremes. Element-wise, so finishing pixels in batches changes nothing."""
    if finish == "convert":
        return _convert(extremes.astype(np.float32), integer_pcm).astype(np.int16)
    # C integer division truncates toward zero; the sums are exact integers, float64 division then trunc is exact.
    return np.trunc(extremes.astype(np.float64) / divisor).astype(np.int16)


# ---------------------------------------------------------------- the waveform


@dataclass(frozen=True, eq=False)
class Waveform:
    """Per-pixel int16 minima and maxima, `length` x `channels` each."""

    sample_rate: int
    samples_per_pixel: int
    mins: np.ndarray
    maxs: np.ndarray
    length = Axis("mins", 0)
    channels = Axis("mins", 1)

    @property
    def pixels_per_second(self) -> float:
        return self.sample_rate / self.samples_per_pixel

    def data(self, bits: Bits = 16) -> np.ndarray:
        """Interleaved as audiowaveform stores it: per pixel, per channel, min then max."""
        _check_bits(bits)
        pairs = np.stack([self.mins, self.maxs], axis=2).reshape(-1).astype(np.int32)
        if bits == 8:
            pairs = np.trunc(pairs / 256.0).astype(np.int32)  # C's int / 256: toward zero
        return pairs

    def to_json(self, bits: Bits = 16) -> str:
        """audiowaveform's JSON, byte for byte: keys in its order, no spaces, one line and a newline."""
        values = ",".join(map(str, self.data(bits).tolist()))
        return (
            f'{{"version":2,"channels":{self.channels},"sample_rate":{self.sample_rate},'
            f'"samples_per_pixel":{self.samples_per_pixel},"bits":{bits},"length":{self.length},'
            f'"data":[{values}]}}\n'
        )

    def to_dat(self, bits: Bits = 16) -> bytes:
        """audiowaveform's binary format, little-endian: version 1 (mono) or 2 (with a channel count), flags
        (bit 0 = 8-bit), sample rate, samples per pixel, length, then the interleaved data."""
        _check_bits(bits)
        version = 1 if self.channels == 1 else 2
        header = struct.pack(
            "<iIiiI", version, FLAG_8_BIT if bits == 8 else 0, self.sample_rate, self.samples_per_pixel, self.length
        )
        if version == 2:
            header += struct.pack("<i", self.channels)
        return header + self.data(bits).astype("<i1" if bits == 8 else "<i2").tobytes()

    def to_png(self, width: int = 1800, height: int = 280) -> bytes:
        return waveform_png.render_png(self.mins, self.maxs, width, height)


def _check_bits(bits: int) -> None:
    if bits not in (8, 16):
        raise InvalidInput(f"bits must be 8 or 16, not {bits}")


def summarize(prepared: PreparedSignal, sample_rate: int, spp: int) -> Waveform:
    """Min and max of every `spp` frames, the last partial pixel included (reduceat's last segment runs to the
    end), channel by channel: a reduction along a strided column is 30x faster than over a 3-D view's middle axis."""
    if spp < MIN_SAMPLES_PER_PIXEL:
        raise InvalidInput(f"samples per pixel must be at least {MIN_SAMPLES_PER_PIXEL}")
    values = prepared.values
    frames, channels = values.shape
    starts = np.arange(0, frames, spp)
    mins = np.empty((len(starts), channels), dtype=np.float32)
    maxs = np.empty((len(starts), channels), dtype=np.float32)
    if frames:
        for channel in range(channels):
            column = values[:, channel]
            mins[:, channel] = np.minimum.reduceat(column, starts)
            maxs[:, channel] = np.maximum.reduceat(column, starts)
    return Waveform(int(sample_rate), int(spp), finish_prepared(prepared, mins), finish_prepared(prepared, maxs))


class Blocks:
    """Min and max of consecutive blocks of `size` frames of a signal fed in pieces of any length (frames x
    channels float32): the block in progress is carried from one piece to the next."""

    def __init__(self, channels: int, size: int) -> None:
        self.size = size
        self.count = 0  # frames in the block in progress
        self.low = np.full(channels, np.inf, dtype=np.float32)
        self.high = np.full(channels, -np.inf, dtype=np.float32)

    def reset(self) -> None:
        self.count = 0
        self.low.fill(np.inf)
        self.high.fill(-np.inf)

    def feed(self, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The blocks this piece completes, oldest first: (mins, maxs), k x channels each, k possibly 0."""
        frames, channels = values.shape
        lows: list[np.ndarray] = []
        highs: list[np.ndarray] = []
        start = 0
        if self.count and frames:
            start = min(self.size - self.count, frames)
            head = values[:start]
            np.minimum(self.low, head.min(axis=0), out=self.low)
            np.maximum(self.high, head.max(axis=0), out=self.high)
            self.count += start
            if self.count == self.size:
                lows.append(self.low[None].copy())
                highs.append(self.high[None].copy())
                self.reset()
        rest = frames - start
        if rest:
            # reduceat's last segment runs to the end: the partial block, which becomes the one in progress.
            starts = np.arange(start, frames, self.size)
            low = np.empty((len(starts), channels), dtype=np.float32)
            high = np.empty((len(starts), channels), dtype=np.float32)
            for channel in range(channels):  # a strided column: 30x faster than reducing a 3-D view's middle axis
                column = values[:, channel]
                low[:, channel] = np.minimum.reduceat(column, starts)
                high[:, channel] = np.maximum.reduceat(column, starts)
            full = rest // self.size
            if rest % self.size:
                self.low[:], self.high[:], self.count = low[full], high[full], rest % self.size
            lows.append(low[:full])
            highs.append(high[:full])
        if not lows:
            empty = np.empty((0, channels), dtype=np.float32)
            return empty, empty
        if len(lows) == 1:
            return lows[0], highs[0]
        return np.concatenate(lows), np.concatenate(highs)
