"""The whole audio analysis from one decode: waveform (JSON + PNG), loudness cross-checked, fingerprint.

ffmpeg decodes the upload once into PCM in memory (tasks.media.decode). ebur128's true peak (a 192 kHz resampler)
is the slowest part, so a second ffmpeg measures that PCM as it comes out of the decoder, through a pipe, while
the numpy meter warms up (imports, filter design, BLAS setup). When the decode is done, side by side in threads
(subprocesses and numpy release the GIL): the numpy meter measures the same array, and the waveform and the
fingerprint are made from it. Measured in bench/analyze.py against ebur128 inside the decode and after it.

Each step after the decode degrades on its own: a failing step becomes a warning and a None field, so a version
is still published without, say, a fingerprint when fpcalc is missing. Only an unreadable upload raises.
"""
from __future__ import annotations

import hashlib
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from roadie.errors import RoadieError
from roadie.limits import lower_thread_priority
from tasks.media import waveform as wf
from tasks.media.decode import DecodedAudio, PcmFeed, decode, measure_pcm_feed, measure_with_ffmpeg, probe_stream
from tasks.media.fingerprint import Fingerprint
from tasks.media.loudness import LoudnessReading, LoudnessResult

WAVEFORM_PPS = 20  # the original design's 20 px/s, 8-bit JSON (peaks.js reads 8-bit)
WAVEFORM_BITS = 8
PNG_SIZE = (1800, 280)
STEPS = ("waveform", "loudness", "fingerprint")  # the reprocessing flows run one of them alone
HELPER_NICE = 2  # the steps beside ebur128 yield to it (bench/analyze)


class LoudnessUnavailable(RoadieError):
    """ffmpeg's meter, whose values are the published ones, gave no reading."""


@dataclass(frozen=True, eq=False)
class Analysis:
    input: str
    codec: str
    sample_rate: int
    channels: int
    duration_s: float
    waveform: wf.Waveform | None  # WAVEFORM_BITS-bit JSON source at the asked pixels per second
    waveform_bits: int
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
            waveform = {"samples_per_pixel": self.waveform.samples_per_pixel, "length": self.waveform.length,
                        "bits": self.waveform_bits, "channels": self.waveform.channels,
                        "pixels_per_second": round(self.waveform.pixels_per_second, 3)}
        fingerprint = None
        if self.fingerprint is not None:
            fingerprint = {"items": list(self.fingerprint.items), "item_count": len(self.fingerprint.items),
                           "duration_s": round(self.fingerprint.duration_s, 3)}
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


# ---------------------------------------------------------------- the steps


def _warm_up(sample_rate: int, channels: int) -> None:
    """Pay the meter's one-off costs (scipy/pyloudnorm imports, the K-weighting design for this rate, the
    oversampling matrix, threadpoolctl's BLAS scan) while ffmpeg is still decoding on the other core. Errors
    are ignored: this is only a head start, and the real steps report their own."""
    try:
        _warm_up_meter(sample_rate, channels)
    except Exception:
        pass


def _warm_up_meter(sample_rate: int, channels: int) -> None:
    from tasks.media import loudness

    noise = np.random.default_rng(0).uniform(-0.1, 0.1, (sample_rate // 2, channels)).astype(np.float32)
    loudness.measure_pcm(noise, sample_rate)
    import PIL.PngImagePlugin  # noqa: F401  (the PNG step's imports)


def _ffmpeg_loudness_step(decoded: DecodedAudio) -> LoudnessReading:
    return decoded.loudness if decoded.loudness is not None else measure_with_ffmpeg(decoded)


def _loudness_step(decoded: DecodedAudio, from_ffmpeg: Future) -> LoudnessResult:
    """The numpy meter on the PCM while ffmpeg measures the same PCM in its own process; then compared.
    ffmpeg's values are the published ones, so without them there is no loudness (the error says why)."""
    from tasks.media import loudness

    try:
        reference, reference_error = loudness.measure_pcm(decoded.samples, decoded.sample_rate), None
    except Exception as exc:  # the cross-check is a second opinion: keep ffmpeg's values without it
        reference, reference_error = LoudnessReading(None, None, None), _describe(exc)
    measured, error, _ = from_ffmpeg.result()
    if error:
        raise LoudnessUnavailable(f"ffmpeg ebur128 failed: {error}")
    if reference_error:
        return LoudnessResult(measured.integrated_lufs, measured.loudness_range_lu, measured.true_peak_dbtp,
                              measured, reference, None, False,
                              (f"loudness cross-check unavailable ({reference_error})",))
    return loudness.compare_loudness(measured, reference, decoded.duration_s)


def _waveform_step(decoded: DecodedAudio, pps: int, png_size: tuple[int, int] | None
                   ) -> tuple[wf.Waveform, bytes | None]:
    """The JSON waveform and the whole-track PNG, from one int16 mixdown."""
    prepared = wf.prepare(decoded.samples, integer_pcm=decoded.stream.integer_pcm)
    spp = wf.samples_per_pixel(decoded.sample_rate, pixels_per_second=pps)
    data = wf.summarize(prepared, decoded.sample_rate, spp)
    png = wf.whole_track_png(prepared, decoded.sample_rate, *png_size) if png_size else None
    return data, png


def _fingerprint_step(decoded: DecodedAudio) -> Fingerprint:
    from tasks.media import fingerprint

    return fingerprint.fingerprint_pcm(decoded.samples, decoded.sample_rate)


def analyze_decoded(decoded: DecodedAudio, *, label: str = "", waveform_pps: int = WAVEFORM_PPS,
                    png_size: tuple[int, int] | None = PNG_SIZE, steps: Iterable[str] = STEPS,
                    pool: ThreadPoolExecutor | None = None, ffmpeg_loudness: Future | None = None) -> Analysis:
    """Everything after the decode, the asked-for steps side by side. `ffmpeg_loudness`: ebur128 already started
    during the decode (a `_timed` future of a LoudnessReading); without it, ebur128 measures the decoded PCM."""
    steps = _check_steps(steps)
    warnings: list[str] = list(decoded.warnings)
    timings: dict[str, float] = {"decode_s": round(decoded.seconds, 3)}
    skipped = (None, None, 0.0)
    own_pool = pool is None
    pool = pool or ThreadPoolExecutor(max_workers=4, thread_name_prefix="analysis")
    try:
        started = time.perf_counter()
        jobs: dict[str, Future] = {}
        if "loudness" in steps:
            from_ffmpeg = ffmpeg_loudness or pool.submit(_timed, _ffmpeg_loudness_step, decoded)
            jobs["loudness"] = pool.submit(_timed, _loudness_step, decoded, from_ffmpeg)
        if "waveform" in steps:
            jobs["waveform"] = pool.submit(_timed, _waveform_step, decoded, waveform_pps, png_size)
        if "fingerprint" in steps:
            jobs["fingerprint"] = pool.submit(_timed, _fingerprint_step, decoded)
        fp, fp_error, fp_s = jobs["fingerprint"].result() if "fingerprint" in jobs else skipped
        if "fingerprint" in jobs:
            timings["fingerprint_s"] = round(fp_s, 3)
        wave, wave_error, wave_s = jobs["waveform"].result() if "waveform" in jobs else skipped
        loud, loud_error, loud_s = jobs["loudness"].result() if "loudness" in jobs else skipped
        if "loudness" in jobs:
            timings.update(ffmpeg_loudness_s=round(from_ffmpeg.result()[2], 3), loudness_s=round(loud_s, 3))
        if "waveform" in jobs:
            timings["waveform_s"] = round(wave_s, 3)
        timings["after_decode_s"] = round(time.perf_counter() - started, 3)
    finally:
        if own_pool:
            pool.shutdown(wait=True)
    if loud_error:
        warnings.append(f"loudness unavailable: {loud_error}")
    elif loud is not None:
        warnings.extend(loud.warnings)
    if wave_error:
        warnings.append(f"waveform unavailable: {wave_error}")
    if fp_error:
        warnings.append(f"fingerprint unavailable: {fp_error}")
    elif fp is not None:
        warnings.extend(f"fingerprint: {w}" for w in fp.warnings)
    data, png = wave if wave is not None else (None, None)
    return Analysis(label, decoded.stream.codec, decoded.sample_rate, decoded.channels, decoded.duration_s,
                    data, WAVEFORM_BITS, png, loud, fp, tuple(dict.fromkeys(warnings)), tuple(timings.items()))


def _check_steps(steps: Iterable[str]) -> frozenset[str]:
    chosen = frozenset(steps)
    if not chosen or chosen - set(STEPS):
        raise ValueError(f"analysis steps must be some of {', '.join(STEPS)}; got {sorted(chosen)}")
    return chosen


def _timed(fn: Callable, *args) -> tuple[Any, str | None, float]:
    """(result, None, seconds) or (None, "why", seconds): a step's failure is data, not an exception."""
    started = time.perf_counter()
    try:
        return fn(*args), None, time.perf_counter() - started
    except Exception as exc:
        return None, _describe(exc), time.perf_counter() - started


def _describe(exc: BaseException) -> str:
    return str(exc) if isinstance(exc, RoadieError) and str(exc) else f"{type(exc).__name__}: {exc}"


def analyze_file(path: Path, *, waveform_pps: int = WAVEFORM_PPS, png_size: tuple[int, int] | None = PNG_SIZE,
                 steps: Iterable[str] = STEPS) -> Analysis:
    """Decode `path` once and analyse it. Raises UnreadableMedia (InvalidInput) for an unreadable upload; every
    later step degrades to a warning."""
    path, steps = Path(path), _check_steps(steps)
    overall = time.perf_counter()
    # ebur128 (the slowest step, so the critical path) gets a thread of its own; every other step runs in a pool
    # whose threads (and their fpcalc) yield it the CPU. The decode feeds ebur128, so it stays in this thread.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="ebur128") as meter, \
            ThreadPoolExecutor(max_workers=4, thread_name_prefix="analysis", initializer=lower_thread_priority,
                               initargs=(HELPER_NICE,)) as pool:
        stream = probe_stream(path)
        feed, from_ffmpeg = None, None
        if "loudness" in steps:
            # Not waited for: a step that needs what it loads simply blocks on the import lock until it is there.
            pool.submit(_warm_up, stream.sample_rate, stream.channels)
            # ebur128 measures the PCM as the decoder writes it, not after the decode.
            feed = PcmFeed()
            from_ffmpeg = meter.submit(_timed, measure_pcm_feed, feed, stream)
        try:
            decoded = decode(path, stream=stream, on_pcm=feed.put if feed else None)
        finally:
            if feed:
                feed.close()
        result = analyze_decoded(decoded, label=str(path), waveform_pps=waveform_pps, png_size=png_size,
                                 steps=steps, pool=pool, ffmpeg_loudness=from_ffmpeg)
    timings = dict(result.timings)
    timings["total_s"] = round(time.perf_counter() - overall, 3)
    return _replace_timings(result, timings)


def _replace_timings(result: Analysis, timings: dict[str, float]) -> Analysis:
    from dataclasses import replace

    return replace(result, timings=tuple(timings.items()))


# ---------------------------------------------------------------- storing


@dataclass(frozen=True)
class WaveformKeys:
    json_key: str
    png_key: str | None
    json_asset_id: str
    png_asset_id: str | None

    def as_dict(self) -> dict[str, str | None]:
        return {"json_key": self.json_key, "png_key": self.png_key}


def waveform_prefix(version_id: str) -> str:
    from roadie.storage import join_key

    return join_key(str(version_id), "waveform")


def save_waveform(session, storage, version_id: str, analysis: Analysis) -> WaveformKeys:
    """Publish waveform.json (+ waveform.png) under `{version_id}/waveform/` (staged: never half-visible), record
    them as assets and write the version's `waveforms` row. A rerun replaces objects and updates the same rows."""
    from sqlalchemy import select

    from roadie.db.models import TrackVersion, Waveform as WaveformRow
    from roadie.errors import InvalidInput
    from roadie.storage import staged
    from tasks.catalog import parse_uuid, upsert_asset

    text = analysis.waveform_json
    if text is None:
        raise InvalidInput("the analysis has no waveform to save")
    vid = parse_uuid(version_id)
    if session.get(TrackVersion, vid) is None:
        raise InvalidInput(f"track version {version_id} does not exist")
    body = text.encode("ascii")
    with staged(storage, waveform_prefix(str(vid))) as stage:
        json_key = stage.put_bytes("waveform.json", body, "application/json")
        png_key = stage.put_bytes("waveform.png", analysis.png, "image/png") if analysis.png else None
        stage.promote()
    json_asset = upsert_asset(session, storage, json_key, len(body), hashlib.sha256(body).hexdigest())
    png_asset = None
    if png_key is not None and analysis.png is not None:
        png_asset = upsert_asset(session, storage, png_key, len(analysis.png), hashlib.sha256(analysis.png).hexdigest())
    row = session.scalar(select(WaveformRow).where(WaveformRow.track_version_id == vid).with_for_update())
    if row is None:
        row = WaveformRow(track_version_id=vid, json_asset_id=json_asset.id)
        session.add(row)
    row.json_asset_id = json_asset.id
    row.png_asset_id = png_asset.id if png_asset is not None else None
    session.flush()
    return WaveformKeys(json_key, png_key, str(json_asset.id), str(png_asset.id) if png_asset else None)
