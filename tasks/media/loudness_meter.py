"""The numpy loudness meter that cross-checks ffmpeg's: `LoudnessMeter`, fed chunk by chunk in bounded memory
(hour-long uploads), with BS.1770 Annex 2 true peak; `measure_pcm` feeds it a decoded array. The gating
arithmetic is in `tasks.media.loudness_gating`; ffmpeg's reading and the comparison in `tasks.media.loudness`.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Sequence
from functools import lru_cache

import numpy as np
from threadpoolctl import ThreadpoolController

from tasks.media.loudness import LoudnessReading
from tasks.media.loudness_gating import (
    block_loudness,
    channel_weights,
    integrated_loudness,
    k_weighting_sos,
    loudness_range,
    subblock_bounds,
)
from tasks.media.pcm import as_chunk, as_frames

# scipy (~0.5 s) is imported inside the functions that meter: `roadie waveform` never meters.

TRUE_PEAK_TARGET_RATE = 192_000


@lru_cache(maxsize=16)
def _oversampler(factor: int, block: int) -> tuple[np.ndarray, int]:
    """A Toeplitz matrix that computes `block` outputs of every non-trivial polyphase branch at once.

    The interpolation filter is resample_poly's (Kaiser, beta 5, 10 zero crossings per side): its phase 0 is the
    original samples, so only phases 1..factor-1 are computed and the sample peak covers phase 0."""
    from scipy.signal import firwin  # noqa: PLC0415 - scipy (~0.5 s): `roadie waveform` never needs it

    half_len = 10 * factor
    taps = firwin(2 * half_len + 1, 1.0 / factor, window=("kaiser", 5.0)) * factor
    phases = [taps[p::factor] for p in range(1, factor)]
    width = max(len(p) for p in phases)
    matrix = np.zeros((block + width - 1, len(phases) * block), dtype=np.float32)
    for index, phase in enumerate(phases):
        reversed_phase = np.pad(phase, (0, width - len(phase)))[::-1]
        for i in range(block):
            matrix[i : i + width, index * block + i] = reversed_phase
    matrix.setflags(write=False)  # shared by every meter at this rate
    return matrix, width


@lru_cache(maxsize=1)
def _blas_controller() -> ThreadpoolController:
    """threadpoolctl's scan of the loaded libraries costs ~0.6 ms; the meter limits BLAS once per 64 k frames, so
    the scan is done once. BLAS is loaded with numpy, before the first call."""
    return ThreadpoolController()


def _single_threaded_blas():
    """These products are small: a second BLAS thread only spins against ffmpeg and the transcodes for the other
    core (measured 5x slower on a busy 2-core machine)."""
    return _blas_controller().limit(limits=1, user_api="blas")


class _TruePeak:
    """BS.1770 Annex 2 true peak, fed chunk by chunk: oversample to at least 192 kHz (4x at 48 kHz, 5x at
    44.1 kHz) and keep the largest magnitude. The polyphase filter runs as float32 matrix products of up to
    `rows_per_product` x `block` outputs (BLAS), about 20x faster than resample_poly, and never holds the
    oversampled signal.

    Output j of the full convolution needs input samples j-width+1..j, so it is computed once sample j has
    arrived, `block` outputs at a time; the history is the width-1 samples before the first pending output plus
    the pending ones (< block). `finish` flushes the tail as if the signal were followed by zeros."""

    def __init__(self, sample_rate: int, channels: int, block: int = 16, rows_per_product: int = 4096) -> None:
        self.peak = 0.0
        self._block = block
        self._rows = rows_per_product
        factor = math.ceil(TRUE_PEAK_TARGET_RATE / sample_rate)
        self._matrix: np.ndarray | None = None
        self._width = 1
        if factor >= 2:  # at 192 kHz and up the samples are the true-peak grid already
            self._matrix, self._width = _oversampler(factor, block)
            # Reused for every product: a fresh ~1 MB pair per product costs page faults that made this 3x slower.
            self._windows = np.empty((rows_per_product, self._matrix.shape[0]), dtype=np.float32)
            self._out = np.empty((rows_per_product, self._matrix.shape[1]), dtype=np.float32)
        # Zeros before the first sample: the filter's start-up, as the whole-array meter padded it.
        self._history = np.zeros((channels, self._width - 1), dtype=np.float32)

    def feed(self, x: np.ndarray) -> None:
        """x: float32 frames x channels. The caller holds the single-threaded BLAS limit."""
        if x.shape[0] == 0:
            return
        self.peak = max(self.peak, float(x.max()), -float(x.min()))
        if self._matrix is None:
            return
        signal = np.concatenate([self._history, x.T], axis=1)  # channels x (history + frames)
        rows = (signal.shape[1] - (self._width - 1)) // self._block
        self._oversample(self._matrix, signal, rows)
        self._history = signal[:, rows * self._block :].copy()  # a copy, so the chunk itself is not kept alive

    def finish(self) -> float:
        if self._matrix is not None:
            pending = self._history.shape[1] - (self._width - 1)
            # The tail: outputs up to width-1 past the last sample, each seeing zeros beyond it. Any extra
            # outputs in the last row see only zeros and read 0.
            rows = -(-(pending + self._width - 1) // self._block)
            tail = np.zeros((self._history.shape[0], rows * self._block + self._width - 1), dtype=np.float32)
            tail[:, : self._history.shape[1]] = self._history
            with _single_threaded_blas():
                self._oversample(self._matrix, tail, rows)
            self._history = self._history[:, :0]
        return self.peak

    def _oversample(self, matrix: np.ndarray, signal: np.ndarray, rows: int) -> None:
        if rows <= 0:  # fewer than `block` outputs ready: the signal may be shorter than one window
            return
        span = matrix.shape[0]  # block + width - 1 inputs make `block` outputs of every phase
        for channel in signal:
            all_windows = np.lib.stride_tricks.sliding_window_view(channel, span)[:: self._block]
            for start in range(0, rows, self._rows):
                count = min(self._rows, rows - start)
                windows, out = self._windows[:count], self._out[:count]
                np.copyto(windows, all_windows[start : start + count])
                np.matmul(windows, matrix, out=out)
                self.peak = max(self.peak, float(out.max()), -float(out.min()))


def true_peak(samples: np.ndarray, sample_rate: int, *, block: int = 16, rows_per_chunk: int = 4096) -> float:
    """BS.1770 Annex 2 true peak of a whole signal as a linear value (see `_TruePeak`), `rows_per_chunk` x
    `block` frames per matrix product."""
    x = as_frames(samples)
    meter = _TruePeak(sample_rate, x.shape[1], block, rows_per_chunk)
    step = rows_per_chunk * block
    with _single_threaded_blas():
        for start in range(0, x.shape[0], step):
            meter.feed(np.ascontiguousarray(x[start : start + step], dtype=np.float32))
    return meter.finish()


def _db(linear: float) -> float | None:
    return 20 * math.log10(linear) if linear > 0 else None


class LoudnessMeter:
    """numpy/pyloudnorm BS.1770 meter fed chunk by chunk.

    Memory is bounded whatever the length: chunks are gathered in (or cut to) `buffer_frames`-frame slices, each
    slice is K-weighted (filter state carried over) and reduced to channel-weighted sums of squares per 100 ms
    sub-block, and the true-peak oversampler keeps only its filter history. What grows is one float per 100 ms
    (0.9 MB for 3 hours): every gating block, 400 ms for I and 3 s for LRA, is a run of whole sub-blocks, so
    `finish` builds both from these alone.
    A mono signal is measured as dual mono unless `weights` say otherwise.

        meter = LoudnessMeter(48000, 2)
        for chunk in chunks:
            meter.feed(chunk)
        reading = meter.finish()
    """

    # 64 k frames: 1-frame feeds cost a copy, not a filter call, and big chunks run at whole-array speed
    # (a multiple of the oversampler's 16-frame block, so the true peak never waits on a partial block).
    BUFFER_FRAMES = 65536

    def __init__(
        self,
        sample_rate: int,
        channels: int,
        weights: Sequence[float] | None = None,
        *,
        buffer_frames: int = BUFFER_FRAMES,
    ) -> None:
        """`buffer_frames` only trades speed for memory (the reading does not depend on it); tests shrink it
        to put slice edges inside sub-blocks and oversampler blocks."""
        if sample_rate <= 0 or channels <= 0 or buffer_frames <= 0:
            raise ValueError(
                f"need a positive sample rate, channel count and buffer, got {sample_rate} Hz, "
                f"{channels} channels, {buffer_frames} frames"
            )
        w = channel_weights(channels) if weights is None else np.asarray(weights, dtype=np.float64)
        if w.shape != (channels,):
            raise ValueError(f"{len(w)} channel weights for {channels} channels")
        self.sample_rate = sample_rate
        self.channels = channels
        self._weights = w
        sos = k_weighting_sos(sample_rate).astype(np.float32)
        self._sos = sos
        # float32 state keeps sosfilt in float32, as the whole-array meter ran it (error < 0.001 dB, 2x faster).
        self._zi = np.zeros((sos.shape[0], 2, channels), dtype=np.float32)
        self._buffer = np.empty((buffer_frames, channels), dtype=np.float32)
        self._buffered = 0
        self._frames = 0  # frames processed (K-weighted), not counting the buffer
        self._next_sub = 1  # the sub-block in progress ends at rint(_next_sub * sr / 10)
        self._partial = np.zeros(channels, dtype=np.float64)  # its per-channel sums so far
        self._energies = array("d")  # channel-weighted sums of squares of the finished sub-blocks
        self._peak = _TruePeak(sample_rate, channels)
        self._finished = False

    def feed(self, chunk: np.ndarray) -> None:
        """Add frames x channels (1-D for mono) of float samples; any number of frames, 0 included."""
        if self._finished:
            raise RuntimeError("LoudnessMeter.feed after finish")
        x = as_chunk(chunk, self.channels)
        size, start, total = self._buffer.shape[0], 0, x.shape[0]
        while start < total:
            if self._buffered == 0 and total - start >= size:
                # A whole slice: straight from the chunk, converted a slice at a time (no float32 copy of it all).
                self._process(np.ascontiguousarray(x[start : start + size], dtype=np.float32))
                start += size
                continue
            take = min(size - self._buffered, total - start)
            self._buffer[self._buffered : self._buffered + take] = x[start : start + take]
            self._buffered += take
            start += take
            if self._buffered == size:
                self._process(self._buffer)
                self._buffered = 0

    def finish(self) -> LoudnessReading:
        """The reading of everything fed. Call once; silence or no input gives None where nothing is measurable."""
        if self._finished:
            raise RuntimeError("LoudnessMeter.finish called twice")
        if self._buffered:
            self._process(self._buffer[: self._buffered])
            self._buffered = 0
        self._finished = True
        if self._frames == 0:
            return LoudnessReading(None, None, None)
        peak_db = _db(self._peak.finish())
        # A trailing partial sub-block is dropped. With a half-frame sub-block length (e.g. 11025 Hz) rint can
        # close one more sub-block than frames * 10 // sr; the whole-array meter counted by the latter.
        n_sub = self._frames * 10 // self.sample_rate
        energies = np.frombuffer(self._energies, dtype=np.float64)[:n_sub]
        running = np.concatenate([[0.0], np.cumsum(energies)])
        bounds = subblock_bounds(0, n_sub, self.sample_rate)
        integrated = integrated_loudness(*block_loudness(running, bounds, 4))
        if integrated is None:
            return LoudnessReading(None, None, peak_db)
        return LoudnessReading(integrated, loudness_range(*block_loudness(running, bounds, 30)), peak_db)

    def _process(self, x: np.ndarray) -> None:
        """K-weight a float32 slice, fold its squares into 100 ms sub-blocks and feed the true peak."""
        from scipy.signal import sosfilt  # noqa: PLC0415 - scipy (~0.5 s): `roadie waveform` never needs it

        with _single_threaded_blas():
            self._peak.feed(x)
        weighted, self._zi = sosfilt(self._sos, x, axis=0, zi=self._zi)
        squares = np.square(weighted, out=weighted)
        start, end = self._frames, self._frames + x.shape[0]
        # Sub-blocks that end inside this slice; bound(k) >= k*sr/10 - 1/2, so none past this last k can.
        bounds = subblock_bounds(self._next_sub, end * 10 // self.sample_rate + 1, self.sample_rate)
        cuts = bounds[bounds <= end] - start  # all > 0: the sub-block in progress ends after `start`
        pieces = np.add.reduceat(squares, np.concatenate([[0], cuts[cuts < x.shape[0]]]), axis=0, dtype=np.float64)
        if len(cuts):
            pieces[0] += self._partial
            self._energies.extend(pieces[: len(cuts)] @ self._weights)
            self._next_sub += len(cuts)
            self._partial = pieces[-1].copy() if cuts[-1] < x.shape[0] else np.zeros(self.channels)
        else:
            self._partial = self._partial + pieces[0]
        self._frames = end


def measure_pcm(samples: np.ndarray, sample_rate: int, weights: Sequence[float] | None = None) -> LoudnessReading:
    """Integrated loudness, LRA and true peak of decoded PCM (frames x channels, floats in [-1, 1]), through a
    `LoudnessMeter` so a long upload costs no copy of itself. A mono signal is measured as dual mono. Silence
    or anything below the absolute gate gives integrated None (and LRA None)."""
    x = as_frames(samples)
    if x.shape[0] == 0:
        return LoudnessReading(None, None, None)
    meter = LoudnessMeter(sample_rate, x.shape[1], weights)
    meter.feed(x)
    return meter.finish()
