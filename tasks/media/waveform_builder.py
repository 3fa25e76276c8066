"""The waveform and a whole-track PNG of audio fed in chunks, in bounded memory (see `tasks.media.waveform` for
audiowaveform's arithmetic).

`WaveformBuilder` takes the audio in chunks of any size and holds only the output pixels (20 px/s) and a bounded
envelope for the PNG, never the frames: a pixel in progress is carried from one chunk to the next, so the result is
byte-identical to the whole-array path whatever the chunking. The PNG cannot use ceil(frames / width) samples per
column (the length is unknown until the end; a header can lie), so the builder keeps a min/max envelope whose
block size doubles (adjacent blocks merged) whenever it outgrows a few times the image width, and maps it onto the
columns at the end. `compute` and `whole_track_png` run on the same machinery.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import numpy as np

from roadie.errors import InvalidInput
from tasks.media import waveform_png
from tasks.media.pcm import as_chunk, as_frames
from tasks.media.waveform import (
    CHUNK_FRAMES,
    MIN_SAMPLES_PER_PIXEL,
    Blocks,
    PreparedSignal,
    Waveform,
    check_channels,
    finish_extremes,
    finish_prepared,
    mix_into,
)

PNG_CAPACITY = 4  # envelope blocks kept per PNG column: the block size is then at most half a column
_STAGE_FRAMES = 1024  # tiny chunks are gathered up to this many frames, so 1-frame feeding costs a copy, not a pass
_TINY_CHUNK = 64


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
        self.blocks = Blocks(channels, MIN_SAMPLES_PER_PIXEL)

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
        check_channels(channels)
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
        self._blocks = Blocks(out_channels, self.samples_per_pixel)
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
            for start in range(0, frames, CHUNK_FRAMES):  # bounded temporaries, warm in cache
                self._process(x[start : start + CHUNK_FRAMES])
        self._frames += frames

    def _flush(self) -> None:
        if self._staged:
            self._process(self._stage[: self._staged])
            self._staged = 0

    def _process(self, x: np.ndarray) -> None:
        x = x.astype(np.float32, copy=False)
        if self._finish_kind == "mix":
            values = np.empty((len(x), 1), dtype=np.float32)
            mix_into(values[:, 0], x, self.integer_pcm)
        else:
            values = x
        mins, maxs = self._blocks.feed(values)
        if len(mins):
            self._pixels.append(self._finished(mins), self._finished(maxs))
        if self._envelope is not None:
            self._envelope.feed(values)

    def _finished(self, extremes: np.ndarray) -> np.ndarray:
        return finish_extremes(extremes, self._finish_kind, self.integer_pcm, self._divisor)

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
        return _envelope_png(self._envelope, width, height, self._finished)


def whole_track_png(prepared: PreparedSignal, sample_rate: int, width: int = 1800, height: int = 280) -> bytes:
    """A PNG of the whole track (not the first 1800 x 256 samples, the original design's bug), drawn as
    `WaveformBuilder.png` draws it. The picture does not depend on `sample_rate`."""
    if width < 1 or height < 2:
        raise InvalidInput("the image must be at least 1 x 2 pixels")
    envelope = _Envelope(prepared.channels, PNG_CAPACITY * width)
    for start in range(0, prepared.frames, CHUNK_FRAMES):
        envelope.feed(prepared.values[start : start + CHUNK_FRAMES])
    return _envelope_png(envelope, width, height, lambda extremes: finish_prepared(prepared, extremes))


def _envelope_png(envelope: _Envelope, width: int, height: int, finish: Callable[[np.ndarray], np.ndarray]) -> bytes:
    """The envelope mapped onto `width` columns, then drawn by `render_png` (one data pixel per column)."""
    if width < 1 or height < 2:
        raise InvalidInput("the image must be at least 1 x 2 pixels")
    if not envelope.frames:
        empty = np.empty((0, envelope.low.shape[1]), dtype=np.int16)
        return waveform_png.render_png(empty, empty, width, height)
    low, high = envelope.columns(width)
    return waveform_png.render_png(finish(low), finish(high), width, height)
