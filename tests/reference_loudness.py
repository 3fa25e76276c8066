"""A frozen copy of the whole-array numpy meter (`measure_pcm` before `LoudnessMeter`), kept as the reference
the streaming meter must match. Self-contained on purpose: later edits to `tasks.media.loudness` cannot
move the reference along with the code under test."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from tasks.media.loudness import LoudnessReading

ABSOLUTE_GATE_LUFS = -70.0
RELATIVE_GATE_LU = -10.0
LRA_RELATIVE_GATE_LU = -20.0
LRA_PERCENTILES = (10.0, 95.0)
TRUE_PEAK_TARGET_RATE = 192_000


def channel_weights(channels: int) -> np.ndarray:
    layouts = {
        1: [2.0],
        2: [1.0, 1.0],
        3: [1.0, 1.0, 0.0],
        4: [1.0, 1.0, 1.0, 1.41],
        5: [1.0, 1.0, 1.0, 1.41, 1.41],
        6: [1.0, 1.0, 1.0, 0.0, 1.41, 1.41],
        7: [1.0, 1.0, 1.0, 0.0, 1.41, 1.41, 1.41],
        8: [1.0, 1.0, 1.0, 0.0, 1.41, 1.41, 1.41, 1.41],
    }
    if channels not in layouts:
        return np.ones(channels)
    return np.asarray(layouts[channels], dtype=np.float64)


def k_weighting_sos(sample_rate: int) -> np.ndarray:
    import pyloudnorm

    meter = pyloudnorm.Meter(sample_rate, filter_class="DeMan")
    stages = list(meter._filters.values())
    return np.vstack([np.concatenate([stage.b, stage.a]) for stage in stages])


def _as_frames(samples: np.ndarray) -> np.ndarray:
    x = np.asarray(samples)
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim != 2:
        raise ValueError(f"samples must be frames x channels, got shape {x.shape}")
    return np.ascontiguousarray(x, dtype=np.float32)


def _subblock_power(weighted: np.ndarray, sample_rate: int, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    n_sub = int(weighted.shape[0] * 10 // sample_rate)
    bounds = np.rint(np.arange(n_sub + 1) * (sample_rate / 10)).astype(np.int64)
    if n_sub == 0:
        return np.zeros(1), bounds
    squares = np.square(weighted[: bounds[-1]])
    per_channel = np.add.reduceat(squares, bounds[:-1], axis=0, dtype=np.float64)
    running = np.concatenate([[0.0], np.cumsum(per_channel @ weights)])
    return running, bounds


def _block_loudness(running: np.ndarray, bounds: np.ndarray, sub_blocks: int) -> tuple[np.ndarray, np.ndarray]:
    if len(bounds) <= sub_blocks:
        return np.zeros(0), np.zeros(0)
    power = (running[sub_blocks:] - running[:-sub_blocks]) / (bounds[sub_blocks:] - bounds[:-sub_blocks])
    with np.errstate(divide="ignore"):
        loudness = -0.691 + 10 * np.log10(power)
    return power, loudness


def _integrated(power: np.ndarray, loudness: np.ndarray) -> float | None:
    above_absolute = loudness > ABSOLUTE_GATE_LUFS
    if not above_absolute.any():
        return None
    relative = -0.691 + 10 * math.log10(power[above_absolute].mean()) + RELATIVE_GATE_LU
    gated = above_absolute & (loudness > relative)
    return -0.691 + 10 * math.log10(power[gated].mean())


def _loudness_range(power: np.ndarray, loudness: np.ndarray) -> float:
    above_absolute = loudness > ABSOLUTE_GATE_LUFS
    if not above_absolute.any():
        return 0.0
    relative = -0.691 + 10 * math.log10(power[above_absolute].mean()) + LRA_RELATIVE_GATE_LU
    kept = loudness[above_absolute & (loudness >= relative)]
    low, high = np.percentile(kept, LRA_PERCENTILES)
    return float(high - low)


def _oversampler(factor: int, block: int) -> tuple[np.ndarray, int]:
    from scipy.signal import firwin

    half_len = 10 * factor
    taps = firwin(2 * half_len + 1, 1.0 / factor, window=("kaiser", 5.0)) * factor
    phases = [taps[p::factor] for p in range(1, factor)]
    width = max(len(p) for p in phases)
    matrix = np.zeros((block + width - 1, len(phases) * block), dtype=np.float32)
    for index, phase in enumerate(phases):
        reversed_phase = np.pad(phase, (0, width - len(phase)))[::-1]
        for i in range(block):
            matrix[i : i + width, index * block + i] = reversed_phase
    return matrix, width


def true_peak(samples: np.ndarray, sample_rate: int, *, block: int = 16, rows_per_chunk: int = 4096) -> float:
    x = _as_frames(samples)
    if x.size == 0:
        return 0.0
    peak = float(np.max(np.abs(x)))
    factor = math.ceil(TRUE_PEAK_TARGET_RATE / sample_rate)
    if factor < 2 or peak == 0.0:
        return peak
    matrix, width = _oversampler(factor, block)
    return _polyphase_peak(x, matrix, width, block, rows_per_chunk, peak)


def _polyphase_peak(
    x: np.ndarray, matrix: np.ndarray, width: int, block: int, rows_per_chunk: int, peak: float
) -> float:
    frames = x.shape[0]
    rows = -(-(frames + width - 1) // block)
    padded = np.zeros(rows * block + width - 1, dtype=np.float32)
    for channel in range(x.shape[1]):
        padded[width - 1 : width - 1 + frames] = x[:, channel]
        windows = np.lib.stride_tricks.sliding_window_view(padded, block + width - 1)[::block]
        for start in range(0, rows, rows_per_chunk):
            out = np.ascontiguousarray(windows[start : start + rows_per_chunk]) @ matrix
            peak = max(peak, float(out.max()), -float(out.min()))
    return peak


def _db(linear: float) -> float | None:
    return 20 * math.log10(linear) if linear > 0 else None


def measure_pcm(samples: np.ndarray, sample_rate: int, weights: Sequence[float] | None = None) -> LoudnessReading:
    """The whole-array meter: K-weighting, sub-block powers and true peak each over the entire signal."""
    from scipy.signal import sosfilt

    x = _as_frames(samples)
    if x.shape[0] == 0:
        return LoudnessReading(None, None, None)
    peak_db = _db(true_peak(x, sample_rate))
    w = channel_weights(x.shape[1]) if weights is None else np.asarray(weights, dtype=np.float64)
    if w.shape != (x.shape[1],):
        raise ValueError(f"{len(w)} channel weights for {x.shape[1]} channels")
    weighted = sosfilt(k_weighting_sos(sample_rate).astype(np.float32), x, axis=0)
    running, bounds = _subblock_power(weighted, sample_rate, w)
    integrated = _integrated(*_block_loudness(running, bounds, 4))
    if integrated is None:
        return LoudnessReading(None, None, peak_db)
    return LoudnessReading(integrated, _loudness_range(*_block_loudness(running, bounds, 30)), peak_db)
