"""BS.1770 arithmetic for the numpy loudness meter: channel weights, pyloudnorm's K-weighting filter, 100 ms
sub-blocks, the gates of integrated loudness (BS.1770-4) and of the loudness range (EBU Tech 3342).

`tasks.media.loudness_meter` feeds these from a stream; ffmpeg's reading is parsed in `tasks.media.loudness`.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

# scipy (~0.5 s to import, and pyloudnorm imports it) is imported inside the functions that meter:
# `roadie waveform` imports the loudness modules (through tasks.media.decode) and never meters, so it need not wait.

ABSOLUTE_GATE_LUFS = -70.0
RELATIVE_GATE_LU = -10.0  # BS.1770-4 integrated loudness
LRA_RELATIVE_GATE_LU = -20.0  # EBU Tech 3342
LRA_PERCENTILES = (10.0, 95.0)


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


def subblock_bounds(first: int, last: int, sample_rate: int) -> np.ndarray:
    """Frame offsets where 100 ms sub-blocks k = first..last end: rint(k * sr / 10), computed exactly as the
    whole-array meter did, so the streamed sub-blocks are the same frames whatever the chunking."""
    return np.rint(np.arange(first, last + 1) * (sample_rate / 10)).astype(np.int64)


def block_loudness(running: np.ndarray, bounds: np.ndarray, sub_blocks: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean-square power and loudness of every block of `sub_blocks` x 100 ms, hopping 100 ms."""
    if len(bounds) <= sub_blocks:
        return np.zeros(0), np.zeros(0)
    power = (running[sub_blocks:] - running[:-sub_blocks]) / (bounds[sub_blocks:] - bounds[:-sub_blocks])
    with np.errstate(divide="ignore"):
        loudness = -0.691 + 10 * np.log10(power)
    return power, loudness


def integrated_loudness(power: np.ndarray, loudness: np.ndarray) -> float | None:
    """BS.1770-4: absolute gate at -70 LUFS, then a relative gate 10 LU below the absolutely-gated mean."""
    above_absolute = loudness > ABSOLUTE_GATE_LUFS
    if not above_absolute.any():
        return None
    relative = -0.691 + 10 * math.log10(power[above_absolute].mean()) + RELATIVE_GATE_LU
    gated = above_absolute & (loudness > relative)
    return -0.691 + 10 * math.log10(power[gated].mean())


def loudness_range(power: np.ndarray, loudness: np.ndarray) -> float:
    """EBU Tech 3342: 3 s short-term blocks every 100 ms, gated at -70 LUFS and 20 LU below their mean power,
    LRA = 95th - 10th percentile. Under 3 s there is no short-term block and the range is 0, as in ffmpeg."""
    above_absolute = loudness > ABSOLUTE_GATE_LUFS
    if not above_absolute.any():
        return 0.0
    relative = -0.691 + 10 * math.log10(power[above_absolute].mean()) + LRA_RELATIVE_GATE_LU
    kept = loudness[above_absolute & (loudness >= relative)]
    low, high = np.percentile(kept, LRA_PERCENTILES)
    return float(high - low)
