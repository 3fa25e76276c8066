"""EBU R128 loudness measured twice: ffmpeg's `ebur128` filter and an independent numpy meter.

ffmpeg's values are the ones roadie publishes; the numpy meter (pyloudnorm's K-weighting, BS.1770-4 gating,
EBU Tech 3342 loudness range, BS.1770 Annex 2 true peak) cross-checks them, and a disagreement becomes a
warning on the version. The numpy meter is `LoudnessMeter`, fed chunk by chunk in bounded memory (hour-long
uploads); `measure_pcm` feeds it a decoded array. Prefect tasks live in `tasks.media.tasks`, so this
module imports fast.
"""

from __future__ import annotations

import math
import re
from array import array
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from threadpoolctl import ThreadpoolController

from tasks.media import ffmpeg
from tasks.media.ffmpeg import ParseError
from tasks.media.pcm import as_chunk, as_frames

# scipy (~0.5 s to import, and pyloudnorm imports it) is imported inside the functions that meter:
# `roadie waveform` imports this module (through tasks.media.decode) and never meters, so it need not wait for it.

ABSOLUTE_GATE_LUFS = -70.0
RELATIVE_GATE_LU = -10.0  # BS.1770-4 integrated loudness
LRA_RELATIVE_GATE_LU = -20.0  # EBU Tech 3342
LRA_PERCENTILES = (10.0, 95.0)
# Above these the two meters are said to disagree (field notes: realistic agreement is |ΔI| <= 0.15 LU).
MAX_DELTA_I_LU = 0.2
MAX_DELTA_LRA_LU = 1.0
LRA_COMPARE_MIN_S = 10.0
TRUE_PEAK_TARGET_RATE = 192_000


@dataclass(frozen=True)
class LoudnessReading:
    integrated_lufs: float | None
    loudness_range_lu: float | None
    true_peak_dbtp: float | None

    def as_dict(self) -> dict[str, float | None]:
        return {
            "integrated_lufs": self.integrated_lufs,
            "loudness_range_lu": self.loudness_range_lu,
            "true_peak_dbtp": self.true_peak_dbtp,
        }


@dataclass(frozen=True)
class LoudnessResult:
    """ffmpeg's values at the top level; both readings, their difference and any warnings beside them."""

    integrated_lufs: float | None
    loudness_range_lu: float | None
    true_peak_dbtp: float | None
    ffmpeg: LoudnessReading
    pyloudnorm: LoudnessReading
    delta_lu: float | None
    agrees: bool
    warnings: tuple[str, ...]

    def as_dict(self) -> dict[str, object]:
        return {
            **self.ffmpeg.as_dict(),
            "ffmpeg": self.ffmpeg.as_dict(),
            "pyloudnorm": self.pyloudnorm.as_dict(),
            "delta_lu": self.delta_lu,
            "agrees": self.agrees,
        }


# ---------------------------------------------------------------- ffmpeg ebur128


def ebur128_filter(channels: int) -> str:
    """framelog=verbose logs the per-100 ms lines below the default level: only the final Summary is printed.

    A mono upload plays on two speakers, so it is measured as dual mono (+3.01 LU)."""
    spec = "ebur128=peak=true:framelog=verbose"
    return spec + ":dualmono=true" if channels == 1 else spec


_SUMMARY_VALUE = re.compile(
    r"^(?P<key>I|Threshold|LRA|LRA low|LRA high|Peak):\s+"
    r"(?P<value>-?inf|nan|-?\d+(?:\.\d+)?)\s+(?P<unit>LUFS|LU|dBFS|dBTP)$"
)
_SECTIONS = {
    "Integrated loudness:": "integrated",
    "Loudness range:": "range",
    "True peak:": "true_peak",
    "Sample peak:": "sample_peak",
}


def parse_ebur128_summary(stderr: str) -> LoudnessReading:
    """Read the final Summary of ffmpeg's ebur128 filter and nothing before it.

    The running `I:` values printed per frame are not the result (the original design's +52 dB bug).
    I = -70.0 is ffmpeg's "no block above the absolute gate": no measurable loudness, so None."""
    _head, sep, summary = stderr.rpartition("Summary:")
    if not sep:
        last = next((ln.strip() for ln in reversed(stderr.splitlines()) if ln.strip()), "")
        raise ParseError(f"no ebur128 Summary in ffmpeg's output; last line: {last!r}")
    section: str | None = None
    values: dict[tuple[str, str], float | None] = {}
    for raw in summary.splitlines():
        line = raw.strip()
        if not line:
            continue
        if line.startswith("["):  # another component's log line: the Summary block has ended
            break
        if line in _SECTIONS:
            section = _SECTIONS[line]
            continue
        match = _SUMMARY_VALUE.match(line)
        if not match or section is None:
            raise ParseError(f"could not read ebur128 summary line: {line!r}")
        text = match["value"]
        values[(section, match["key"])] = None if text in ("-inf", "inf", "nan") else float(text)
    if ("integrated", "I") not in values:
        raise ParseError(f"the ebur128 Summary has no integrated loudness: {summary.strip()[:200]!r}")
    integrated = values[("integrated", "I")]
    if integrated is not None and integrated <= ABSOLUTE_GATE_LUFS:
        integrated = None
    lra = values.get(("range", "LRA")) if integrated is not None else None
    return LoudnessReading(integrated, lra, values.get(("true_peak", "Peak")))


def measure_ffmpeg(path: Path, channels: int) -> LoudnessReading:
    """Integrated loudness, LRA and true peak from ffmpeg's ebur128 filter (it resamples to 48 kHz itself)."""
    cmd = ffmpeg.build_ebur128_cmd(Path(path), ebur128_filter(channels))
    return parse_ebur128_summary(ffmpeg.run(cmd).stderr)


# ---------------------------------------------------------------- numpy meter


def channel_weights(channels: int) -> np.ndarray:
    """BS.1770 channel weights for ffmpeg's default layout of that many channels.

    Mono counts twice (dual mono). LFE counts 0 and surrounds 1.41, as in ffmpeg; pyloudnorm's fixed five-channel
    list would weigh 5.1's LFE as a surround."""
    layouts = {
        1: [2.0],
        2: [1.0, 1.0],
        3: [1.0, 1.0, 0.0],  # 2.1
        4: [1.0, 1.0, 1.0, 1.41],  # 4.0: FL FR FC BC
        5: [1.0, 1.0, 1.0, 1.41, 1.41],  # 5.0
        6: [1.0, 1.0, 1.0, 0.0, 1.41, 1.41],  # 5.1
        7: [1.0, 1.0, 1.0, 0.0, 1.41, 1.41, 1.41],  # 6.1
        8: [1.0, 1.0, 1.0, 0.0, 1.41, 1.41, 1.41, 1.41],  # 7.1
    }
    if channels not in layouts:
        return np.ones(channels)
    return np.asarray(layouts[channels], dtype=np.float64)


@lru_cache(maxsize=16)
def k_weighting_sos(sample_rate: int) -> np.ndarray:
    """pyloudnorm's "DeMan" K-weighting: libebur128's (and so ffmpeg's) filter constants.

    The default "K-weighting" class reads case 1 as -23.035 LUFS; DeMan reads -22.99, like ffmpeg."""
    import pyloudnorm  # noqa: PLC0415 - it imports scipy (~0.5 s), which `roadie waveform` never needs

    meter = pyloudnorm.Meter(sample_rate, filter_class="DeMan")
    stages = list(meter._filters.values())  # high shelf, then high pass (pyloudnorm keeps them in this order)
    return np.vstack([np.concatenate([stage.b, stage.a]) for stage in stages])


def _subblock_bounds(first: int, last: int, sample_rate: int) -> np.ndarray:
    """Frame offsets where 100 ms sub-blocks k = first..last end: rint(k * sr / 10), computed exactly as the
    whole-array meter did, so the streamed sub-blocks are the same frames whatever the chunking."""
    return np.rint(np.arange(first, last + 1) * (sample_rate / 10)).astype(np.int64)


def _block_loudness(running: np.ndarray, bounds: np.ndarray, sub_blocks: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean-square power and loudness of every block of `sub_blocks` x 100 ms, hopping 100 ms."""
    if len(bounds) <= sub_blocks:
        return np.zeros(0), np.zeros(0)
    power = (running[sub_blocks:] - running[:-sub_blocks]) / (bounds[sub_blocks:] - bounds[:-sub_blocks])
    with np.errstate(divide="ignore"):
        loudness = -0.691 + 10 * np.log10(power)
    return power, loudness


def _integrated(power: np.ndarray, loudness: np.ndarray) -> float | None:
    """BS.1770-4: absolute gate at -70 LUFS, then a relative gate 10 LU below the absolutely-gated mean."""
    above_absolute = loudness > ABSOLUTE_GATE_LUFS
    if not above_absolute.any():
        return None
    relative = -0.691 + 10 * math.log10(power[above_absolute].mean()) + RELATIVE_GATE_LU
    gated = above_absolute & (loudness > relative)
    return -0.691 + 10 * math.log10(power[gated].mean())


def _loudness_range(power: np.ndarray, loudness: np.ndarray) -> float:
    """EBU Tech 3342: 3 s short-term blocks every 100 ms, gated at -70 LUFS and 20 LU below their mean power,
    LRA = 95th - 10th percentile. Under 3 s there is no short-term block and the range is 0, as in ffmpeg."""
    above_absolute = loudness > ABSOLUTE_GATE_LUFS
    if not above_absolute.any():
        return 0.0
    relative = -0.691 + 10 * math.log10(power[above_absolute].mean()) + LRA_RELATIVE_GATE_LU
    kept = loudness[above_absolute & (loudness >= relative)]
    low, high = np.percentile(kept, LRA_PERCENTILES)
    return float(high - low)


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
        bounds = _subblock_bounds(0, n_sub, self.sample_rate)
        integrated = _integrated(*_block_loudness(running, bounds, 4))
        if integrated is None:
            return LoudnessReading(None, None, peak_db)
        return LoudnessReading(integrated, _loudness_range(*_block_loudness(running, bounds, 30)), peak_db)

    def _process(self, x: np.ndarray) -> None:
        """K-weight a float32 slice, fold its squares into 100 ms sub-blocks and feed the true peak."""
        from scipy.signal import sosfilt  # noqa: PLC0415 - scipy (~0.5 s): `roadie waveform` never needs it

        with _single_threaded_blas():
            self._peak.feed(x)
        weighted, self._zi = sosfilt(self._sos, x, axis=0, zi=self._zi)
        squares = np.square(weighted, out=weighted)
        start, end = self._frames, self._frames + x.shape[0]
        # Sub-blocks that end inside this slice; bound(k) >= k*sr/10 - 1/2, so none past this last k can.
        bounds = _subblock_bounds(self._next_sub, end * 10 // self.sample_rate + 1, self.sample_rate)
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


# ---------------------------------------------------------------- the cross-check


def _fmt(value: float | None, unit: str) -> str:
    return "none" if value is None else f"{value:.1f} {unit}"


def compare_loudness(ffmpeg: LoudnessReading, reference: LoudnessReading, duration_s: float) -> LoudnessResult:
    """Put the two meters side by side. Integrated values more than 0.2 LU apart, or LRA values more than 1 LU
    apart on a track of 10 s or more, are a disagreement; either is a warning on the version."""
    warnings: list[str] = []
    agrees = True
    delta: float | None = None
    if ffmpeg.integrated_lufs is None and reference.integrated_lufs is None:
        warnings.append("no measurable loudness: the audio is silent or below the -70 LUFS absolute gate")
    elif ffmpeg.integrated_lufs is None or reference.integrated_lufs is None:
        agrees = False
        warnings.append(
            f"loudness meters disagree on whether there is sound: ffmpeg {_fmt(ffmpeg.integrated_lufs, 'LUFS')}, "
            f"pyloudnorm {_fmt(reference.integrated_lufs, 'LUFS')}"
        )
    else:
        delta = round(ffmpeg.integrated_lufs - reference.integrated_lufs, 3)
        if abs(delta) > MAX_DELTA_I_LU:
            agrees = False
            warnings.append(
                f"loudness meters disagree: ffmpeg {ffmpeg.integrated_lufs:.1f} LUFS, pyloudnorm "
                f"{reference.integrated_lufs:.1f} LUFS ({abs(delta):.2f} LU apart, over {MAX_DELTA_I_LU} LU)"
            )
    if (
        duration_s >= LRA_COMPARE_MIN_S
        and ffmpeg.loudness_range_lu is not None
        and reference.loudness_range_lu is not None
    ):
        lra_delta = abs(ffmpeg.loudness_range_lu - reference.loudness_range_lu)
        if lra_delta > MAX_DELTA_LRA_LU:
            agrees = False
            warnings.append(
                f"loudness range meters disagree: ffmpeg {ffmpeg.loudness_range_lu:.1f} LU, pyloudnorm "
                f"{reference.loudness_range_lu:.1f} LU ({lra_delta:.1f} LU apart, over {MAX_DELTA_LRA_LU} LU)"
            )
    return LoudnessResult(
        integrated_lufs=ffmpeg.integrated_lufs,
        loudness_range_lu=ffmpeg.loudness_range_lu,
        true_peak_dbtp=ffmpeg.true_peak_dbtp,
        ffmpeg=ffmpeg,
        pyloudnorm=reference,
        delta_lu=delta,
        agrees=agrees,
        warnings=tuple(warnings),
    )
