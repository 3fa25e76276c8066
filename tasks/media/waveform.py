"""Waveform data compatible with BBC audiowaveform 1.10 (JSON v2 and the binary .dat), and a PNG of the whole
track, made either from the whole decoded array or streamed chunk by chunk in bounded memory.

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

`WaveformBuilder` takes the audio in chunks of any size and holds only the output pixels (20 px/s) and a bounded
envelope for the PNG, never the frames: a pixel in progress is carried from one chunk to the next, so the result is
byte-identical to the whole-array path whatever the chunking. The PNG cannot use ceil(frames / width) samples per
column (the length is unknown until the end; a header can lie), so the builder keeps a min/max envelope whose
block size doubles (adjacent blocks merged) whenever it outgrows a few times the image width, and maps it onto the
columns at the end. `compute` and `whole_track_png` run on the same machinery.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np

from roadie.errors import InvalidInput
from tasks.media.pcm import Axis, as_chunk, as_frames

INT16_MIN, INT16_MAX = -32768, 32767
MIN_SAMPLES_PER_PIXEL = 2  # audiowaveform: "Invalid zoom: minimum 2"
MAX_CHANNELS = 24  # audiowaveform's WaveformBuffer::MAX_CHANNELS
DEFAULT_ZOOM = 256  # audiowaveform's default samples per pixel
FLAG_8_BIT = 0x1

# The PNG palette: a calm blue wave on a near-white ground, with a faint centre line.
BACKGROUND = (250, 250, 252)
WAVE = (46, 110, 190)
AXIS = (200, 205, 215)

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
    and small inputs; `compute` avoids converting every sample."""
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


def _check_channels(channels: int) -> None:
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
    _check_channels(channels)
    x = x.astype(np.float32, copy=False)
    if split_channels or channels == 1:
        return PreparedSignal(x, "convert", integer_pcm, 1)
    # In chunks, so the temporaries stay small and warm in cache instead of page-faulting in 100 MB at a time.
    frames = x.shape[0]
    total = np.empty((frames, 1), dtype=np.float32)
    for start in range(0, frames, _CHUNK_FRAMES):
        stop = min(frames, start + _CHUNK_FRAMES)
        _mix_into(total[start:stop, 0], x[start:stop], integer_pcm)
    return PreparedSignal(total, "mix", integer_pcm, channels)


_CHUNK_FRAMES = 1 << 18


def _mix_into(out: np.ndarray, x: np.ndarray, integer_pcm: bool) -> None:
    """The int16 sum of the channels of `x` (frames x channels float32) into `out` (frames). Each channel becomes
    int16 before the sum, as in audiowaveform. |sum| <= 24 x 32768 < 2^24: exact in float32, in any order."""
    out[:] = _convert(x[:, 0], integer_pcm)
    for channel in range(1, x.shape[1]):
        out += _convert(x[:, channel], integer_pcm)


def _finish(prepared: PreparedSignal, extremes: np.ndarray) -> np.ndarray:
    return _finish_extremes(extremes, prepared.finish, prepared.integer_pcm, prepared.divisor)


def _finish_extremes(
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
        return render_png(self, width, height)


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
    return Waveform(int(sample_rate), int(spp), _finish(prepared, mins), _finish(prepared, maxs))


def compute(
    samples: np.ndarray, sample_rate: int, spp: int, *, integer_pcm: bool, split_channels: bool = False
) -> Waveform:
    """The waveform audiowaveform would make of these samples at `spp` samples per pixel."""
    x = as_frames(samples)
    builder = WaveformBuilder(
        sample_rate, x.shape[1], spp, integer_pcm=integer_pcm, split_channels=split_channels, png_width=None
    )
    builder.feed(x)
    return builder.finish()


# ---------------------------------------------------------------- streaming


class _Blocks:
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


class _Envelope:
    """A min/max envelope of the whole signal in at most `capacity` blocks, whatever its length: the block size
    starts at 2 frames (the least `fit_samples_per_pixel` gives, so a stretched short track still shows both
    extremes per column) and doubles (adjacent blocks merged) as the signal grows. Block i always covers frames
    [i * size, (i + 1) * size), so the final envelope depends on the length only, not on how it was fed."""

    def __init__(self, channels: int, capacity: int) -> None:
        self.capacity = capacity
        self.frames = 0
        self.length = 0  # complete blocks in low/high
        self.low = np.empty((capacity, channels), dtype=np.float32)
        self.high = np.empty((capacity, channels), dtype=np.float32)
        self.blocks = _Blocks(channels, MIN_SAMPLES_PER_PIXEL)

    @property
    def nbytes(self) -> int:
        return self.low.nbytes + self.high.nbytes + self.blocks.low.nbytes + self.blocks.high.nbytes

    def feed(self, values: np.ndarray) -> None:
        frames = self.frames + len(values)
        size = self.blocks.size
        while -(-frames // size) > self.capacity:  # coarsen first, so the piece is reduced once at the final size
            size *= 2
        if size != self.blocks.size:
            self._coarsen(size // self.blocks.size)
        low, high = self.blocks.feed(values)
        self.low[self.length : self.length + len(low)] = low
        self.high[self.length : self.length + len(high)] = high
        self.length += len(low)
        self.frames = frames

    def _coarsen(self, factor: int) -> None:
        """Blocks `factor` times longer: groups of `factor` complete blocks merge; a trailing incomplete group joins
        the block in progress (its frames come just before it)."""
        blocks, n = self.blocks, self.length
        full, left = divmod(n, factor)
        if n:
            starts = np.arange(0, n, factor)
            low = np.minimum.reduceat(self.low[:n], starts, axis=0)
            high = np.maximum.reduceat(self.high[:n], starts, axis=0)
            if left:
                np.minimum(blocks.low, low[full], out=blocks.low)
                np.maximum(blocks.high, high[full], out=blocks.high)
                blocks.count += left * blocks.size
            self.low[:full], self.high[:full] = low[:full], high[:full]
        self.length = full
        blocks.size *= factor

    def columns(self, width: int) -> tuple[np.ndarray, np.ndarray]:
        """Per image column (width x channels), the min and max of the blocks starting in its time span
        [j * frames / width, (j + 1) * frames / width); a column where none starts (short tracks, stretched) takes
        the block covering its start. Each block is at most half a column long once the track is longer than the
        envelope's capacity, so a sound lands within a column of its place."""
        low, high = self.low[: self.length], self.high[: self.length]
        if self.blocks.count:
            low = np.concatenate([low, self.blocks.low[None]])
            high = np.concatenate([high, self.blocks.high[None]])
        starts = np.arange(len(low), dtype=np.int64) * self.blocks.size
        column_of_block = starts * width // max(self.frames, 1)
        wanted = np.arange(width)
        first = np.searchsorted(column_of_block, wanted, side="left")
        last = np.searchsorted(column_of_block, wanted, side="right")
        filled = last > first
        # Blocks in order, so the filled columns' first blocks partition them: reduceat's segments end at the next.
        out_low = low[np.maximum(first - 1, 0)]
        out_high = high[np.maximum(first - 1, 0)]
        out_low[filled] = np.minimum.reduceat(low, first[filled], axis=0)
        out_high[filled] = np.maximum.reduceat(high, first[filled], axis=0)
        return out_low, out_high


class _Pixels:
    """The output pixels (int16, pixels x channels), in arrays that double when full: O(pixels), never O(frames)."""

    def __init__(self, channels: int) -> None:
        self.length = 0
        self.mins = np.empty((64, channels), dtype=np.int16)
        self.maxs = np.empty((64, channels), dtype=np.int16)

    def append(self, mins: np.ndarray, maxs: np.ndarray) -> None:
        end = self.length + len(mins)
        if end > len(self.mins):
            self.mins = self._grown(self.mins, end)
            self.maxs = self._grown(self.maxs, end)
        self.mins[self.length : end] = mins
        self.maxs[self.length : end] = maxs
        self.length = end

    def _grown(self, array: np.ndarray, needed: int) -> np.ndarray:
        grown = np.empty((max(needed, 2 * len(array)), array.shape[1]), dtype=np.int16)
        grown[: self.length] = array[: self.length]
        return grown


PNG_CAPACITY = 4  # envelope blocks kept per PNG column: the block size is then at most half a column
_STAGE_FRAMES = 1024  # tiny chunks are gathered up to this many frames, so 1-frame feeding costs a copy, not a pass
_TINY_CHUNK = 64


class WaveformBuilder:
    """The waveform (and a whole-track PNG) of audio fed in chunks of any size, in memory bounded by the output
    pixels plus a fixed envelope: identical to `compute` on the whole array for any chunking."""

    def __init__(
        self,
        sample_rate: int,
        channels: int,
        samples_per_pixel: int,
        *,
        integer_pcm: bool,
        split_channels: bool = False,
        png_width: int | None = 1800,
    ) -> None:
        _check_channels(channels)
        if samples_per_pixel < MIN_SAMPLES_PER_PIXEL:
            raise InvalidInput(f"samples per pixel must be at least {MIN_SAMPLES_PER_PIXEL}")
        if png_width is not None and png_width < 1:
            raise InvalidInput("the image width must be at least 1 pixel")
        self.sample_rate = int(sample_rate)
        self.channels = int(channels)
        self.samples_per_pixel = int(samples_per_pixel)
        self.integer_pcm = integer_pcm
        self.png_width = png_width
        mixed = not split_channels and channels > 1
        self._finish_kind: Literal["convert", "mix"] = "mix" if mixed else "convert"
        self._divisor = self.channels if mixed else 1
        out_channels = 1 if mixed else self.channels
        self._blocks = _Blocks(out_channels, self.samples_per_pixel)
        self._pixels = _Pixels(out_channels)
        self._envelope = _Envelope(out_channels, PNG_CAPACITY * png_width) if png_width is not None else None
        self._stage = np.empty((_STAGE_FRAMES, self.channels), dtype=np.float32)
        self._staged = 0
        self._frames = 0
        self._result: Waveform | None = None

    @property
    def frames(self) -> int:
        """Frames fed so far."""
        return self._frames

    @property
    def working_nbytes(self) -> int:
        """Bytes held besides the output pixels (the envelope, the pixel in progress, the tiny-chunk stage): fixed
        by the channel count and png_width, whatever the length of the track."""
        blocks = self._blocks.low.nbytes + self._blocks.high.nbytes
        return blocks + self._stage.nbytes + (self._envelope.nbytes if self._envelope is not None else 0)

    def feed(self, chunk: np.ndarray) -> None:
        """The next frames: frames x channels (1-D for mono), any number of them, 0 included."""
        if self._result is not None:
            raise RuntimeError("feed() after finish()")
        x = as_chunk(chunk, self.channels)
        frames = x.shape[0]
        if frames < _TINY_CHUNK:
            # Per-chunk overhead is a few numpy calls per stage: gather tiny chunks and process them together.
            if self._staged + frames > _STAGE_FRAMES:
                self._flush()
            self._stage[self._staged : self._staged + frames] = x
            self._staged += frames
        else:
            self._flush()
            for start in range(0, frames, _CHUNK_FRAMES):  # bounded temporaries, warm in cache
                self._process(x[start : start + _CHUNK_FRAMES])
        self._frames += frames

    def _flush(self) -> None:
        if self._staged:
            self._process(self._stage[: self._staged])
            self._staged = 0

    def _process(self, x: np.ndarray) -> None:
        x = x.astype(np.float32, copy=False)
        if self._finish_kind == "mix":
            values = np.empty((len(x), 1), dtype=np.float32)
            _mix_into(values[:, 0], x, self.integer_pcm)
        else:
            values = x
        mins, maxs = self._blocks.feed(values)
        if len(mins):
            self._pixels.append(self._finished(mins), self._finished(maxs))
        if self._envelope is not None:
            self._envelope.feed(values)

    def _finished(self, extremes: np.ndarray) -> np.ndarray:
        return _finish_extremes(extremes, self._finish_kind, self.integer_pcm, self._divisor)

    def finish(self) -> Waveform:
        """The waveform at samples_per_pixel, the partial last pixel included. Idempotent; no feeding after it."""
        if self._result is None:
            self._flush()
            blocks = self._blocks
            if blocks.count:
                self._pixels.append(self._finished(blocks.low[None]), self._finished(blocks.high[None]))
                blocks.reset()
            pixels = self._pixels
            self._result = Waveform(
                self.sample_rate,
                self.samples_per_pixel,
                pixels.mins[: pixels.length].copy(),
                pixels.maxs[: pixels.length].copy(),
            )
            self._pixels = _Pixels(pixels.mins.shape[1])  # the result holds its own copy
        return self._result

    def png(self, width: int = 1800, height: int = 280) -> bytes:
        """The whole track, left to right in proportion, one band per output channel. After finish()."""
        if self._result is None:
            raise RuntimeError("png() before finish()")
        if self._envelope is None or self.png_width is None:
            raise InvalidInput("this builder keeps no PNG envelope (png_width=None)")
        if not 1 <= width <= self.png_width:
            raise InvalidInput(f"the image width must be 1-{self.png_width} pixels (png_width), not {width}")
        return _envelope_png(self._envelope, self.sample_rate, width, height, self._finished)


# ---------------------------------------------------------------- the picture


def render_png(waveform: Waveform, width: int = 1800, height: int = 280) -> bytes:
    """The waveform stretched over the whole image, one band per channel. Make the waveform with
    `fit_samples_per_pixel(frames, width)` so each column is one pixel of data."""
    from PIL import Image  # noqa: PLC0415 - Pillow (~10 ms) only for a PNG; `roadie analyze` draws none

    if width < 1 or height < 2:
        raise InvalidInput("the image must be at least 1 x 2 pixels")
    image = np.empty((height, width, 3), dtype=np.uint8)
    image[:] = BACKGROUND
    if waveform.length:
        columns = np.minimum(np.arange(width) * waveform.length // width, waveform.length - 1)
        bands = _band_edges(height, waveform.channels)
        for channel, (top, bottom) in enumerate(bands):
            band_height = bottom - top
            centre = top + (band_height - 1) / 2
            image[round(centre), :] = AXIS
            scale = (band_height - 1) / 65535.0
            upper = np.floor(top + (INT16_MAX - waveform.maxs[columns, channel].astype(np.float64)) * scale)
            lower = np.ceil(top + (INT16_MAX - waveform.mins[columns, channel].astype(np.float64)) * scale)
            rows = np.arange(top, bottom)[:, None]
            mask = (rows >= upper[None, :]) & (rows <= lower[None, :])
            image[top:bottom][mask] = WAVE
    buffer = io.BytesIO()
    Image.fromarray(image, "RGB").save(buffer, format="PNG", optimize=False, compress_level=6)
    return buffer.getvalue()


def _band_edges(height: int, channels: int) -> list[tuple[int, int]]:
    edges = [round(i * height / channels) for i in range(channels + 1)]
    return [(edges[i], edges[i + 1]) for i in range(channels) if edges[i + 1] - edges[i] >= 2] or [(0, height)]


def whole_track_png(prepared: PreparedSignal, sample_rate: int, width: int = 1800, height: int = 280) -> bytes:
    """A PNG of the whole track (not the first 1800 x 256 samples, the original design's bug), drawn as
    `WaveformBuilder.png` draws it."""
    if width < 1 or height < 2:
        raise InvalidInput("the image must be at least 1 x 2 pixels")
    envelope = _Envelope(prepared.channels, PNG_CAPACITY * width)
    for start in range(0, prepared.frames, _CHUNK_FRAMES):
        envelope.feed(prepared.values[start : start + _CHUNK_FRAMES])
    return _envelope_png(envelope, sample_rate, width, height, lambda extremes: _finish(prepared, extremes))


def _envelope_png(
    envelope: _Envelope, sample_rate: int, width: int, height: int, finish: Callable[[np.ndarray], np.ndarray]
) -> bytes:
    """The envelope mapped onto `width` columns, then drawn by `render_png` (one data pixel per column)."""
    if width < 1 or height < 2:
        raise InvalidInput("the image must be at least 1 x 2 pixels")
    channels = envelope.low.shape[1]
    spp = fit_samples_per_pixel(max(envelope.frames, 1), width)  # nominal: what each column stands for
    if not envelope.frames:
        empty = np.empty((0, channels), dtype=np.int16)
        return render_png(Waveform(int(sample_rate), spp, empty, empty), width, height)
    low, high = envelope.columns(width)
    return render_png(Waveform(int(sample_rate), spp, finish(low), finish(high)), width, height)
