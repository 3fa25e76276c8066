"""The whole audio analysis from one streamed decode: waveform (JSON + PNG), loudness cross-checked, fingerprint.

ffmpeg decodes the upload once (tasks.media.decode) and every chunk of PCM goes to each step as it comes: ffmpeg's
ebur128 (the published loudness; its true peak is the slowest part, so it gets a thread of its own at full
priority), the numpy meter that cross-checks it, the waveform and fpcalc (their threads yield to ebur128). No step
holds more than a few chunks, so memory does not grow with the length of the upload (bench/memory.py).

Each step degrades on its own: a failing step becomes a warning and a None field, so a version is still published
without, say, a fingerprint when fpcalc is missing. Only an unreadable upload raises. This module computes; the
catalogue (roadie.catalog.results) stores what it returns.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from roadie.errors import RoadieError
from tasks.media import fingerprint as fp_mod
from tasks.media import loudness as loudness_mod
from tasks.media import loudness_meter, waveform_builder
from tasks.media import waveform as wf
from tasks.media.decode import PcmFanout, StepResult, decode_stream, measure_ebur128, queue_depth
from tasks.media.ffmpeg import MediaInfo, check_duration, probe
from tasks.media.fingerprint import Fingerprint
from tasks.media.loudness import LoudnessReading, LoudnessResult

WAVEFORM_PPS = 20  # the original design's 20 px/s, 8-bit JSON (peaks.js reads 8-bit)
WAVEFORM_BITS: wf.Bits = 8
PNG_SIZE = (1800, 280)
STEPS = ("waveform", "loudness", "fingerprint")  # the reprocessing flows run one of them alone
HELPER_NICE = 2  # the steps beside ebur128 yield to it (bench/analyze)


class LoudnessUnavailable(RoadieError):
    """ffmpeg's meter, whose values are the published ones, gave no reading."""


class AnalysisStepFailed(RoadieError):
    """A reprocessing flow's one step produced nothing (the ingest records this as a warning instead)."""


@dataclass(frozen=True, eq=False)
class Analysis:
    input: str
    codec: str
    sample_rate: int
    channels: int
    duration_s: float
    waveform: wf.Waveform | None  # WAVEFORM_BITS-bit JSON source at the asked pixels per second
    waveform_bits: wf.Bits
    png: bytes | None  # the whole track
    loudness: LoudnessResult | None
    fingerprint: Fingerprint | None
    warnings: tuple[str, ...]
    timings: tuple[tuple[str, float], ...]  # step -> seconds, for benches and logs

    @property
    def waveform_json(self) -> str | None:
        return self.waveform.to_json(self.waveform_bits) if self.waveform is not None else None

    def as_dict(self) -> dict[str, Any]:
        """The `roadie analyze --json` object."""
        waveform = None
        if self.waveform is not None:
            waveform = {
                "samples_per_pixel": self.waveform.samples_per_pixel,
                "length": self.waveform.length,
                "bits": self.waveform_bits,
                "channels": self.waveform.channels,
                "pixels_per_second": round(self.waveform.pixels_per_second, 3),
            }
        fingerprint = None
        if self.fingerprint is not None:
            fingerprint = {
                "items": list(self.fingerprint.items),
                "item_count": len(self.fingerprint.items),
                "duration_s": round(self.fingerprint.duration_s, 3),
            }
        return {
            "input": self.input,
            "duration_s": round(self.duration_s, 3),
            "sample_rate": self.sample_rate,
            "channels": self.channels,
            "codec": self.codec,
            "loudness": _rounded(self.loudness.as_dict()) if self.loudness is not None else None,
            "waveform": waveform,
            "fingerprint": fingerprint,
            "warnings": list(self.warnings),
        }


def _rounded(value: Any, digits: int = 3) -> Any:
    if isinstance(value, float):
        return round(value, digits)
    if isinstance(value, dict):
        return {k: _rounded(v, digits) for k, v in value.items()}
    return value


# ---------------------------------------------------------------- the steps, each a consumer of PCM chunks


@dataclass(frozen=True, eq=False)
class WaveformOutput:
    data: wf.Waveform
    png: bytes | None


def _waveform_step(
    info: MediaInfo, pps: int, png_size: tuple[int, int] | None
) -> Callable[[Iterator[np.ndarray]], WaveformOutput]:
    spp = wf.samples_per_pixel(info.sample_rate, pixels_per_second=pps)

    def consume(chunks: Iterator[np.ndarray]) -> WaveformOutput:
        builder = waveform_builder.WaveformBuilder(
            info.sample_rate,
            info.channels,
            spp,
            integer_pcm=info.integer_pcm,
            png_width=png_size[0] if png_size else None,
        )
        for chunk in chunks:
            builder.feed(chunk)
        data = builder.finish()
        return WaveformOutput(data, builder.png(*png_size) if png_size else None)

    return consume


def _numpy_meter_step(info: MediaInfo) -> Callable[[Iterator[np.ndarray]], LoudnessReading]:
    def consume(chunks: Iterator[np.ndarray]) -> LoudnessReading:
        meter = loudness_meter.LoudnessMeter(info.sample_rate, info.channels)
        for chunk in chunks:
            meter.feed(chunk)
        return meter.finish()

    return consume


def _loudness(results: dict[str, StepResult], duration_s: float) -> LoudnessResult:
    """ffmpeg's values are the published ones, so without them there is no loudness (the error says why); the
    numpy meter is a second opinion, and its failure only a warning."""
    measured, reference = results["ebur128"], results["numpy_meter"]
    if measured.error:
        raise LoudnessUnavailable(f"ffmpeg ebur128 failed: {measured.error}")
    if reference.error:
        m = measured.value
        return LoudnessResult(
            m.integrated_lufs,
            m.loudness_range_lu,
            m.true_peak_dbtp,
            m,
            LoudnessReading(None, None, None),
            None,
            False,
            (f"loudness cross-check unavailable ({reference.error})",),
        )
    return loudness_mod.compare_loudness(measured.value, reference.value, duration_s)


def _check_steps(steps: Iterable[str]) -> frozenset[str]:
    chosen = frozenset(steps)
    if not chosen or chosen - set(STEPS):
        raise ValueError(f"analysis steps must be some of {', '.join(STEPS)}; got {sorted(chosen)}")
    return chosen


def analyze_file(
    path: Path,
    *,
    info: MediaInfo | None = None,
    waveform_pps: int = WAVEFORM_PPS,
    png_size: tuple[int, int] | None = PNG_SIZE,
    steps: Iterable[str] = STEPS,
    max_seconds: float | None = None,
) -> Analysis:
    """Decode `path` once and analyse it as it streams. `info` is the ingest's one probe (probed here when not
    given). Raises InvalidInput for an upload over the length limit (ROADIE_MAX_DURATION_S unless `max_seconds`)
    and UnreadableMedia for an unreadable one; every step degrades to a warning."""
    path, chosen = Path(path), _check_steps(steps)
    started = time.perf_counter()
    info = info or probe(path)
    check_duration(info, max_seconds)
    consumers: dict[str, Callable[[Iterator[np.ndarray]], Any]] = {}
    if "loudness" in chosen:
        consumers["ebur128"] = lambda chunks: measure_ebur128(chunks, info)
        consumers["numpy_meter"] = _numpy_meter_step(info)
    if "waveform" in chosen:
        consumers["waveform"] = _waveform_step(info, waveform_pps, png_size)
    if "fingerprint" in chosen:
        consumers["fingerprint"] = lambda chunks: fp_mod.fingerprint_chunks(chunks, info.sample_rate)
    fanout = PcmFanout(
        consumers, niced=set(consumers) - {"ebur128"}, nice=HELPER_NICE, depth=queue_depth(info.channels)
    )
    try:
        stats = decode_stream(path, info, fanout.put, max_seconds=max_seconds)
    finally:
        results = fanout.close()
    duration_s = stats.frames / info.sample_rate
    warnings: list[str] = []
    timings = {"decode_s": round(stats.seconds, 3)}
    timings.update({f"{name}_s": round(result.seconds, 3) for name, result in results.items()})
    loudness = wave = fingerprint = None
    if "loudness" in chosen:
        try:
            loudness = _loudness(results, duration_s)
            warnings.extend(loudness.warnings)
        except LoudnessUnavailable as exc:
            warnings.append(f"loudness unavailable: {exc}")
    if "waveform" in chosen:
        wave = results["waveform"].value
        if results["waveform"].error:
            warnings.append(f"waveform unavailable: {results['waveform'].error}")
    if "fingerprint" in chosen:
        fingerprint = results["fingerprint"].value
        if results["fingerprint"].error:
            warnings.append(f"fingerprint unavailable: {results['fingerprint'].error}")
        else:
            warnings.extend(f"fingerprint: {w}" for w in fingerprint.warnings)
    timings["total_s"] = round(time.perf_counter() - started, 3)
    return Analysis(
        str(path),
        info.codec,
        info.sample_rate,
        info.channels,
        duration_s,
        wave.data if wave else None,
        WAVEFORM_BITS,
        wave.png if wave else None,
        loudness,
        fingerprint,
        tuple(dict.fromkeys(warnings)),
        tuple(timings.items()),
    )


def require(result: Analysis, step: str) -> Analysis:
    """For a flow that runs `step` alone: its failure is the run's failure, with the reason."""
    if getattr(result, step) is None:
        raise _step_failed(result, step)
    return result


def require_loudness(result: Analysis) -> LoudnessResult:
    """`require(result, "loudness").loudness`, typed as present."""
    if result.loudness is None:
        raise _step_failed(result, "loudness")
    return result.loudness


def require_fingerprint(result: Analysis) -> Fingerprint:
    """`require(result, "fingerprint").fingerprint`, typed as present."""
    if result.fingerprint is None:
        raise _step_failed(result, "fingerprint")
    return result.fingerprint


def _step_failed(result: Analysis, step: str) -> AnalysisStepFailed:
    reasons = [w for w in result.warnings if w.startswith(f"{step} unavailable")]
    return AnalysisStepFailed("; ".join(reasons) or f"{step} unavailable")
