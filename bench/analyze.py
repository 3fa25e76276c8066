"""bench/analyze: roadie's whole audio analysis against the naive sequence of separate passes, side by side.

    .venv/bin/python bench/analyze.py [--seconds 240] [--rate 48000] [--repeat 3]

On one music-like stereo track written to bench/out/ as a 16-bit WAV:
  naive sequence, one pass per job, each reading the file again:
    1. ffmpeg ebur128 (peak=true) on the file
    2. fpcalc on the file
    3. pyloudnorm on the re-read file: integrated (+ LRA when this pyloudnorm has it) and a 4x resample_poly true peak
    4. a waveform pass: decode the file again, 8-bit JSON at 20 px/s and the 1800x280 PNG
  roadie: analyze_file, i.e. one decode streamed in chunks to ffmpeg's ebur128, the numpy meter, the waveform
    (JSON + PNG) and fpcalc, side by side in bounded memory
  and, for the record, the previous design (the whole PCM decoded into memory first, then every step on the array),
  and the four separate passes done with roadie's own fast steps (to show what decoding once and overlapping alone
  buys).
  whole process: `roadie analyze` as a command, start-up included, against ffmpeg's `ebur128=peak=true` pass
    alone on the same file (the floor: the published meter's own time).

Each variant runs once to warm up (imports, caches; the cold run is printed too), then --repeat times,
alternating; the median wall time is reported with the CPU seconds it used (this process and its children).
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np
import soundfile as sf

from roadie.sample_audio import music_like
from tasks.media import analysis, loudness, loudness_meter, waveform_builder
from tasks.media import fingerprint as fpm
from tasks.media import waveform as wf
from tasks.media.decode import decode, measure_ebur128
from tasks.media.ffmpeg import build_ebur128_cmd

OUT = ROOT / "bench" / "out"


def cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def timed(fn: Callable[[], object]) -> tuple[float, float, object]:
    cpu, started = cpu_seconds(), time.perf_counter()
    result = fn()
    return time.perf_counter() - started, cpu_seconds() - cpu, result


# ---------------------------------------------------------------- the naive sequence


def naive_pyloudnorm(path: Path) -> loudness.LoudnessReading:
    import pyloudnorm
    from scipy.signal import resample_poly

    data, rate = sf.read(str(path))
    meter = pyloudnorm.Meter(rate)
    integrated = meter.integrated_loudness(data)
    lra = meter.loudness_range(data) if hasattr(meter, "loudness_range") else None
    peak = max(np.abs(resample_poly(data[:, c], 4, 1)).max() for c in range(data.shape[1]))
    return loudness.LoudnessReading(integrated, lra, 20 * math.log10(peak))


def naive_waveform(path: Path) -> tuple[str, bytes]:
    decoded = decode(path)
    return _waveform_of(decoded.samples, decoded.sample_rate, decoded.stream.integer_pcm)


def _waveform_of(samples: np.ndarray, rate: int, integer_pcm: bool) -> tuple[str, bytes]:
    prepared = wf.prepare(samples, integer_pcm=integer_pcm)
    data = wf.summarize(prepared, rate, wf.samples_per_pixel(rate, pixels_per_second=20))
    return data.to_json(8), waveform_builder.whole_track_png(prepared, rate, 1800, 280)


def naive_sequence(path: Path) -> dict[str, float]:
    steps: dict[str, float] = {}
    for name, fn in [
        ("ffmpeg ebur128", lambda: loudness.measure_ffmpeg(path, 2)),
        ("fpcalc on the file", lambda: fpm.fingerprint_file(path)),
        ("pyloudnorm, re-read", lambda: naive_pyloudnorm(path)),
        ("waveform pass", lambda: naive_waveform(path)),
    ]:
        started = time.perf_counter()
        fn()
        steps[name] = time.perf_counter() - started
    return steps


def separate_fast_passes(path: Path) -> None:
    """The same four passes, each reading the file again, but with roadie's own fast steps: what is left of the
    gain here comes from decoding once and overlapping the steps, not from the faster numpy meter."""
    loudness.measure_ffmpeg(path, 2)
    fpm.fingerprint_file(path)
    data, rate = sf.read(str(path), dtype="float32")
    loudness_meter.measure_pcm(data, rate)
    naive_waveform(path)


# ---------------------------------------------------------------- roadie


def previous_design(path: Path) -> None:
    """Before issue 9: the whole PCM decoded into memory, then ebur128 fed that array, the numpy meter, the
    waveform and fpcalc on it side by side (its memory grows with the upload: 6.8 GB for an hour)."""
    decoded = decode(path)
    x, rate = decoded.samples, decoded.sample_rate
    with ThreadPoolExecutor(max_workers=4) as pool:
        jobs = [
            pool.submit(measure_ebur128, [x], decoded.stream),
            pool.submit(loudness_meter.measure_pcm, x, rate),
            pool.submit(_waveform_of, x, rate, decoded.stream.integer_pcm),
            pool.submit(fpm.fingerprint_pcm, x, rate),
        ]
        for job in jobs:
            job.result()


def whole_process(cmd: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def audio_args(description: str | None) -> argparse.Namespace:
    """--seconds and --rate of the synthesized stereo track, --repeat: how many timed runs of each step."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=240.0)
    parser.add_argument("--rate", type=int, default=48000)
    parser.add_argument("--repeat", type=int, default=3)
    return parser.parse_args()


def main() -> None:
    args = audio_args(__doc__)

    OUT.mkdir(parents=True, exist_ok=True)
    wav = OUT / f"analyze-{args.seconds:g}s-{args.rate}.wav"
    sf.write(str(wav), music_like(args.seconds, args.rate, channels=2, seed=1), args.rate, subtype="PCM_16")
    load = os.getloadavg()[0]
    print(
        f"{args.seconds:g} s stereo {args.rate} Hz music-like WAV ({wav.stat().st_size / 1e6:.1f} MB), "
        f"{os.cpu_count()} cores, load average {load:.2f} at start; median of {args.repeat} after a warm-up\n"
    )

    roadie_cli = [str(Path(sys.executable).with_name("roadie")), "analyze", "--json", str(wav)]
    ebur128_alone = build_ebur128_cmd(wav, loudness.ebur128_filter(2))
    cold_s, cold_cpu, _ = timed(lambda: analysis.analyze_file(wav))
    timed(lambda: naive_sequence(wav))
    timed(lambda: previous_design(wav))
    timed(lambda: separate_fast_passes(wav))
    whole_process(roadie_cli)
    runs: dict[str, list[tuple[float, float]]] = {
        "naive": [],
        "roadie": [],
        "after": [],
        "fast": [],
        "cli": [],
        "ebur128": [],
    }
    naive_steps: list[dict[str, float]] = []
    result = None
    for _ in range(args.repeat):
        wall, cpu, steps = timed(lambda: naive_sequence(wav))
        runs["naive"].append((wall, cpu))
        naive_steps.append(steps)
        wall, cpu, result = timed(lambda: analysis.analyze_file(wav))
        runs["roadie"].append((wall, cpu))
        wall, cpu, _ = timed(lambda: previous_design(wav))
        runs["after"].append((wall, cpu))
        wall, cpu, _ = timed(lambda: separate_fast_passes(wav))
        runs["fast"].append((wall, cpu))
        wall, cpu, _ = timed(lambda: whole_process(roadie_cli))
        runs["cli"].append((wall, cpu))
        wall, cpu, _ = timed(lambda: whole_process(ebur128_alone))
        runs["ebur128"].append((wall, cpu))

    def median(name: str) -> tuple[float, float]:
        return statistics.median(w for w, _ in runs[name]), statistics.median(c for _, c in runs[name])

    naive_s, naive_cpu = median("naive")
    roadie_s, roadie_cpu = median("roadie")
    after_s, after_cpu = median("after")
    cli_s, cli_cpu = median("cli")
    ebur_s, ebur_cpu = median("ebur128")
    fast_s, fast_cpu = median("fast")
    print("naive sequence, step by step (median)")
    for step in naive_steps[0]:
        print(f"  {step:<22} {statistics.median(s[step] for s in naive_steps):7.3f} s")
    print("roadie, step by step (last run; the steps after the decode overlap)")
    for step, seconds in result.timings:
        print(f"  {step:<22} {seconds:7.3f} s")
    samples = decode(wav).samples
    wave_s, _, _ = timed(
        lambda: waveform_builder.compute(samples, args.rate, args.rate // 20, integer_pcm=True).to_json(8)
    )
    print(f"  (waveform JSON alone, {args.seconds:g} s stereo: {wave_s:.3f} s)\n")

    print(f"{'':<46} {'wall':>8} {'cpu':>8}")
    print(f"{'naive sequence (4 separate passes)':<46} {naive_s:7.3f}s {naive_cpu:7.3f}s")
    print(f"{'roadie analyze_file (one decode)':<46} {roadie_s:7.3f}s {roadie_cpu:7.3f}s")
    print(f"{'  roadie, first run in this process (cold)':<46} {cold_s:7.3f}s {cold_cpu:7.3f}s")
    print(f"{'  previous design (whole PCM in memory first)':<46} {after_s:7.3f}s {after_cpu:7.3f}s")
    print(f"{'  4 separate passes with roadie fast steps':<46} {fast_s:7.3f}s {fast_cpu:7.3f}s")
    print(f"{'whole process: roadie analyze (command)':<46} {cli_s:7.3f}s {cli_cpu:7.3f}s")
    print(f"{'whole process: ffmpeg ebur128=peak=true alone':<46} {ebur_s:7.3f}s {ebur_cpu:7.3f}s")
    ratio = roadie_s / naive_s
    print(f"\nratio roadie / naive: {ratio:.2f}x (target <= 0.50x)   roadie wall: {roadie_s:.2f} s (target <= 1.5 s)")
    print(f"ratio roadie / separate passes with roadie's fast steps: {roadie_s / fast_s:.2f}x")
    print(f"ratio roadie / previous design (whole PCM in memory): {roadie_s / after_s:.2f}x")
    print(f"ratio roadie analyze command / ffmpeg ebur128 pass alone: {cli_s / ebur_s:.2f}x (target <= 1.5x)")
    r = result.as_dict()["loudness"]
    print(
        f"readings: ffmpeg I {r['integrated_lufs']} LUFS, LRA {r['loudness_range_lu']} LU, TP "
        f"{r['true_peak_dbtp']} dBTP; pyloudnorm I {r['pyloudnorm']['integrated_lufs']}; delta {r['delta_lu']} LU; "
        f"agrees {r['agrees']}; warnings {list(result.warnings)}"
    )


if __name__ == "__main__":
    main()
