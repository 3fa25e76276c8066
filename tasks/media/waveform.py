"""Waveform data compatible with BBC audiowaveform 1.10 (JSON v2 and the binary .dat), and a PNG of the whole
track.

audiowaveform's arithmetic, reproduced exactly:
- samples are int16: integer PCM (WAV, FLAC) as libsndfile reads it (the top 16 bits, i.e. floor(x * 32768) of
  ffmpeg's exact float decode), float PCM multiplied by 32767 in float32 and truncated;
- without --split-channels, channels are mixed by summing the int16 values and dividing by the channel count with
  C truncation toward zero (-3 / 2 = -1);
- a pixel is the min and max of `samples_per_pixel` frames; a partial last pixel is kept, so
  length = ceil(frames / samples_per_pixel);
- 8-bit output is the int16 value / 256, truncated toward zero (-255 -> 0), not >> 8.

Every conversion above is monotonic, so min/max are taken on the float signal first (one vectorised reshape per
pixel row) and only the per-pixel extremes are converted: 240 s of 48 kHz stereo takes a few tens of ms.
"""
from __future__ import annotations

import io
import struct
from dataclasses import dataclass
from typing import Literal

import numpy as np

from roadie.errors import InvalidInput

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
        raise InvalidInput(f"{pixels_per_second} pixels per second is {spp} samples per pixel at {sample_rate} Hz; "
                           f"the minimum is {MIN_SAMPLES_PER_PIXEL} (use at most "
                           f"{sample_rate // MIN_SAMPLES_PER_PIXEL} pixels per second)")
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


@dataclass(frozen=True, eq=False)
class PreparedSignal:
    """What the per-pixel min/max runs over, one column per output channel, plus how to finish the extremes:
    'convert' (raw floats: apply the int16 conversion) or 'mix' (sums of int16 values: divide by `divisor`,
    truncating toward zero). Both finishes are monotonic, so min/max commute with them."""

    values: np.ndarray  # float32, frames x output channels
    finish: Literal["convert", "mix"]
    integer_pcm: bool
    divisor: int

    @property
    def frames(self) -> int:
        return int(self.values.shape[0])

    @property
    def channels(self) -> int:
        return int(self.values.shape[1])


def prepare(samples: np.ndarray, *, integer_pcm: bool, split_channels: bool = False) -> PreparedSignal:
    """The signal to summarise: the channels as they are (split, or mono input), or their int16 sum (mixed)."""
    x = np.asarray(samples)
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim != 2:
        raise ValueError(f"samples must be frames x channels, got shape {x.shape}")
    channels = x.shape[1]
    if not 1 <= channels <= MAX_CHANNELS:
        raise InvalidInput(f"cannot make a waveform of audio with {channels} channels (1-{MAX_CHANNELS})")
    x = x.astype(np.float32, copy=False)
    if split_channels or channels == 1:
        return PreparedSignal(x, "convert", integer_pcm, 1)
    # Each channel becomes int16 before the sum, as in audiowaveform. |sum| <= 24 x 32768 < 2^24: exact in float32.
    # In chunks, so the temporaries stay small and warm in cache instead of page-faulting in 100 MB at a time.
    frames = x.shape[0]
    total = np.empty(frames, dtype=np.float32)
    for start in range(0, frames, _CHUNK_FRAMES):
        stop = min(frames, start + _CHUNK_FRAMES)
        out = total[start:stop]
        out[:] = _convert(x[start:stop, 0], integer_pcm)
        for channel in range(1, channels):
            out += _convert(x[start:stop, channel], integer_pcm)
    return PreparedSignal(total[:, None], "mix", integer_pcm, channels)


_CHUNK_FRAMES = 1 << 18


def _finish(prepared: PreparedSignal, extremes: np.ndarray) -> np.ndarray:
    if prepared.finish == "convert":
        return _convert(extremes.astype(np.float32), prepared.integer_pcm).astype(np.int16)
    # C integer division truncates toward zero; the sums are exact integers, float64 division then trunc is exact.
    return np.trunc(extremes.astype(np.float64) / prepared.divisor).astype(np.int16)


# ---------------------------------------------------------------- the waveform


@dataclass(frozen=True, eq=False)
class Waveform:
    """Per-pixel int16 minima and maxima, `length` x `channels` each."""

    sample_rate: int
    samples_per_pixel: int
    mins: np.ndarray
    maxs: np.ndarray

    @property
    def channels(self) -> int:
        return int(self.mins.shape[1])

    @property
    def length(self) -> int:
        return int(self.mins.shape[0])

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
        return (f'{{"version":2,"channels":{self.channels},"sample_rate":{self.sample_rate},'
                f'"samples_per_pixel":{self.samples_per_pixel},"bits":{bits},"length":{self.length},'
                f'"data":[{values}]}}\n')

    def to_dat(self, bits: Bits = 16) -> bytes:
        """audiowaveform's binary format, little-endian: version 1 (mono) or 2 (with a channel count), flags
        (bit 0 = 8-bit), sample rate, samples per pixel, length, then the interleaved data."""
        _check_bits(bits)
        version = 1 if self.channels == 1 else 2
        header = struct.pack("<iIiiI", version, FLAG_8_BIT if bits == 8 else 0, self.sample_rate,
                             self.samples_per_pixel, self.length)
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


def compute(samples: np.ndarray, sample_rate: int, spp: int, *, integer_pcm: bool,
            split_channels: bool = False) -> Waveform:
    """The waveform audiowaveform would make of these samples at `spp` samples per pixel."""
    return summarize(prepare(samples, integer_pcm=integer_pcm, split_channels=split_channels), sample_rate, spp)


# ---------------------------------------------------------------- the picture


def render_png(waveform: Waveform, width: int = 1800, height: int = 280) -> bytes:
    """The waveform stretched over the whole image, one band per channel. Make the waveform with
    `fit_samples_per_pixel(frames, width)` so each column is one pixel of data."""
    from PIL import Image

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
            image[int(round(centre)), :] = AXIS
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
    """A PNG of the whole track (not the first 1800 x 256 samples, the original design's bug)."""
    spp = fit_samples_per_pixel(max(prepared.frames, 1), width)
    return render_png(summarize(prepared, sample_rate, spp), width, height)

