"""An independent whole-array BS.1770 meter, the reference the streaming `LoudnessMeter` must match.

It shares no code with `tasks.media.loudness` and computes each part another way, so a slip in the meter does
not move the reference along with it:
- K-weighting: the two biquads of BS.1770-4 Table 1/2 (48 kHz), taken back to their analog prototype (corner,
  Q, shelf gains) and brought to the signal's rate by the bilinear transform: the "DeMan" design, derived here
  from the published coefficients, run in float64 by `lfilter` (the meter: pyloudnorm's constants, float32
  `sosfilt`);
- gating blocks: every 400 ms / 3 s block summed on its own from the frames in [j/10 s, j/10 s + T) (the meter:
  running sums of 100 ms sub-blocks);
- true peak: the whole zero-stuffed signal through one windowed-sinc filter written out here (Kaiser beta 5,
  10 zero crossings per side, as resample_poly designs it) by `upfirdn`, start-up and tail included (the meter:
  float32 polyphase matrix products).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy.signal import lfilter, upfirdn

from tasks.media.loudness import LoudnessReading

# BS.1770-4, 48 kHz: the pre-filter (high shelf) and the RLB high pass, as (b0, b1, b2), (1, a1, a2).
SHELF_48K = ((1.53512485958697, -2.69169618940638, 1.19839281085285), (1.0, -1.69065929318241, 0.73248077421585))
HIGH_PASS_48K = ((1.0, -2.0, 1.0), (1.0, -1.99004745483398, 0.99007225036621))

# ffmpeg's default layout per channel count; BS.1770 weighs surrounds 1.41 and leaves out the LFE.
DEFAULT_LAYOUTS = {
    2: "FL FR",
    3: "FL FR LFE",
    4: "FL FR FC BC",
    5: "FL FR FC SL SR",
    6: "FL FR FC LFE SL SR",
    7: "FL FR FC LFE BC SL SR",
    8: "FL FR FC LFE BL BR SL SR",
}
SURROUNDS = {"BL", "BR", "BC", "SL", "SR"}


def weights_for(channels: int) -> np.ndarray:
    if channels == 1:
        return np.array([2.0])  # dual mono: the one channel plays on both speakers
    names = DEFAULT_LAYOUTS.get(channels, "").split() or ["FL"] * channels
    return np.array([0.0 if n == "LFE" else 1.41 if n in SURROUNDS else 1.0 for n in names])


def _prototype(b: Sequence[float], a: Sequence[float]) -> tuple[float, float, float, float]:
    """(K^2, K/Q, Vh, Vb) of a biquad b/a that is the bilinear transform, with K = tan(pi f0 / fs), of
    H(s) = (Vh s^2 + Vb s/Q + 1) / (s^2 + s/Q + 1) in units of 2 pi f0: evaluated at z = 1, z = -1 and as
    a0 - a2 of the unnormalised denominator (1 + K/Q + K^2) (1, a1, a2)."""
    at_dc, at_nyquist, odd = 1 + a[1] + a[2], 1 - a[1] + a[2], 1 - a[2]
    return at_dc / at_nyquist, 2 * odd / at_nyquist, (b[0] - b[1] + b[2]) / at_nyquist, (b[0] - b[2]) / odd


def _biquad_at(rate: int, b48: Sequence[float], a48: Sequence[float], shelf: bool) -> tuple[np.ndarray, np.ndarray]:
    k2_48, k_over_q_48, vh, vb = _prototype(b48, a48)
    f0 = math.atan(math.sqrt(k2_48)) * 48000 / math.pi
    q = math.sqrt(k2_48) / k_over_q_48
    k = math.tan(math.pi * f0 / rate)
    norm = 1 + k / q + k * k
    a = np.array([norm, 2 * (k * k - 1), 1 - k / q + k * k]) / norm
    if not shelf:  # the RLB numerator stays (1, -2, 1) at every rate, as in the table
        return np.array(b48, dtype=np.float64), a
    b = np.array([vh + vb * k / q + k * k, 2 * (k * k - vh), vh - vb * k / q + k * k]) / norm
    return b, a


def k_weight(x: np.ndarray, rate: int) -> np.ndarray:
    for (b48, a48), shelf in ((SHELF_48K, True), (HIGH_PASS_48K, False)):
        b, a = _biquad_at(rate, b48, a48, shelf)
        x = lfilter(b, a, x, axis=0)
    return x


def _lufs(power: np.ndarray | float) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return -0.691 + 10 * np.log10(power)


def block_powers(weighted: np.ndarray, rate: int, weights: np.ndarray, tenths: int) -> np.ndarray:
    """Channel-weighted mean square of each `tenths` x 100 ms block, one every 100 ms, that ends within the
    signal; block j holds the frames n with j/10 <= n/rate < (j + tenths)/10."""
    energy = np.square(weighted) @ weights
    count = max(weighted.shape[0] * 10 // rate - tenths + 1, 0)
    edges = [-(-j * rate // 10) for j in range(count + tenths)]
    spans = [(edges[j], edges[j + tenths]) for j in range(count)]
    return np.array([energy[start:end].sum() / (end - start) for start, end in spans], dtype=np.float64)


def integrated_lufs(powers: np.ndarray) -> float | None:
    """BS.1770-4: blocks over -70 LUFS, then those over (their mean power's loudness - 10 LU)."""
    audible = powers[_lufs(powers) > -70.0]
    if audible.size == 0:
        return None
    threshold = float(_lufs(audible.mean())) - 10.0
    return float(_lufs(audible[_lufs(audible) > threshold].mean()))


def loudness_range_lu(powers: np.ndarray) -> float:
    """EBU Tech 3342: short-term loudness over -70 LUFS and not under (their mean power's loudness - 20 LU),
    10th to 95th percentile; no short-term block (under 3 s), no range."""
    audible = powers[_lufs(powers) > -70.0]
    if audible.size == 0:
        return 0.0
    threshold = float(_lufs(audible.mean())) - 20.0
    short_term = _lufs(audible)
    kept = short_term[short_term >= threshold]
    return float(np.percentile(kept, 95.0) - np.percentile(kept, 10.0))


def interpolation_filter(factor: int) -> np.ndarray:
    """A windowed sinc cut at the original Nyquist: Kaiser beta 5, 10 zero crossings each side, DC gain `factor`."""
    n = np.arange(20 * factor + 1) - 10 * factor
    taps = np.sinc(n / factor) * np.kaiser(len(n), 5.0)
    return taps * (factor / taps.sum())


def true_peak(samples: np.ndarray, rate: int) -> float:
    """Largest magnitude of the signal oversampled to 192 kHz or more (BS.1770 Annex 2), as a linear value."""
    x = np.asarray(samples, dtype=np.float64)
    x = x[:, None] if x.ndim == 1 else x
    if x.size == 0:
        return 0.0
    factor = -(-192_000 // rate)
    sample_peak = float(np.abs(x).max())
    if factor < 2:
        return sample_peak
    oversampled = upfirdn(interpolation_filter(factor), x, up=factor, axis=0)
    return max(sample_peak, float(np.abs(oversampled).max()))


def measure_pcm(samples: np.ndarray, sample_rate: int, weights: Sequence[float] | None = None) -> LoudnessReading:
    """Integrated loudness, loudness range and true peak of a whole frames x channels (or mono 1-D) array."""
    x = np.asarray(samples, dtype=np.float64)
    x = x[:, None] if x.ndim == 1 else x
    if x.shape[0] == 0:
        return LoudnessReading(None, None, None)
    peak = true_peak(x, sample_rate)
    peak_db = 20 * math.log10(peak) if peak > 0 else None
    w = weights_for(x.shape[1]) if weights is None else np.asarray(weights, dtype=np.float64)
    weighted = k_weight(x, sample_rate)
    integrated = integrated_lufs(block_powers(weighted, sample_rate, w, 4))
    if integrated is None:
        return LoudnessReading(None, None, peak_db)
    return LoudnessReading(integrated, loudness_range_lu(block_powers(weighted, sample_rate, w, 30)), peak_db)
