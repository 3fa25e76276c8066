"""bench/loudness_fingerprint: roadie's loudness meter and fingerprinting against the naive ways, side by side.

    .venv/bin/python bench/loudness_fingerprint.py [--seconds 240] [--rate 48000] [--repeat 3]

On one music-like stereo track (written as a 16-bit WAV) it times, best of --repeat:
  loudness, numpy side
    naive: soundfile re-reads the WAV, pyloudnorm integrated_loudness + loudness_range (if this pyloudnorm has it),
           resample_poly 4x over the whole signal for true peak
    roadie: measure_pcm on the PCM already decoded (K-weighting once for I and LRA, polyphase true peak as BLAS)
  loudness, both meters
    naive: ffmpeg ebur128, then the naive numpy meter
    roadie: ffmpeg ebur128, then measure_pcm; and both meters (ffmpeg on the file, then numpy on the PCM)
  fingerprint (the same PCM decoded once is what roadie has in hand)
    fpcalc on the WAV / on a FLAC upload (fpcalc decodes again) / on a temp WAV written from the PCM
    against fpcalc fed the PCM through a pipe
  scoring: match_score of two full fingerprints (every offset in +-10 s)
and prints the readings, the times and the ratios.
"""

from __future__ import annotations

import math
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np
import soundfile as sf
from analyze import audio_args, naive_pyloudnorm  # the original design's numpy meter, as bench/analyze times it

from tasks.media import fingerprint as fpm
from tasks.media import fingerprint_match, loudness, loudness_meter
from tests.support import both_meters, music_like


def best_of(repeat: int, fn: Callable[[], object]) -> tuple[float, object]:
    best, result = math.inf, None
    for _ in range(repeat):
        started = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - started)
    return best, result


def fpcalc_via_temp_wav(samples: np.ndarray, rate: int) -> fpm.Fingerprint:
    with tempfile.TemporaryDirectory(prefix="roadie-fp-") as tmp:
        path = Path(tmp) / "pcm.wav"
        head = samples[: fpm.FINGERPRINT_SECONDS * rate]
        sf.write(str(path), head, rate, subtype="PCM_16")
        fp = fpm.fingerprint_file(path)
    return fpm.Fingerprint(fp.items, len(samples) / rate)


def fmt(reading: loudness.LoudnessReading) -> str:
    def one(v: float | None) -> str:
        return "  none" if v is None else f"{v:6.2f}"

    return (
        f"I {one(reading.integrated_lufs)} LUFS  LRA {one(reading.loudness_range_lu)} LU  "
        f"TP {one(reading.true_peak_dbtp)} dBTP"
    )


def row(label: str, naive_s: float, roadie_s: float) -> str:
    return f"  {label:<44} naive {naive_s:7.3f} s   roadie {roadie_s:7.3f} s   ratio {roadie_s / naive_s:5.2f}x"


def main() -> None:
    args = audio_args(__doc__)
    rate, repeat = args.rate, args.repeat

    samples = music_like(args.seconds, rate, channels=2, seed=1).astype(np.float32)
    with tempfile.TemporaryDirectory(prefix="roadie-bench-") as tmp:
        wav = Path(tmp) / "track.wav"
        sf.write(str(wav), samples, rate, subtype="PCM_16")
        samples, _ = sf.read(str(wav), dtype="float32")  # what a decode of the file gives
        print(f"{args.seconds:.0f} s stereo {rate} Hz music-like track, best of {repeat}\n")

        naive_np_s, naive_np = best_of(repeat, lambda: naive_pyloudnorm(wav))
        roadie_np_s, roadie_np = best_of(repeat, lambda: loudness_meter.measure_pcm(samples, rate))
        ffmpeg_s, from_ffmpeg = best_of(repeat, lambda: loudness.measure_ffmpeg(wav, 2))
        both_s, both = best_of(repeat, lambda: both_meters(wav, samples, rate))
        flac = Path(tmp) / "track.flac"
        sf.write(str(flac), samples, rate, subtype="PCM_16")
        print("readings")
        print(f"  ffmpeg ebur128               {fmt(from_ffmpeg)}")
        print(f"  naive pyloudnorm (K-weight.) {fmt(naive_np)}")
        print(f"  roadie numpy (DeMan)         {fmt(roadie_np)}")
        print(f"  cross-check: delta {both.delta_lu} LU, agrees {both.agrees}, warnings {list(both.warnings)}\n")

        file_s, from_file = best_of(repeat, lambda: fpm.fingerprint_file(wav))
        flac_s, _ = best_of(repeat, lambda: fpm.fingerprint_file(flac))
        temp_s, from_temp = best_of(repeat, lambda: fpcalc_via_temp_wav(samples, rate))
        pipe_s, from_pipe = best_of(repeat, lambda: fpm.fingerprint_pcm(samples, rate))
        score_s, match = best_of(repeat, lambda: fingerprint_match.match_score(from_pipe, from_file))

        print("times")
        print(row("numpy loudness (re-read vs decoded PCM)", naive_np_s, roadie_np_s))
        print(row("both meters, one after the other", ffmpeg_s + naive_np_s, ffmpeg_s + roadie_np_s))
        print(row("both meters, roadie concurrent", ffmpeg_s + naive_np_s, both_s))
        print(f"  {'  of which ffmpeg ebur128 alone':<44} {ffmpeg_s:7.3f} s")
        print(row("fingerprint: fpcalc on the WAV vs PCM pipe", file_s, pipe_s))
        print(row("fingerprint: fpcalc on a FLAC vs PCM pipe", flac_s, pipe_s))
        print(row("fingerprint: temp WAV vs PCM pipe", temp_s, pipe_s))
        print(
            f"  {'match_score, +-10 s of offsets':<44} {score_s * 1000:7.2f} ms "
            f"({len(from_file.items)} x {len(from_pipe.items)} items; pipe vs file BER {match.ber:.4f})"
        )
        assert len(from_temp.items) == len(from_pipe.items)


if __name__ == "__main__":
    main()
