"""Loudness: EBU Tech 3341/3342 cases through both meters, the Summary parser, and the cross-check.

Every signal is synthesized here. The ffmpeg meter reads a float WAV written from the very samples the numpy
meter gets, so the two see the same audio.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from scipy.signal import resample_poly

from roadie.catalog import results
from tasks.media import loudness, loudness_meter
from tasks.media.ffmpeg import ParseError, as_input, build_ebur128_cmd, ffmpeg_binary, run
from tasks.media.loudness import LoudnessReading, compare_loudness, measure_ffmpeg
from tasks.media.loudness_meter import measure_pcm
from tests.support import both_meters, music_like, new_version, sine, write_wav

RATES = [44100, 48000]
METERS = ["ffmpeg", "numpy"]


def stepped_tone(segments: list[tuple[float, float]], sr: int, freq: float = 1000.0, channels: int = 2) -> np.ndarray:
    """One continuous 1 kHz sine whose level (dBFS per channel) steps at the segment boundaries."""
    lengths = [round(seconds * sr) for _, seconds in segments]
    gain = np.concatenate([np.full(n, 10 ** (db / 20)) for (db, _), n in zip(segments, lengths, strict=False)])
    mono = gain * np.sin(2 * np.pi * freq * np.arange(len(gain)) / sr)
    return np.repeat(mono[:, None], channels, axis=1)


def read(meter: str, x: np.ndarray, sr: int, tmp_path: Path) -> LoudnessReading:
    if meter == "numpy":
        return measure_pcm(x, sr)
    path = write_wav(tmp_path / "case.wav", x, sr, subtype="FLOAT")
    return measure_ffmpeg(path, x.shape[1])


# ffmpeg prints one decimal, so its reading can sit exactly on the tolerance's edge.
EDGE = 1e-9

# EBU Tech 3341 (2016) cases 1-5: stereo 1 kHz, (level dBFS, seconds) -> integrated loudness, +-0.1 LU.
TECH_3341 = {
    1: ([(-23, 20)], -23.0),
    2: ([(-33, 20)], -33.0),
    3: ([(-36, 10), (-23, 60), (-36, 10)], -23.0),
    4: ([(-72, 10), (-36, 10), (-23, 60), (-36, 10), (-72, 10)], -23.0),
    5: ([(-26, 20), (-20, 20.1), (-26, 20)], -23.0),
}

# EBU Tech 3342 cases 1-4: stereo 1 kHz, (level dBFS, seconds) -> loudness range, +-1 LU.
TECH_3342 = {
    1: ([(-20, 20), (-30, 20)], 10.0),
    2: ([(-20, 20), (-15, 20)], 5.0),
    3: ([(-40, 20), (-20, 20)], 20.0),
    4: ([(-50, 20), (-35, 20), (-20, 20), (-35, 20), (-50, 20)], 15.0),
}
# (what is read, its tolerance in LU, segments, expected) for every stepped-tone case of both documents.
STEPPED_TONES = [
    *(pytest.param("integrated_lufs", 0.1, *TECH_3341[c], id=f"tech3341-case{c}") for c in sorted(TECH_3341)),
    *(pytest.param("loudness_range_lu", 1.0, *TECH_3342[c], id=f"tech3342-case{c}") for c in sorted(TECH_3342)),
]


@pytest.mark.parametrize("meter", METERS)
@pytest.mark.parametrize("sr", RATES)
@pytest.mark.parametrize(("field", "tolerance", "segments", "expected"), STEPPED_TONES)
def test_tech3341_3342_stepped_tones(
    field: str, tolerance: float, segments: list, expected: float, sr: int, meter: str, tmp_path: Path
) -> None:
    reading = read(meter, stepped_tone(segments, sr), sr, tmp_path)
    assert getattr(reading, field) == pytest.approx(expected, abs=tolerance + EDGE)


# Tech 3341 cases 15-19: (fraction of fs, amplitude, phase in degrees) -> true peak, +0.2/-0.4 dB.
TRUE_PEAK = {
    15: (1 / 4, 0.50, 0.0, -6.0),
    16: (1 / 4, 0.50, 45.0, -6.0),
    17: (1 / 6, 0.50, 60.0, -6.0),
    18: (1 / 8, 0.50, 67.5, -6.0),
    19: (1 / 4, 1.41, 45.0, 3.0),
}


def true_peak_tone(fraction: float, amplitude: float, phase_deg: float, sr: int, seconds: float = 2.0) -> np.ndarray:
    n = np.arange(int(seconds * sr))
    x = amplitude * np.sin(2 * np.pi * fraction * n + np.deg2rad(phase_deg))
    # A tone switched on or off abruptly rings in any band-limited reconstruction (Gibbs), up to +0.7 dB here;
    # the cases are about the steady inter-sample peak, so the tone fades in and out over 20 ms.
    fade = int(0.02 * sr)
    ramp = np.sin(np.linspace(0, np.pi / 2, fade)) ** 2
    x[:fade] *= ramp
    x[-fade:] *= ramp[::-1]
    return np.repeat(x[:, None], 2, axis=1)


@pytest.mark.parametrize("meter", METERS)
@pytest.mark.parametrize("sr", RATES)
@pytest.mark.parametrize("case", sorted(TRUE_PEAK))
def test_tech3341_true_peak(case: int, sr: int, meter: str, tmp_path: Path) -> None:
    fraction, amplitude, phase, expected = TRUE_PEAK[case]
    x = true_peak_tone(fraction, amplitude, phase, sr)
    reading = read(meter, x, sr, tmp_path)
    assert expected - 0.4 - EDGE <= reading.true_peak_dbtp <= expected + 0.2 + EDGE
    if case in (16, 17, 18):  # the sample peak alone would miss these by 0.7-3 dB
        assert 20 * math.log10(np.abs(x).max()) < expected - 0.6


@pytest.mark.parametrize("meter", METERS)
@pytest.mark.parametrize("sr", RATES)
def test_mono_tone_reads_as_dual_mono(sr: int, meter: str, tmp_path: Path) -> None:
    x = sine(1000, 10, sr, dbfs=-23.0, channels=1)
    reading = read(meter, x, sr, tmp_path)
    assert round(reading.integrated_lufs, 1) == -23.0
    # The same channel as plain mono (weight 1) reads 3.01 LU lower: that is what dual mono corrects.
    plain = measure_pcm(x, sr, weights=[1.0])
    assert reading.integrated_lufs - plain.integrated_lufs == pytest.approx(10 * math.log10(2), abs=0.1 + EDGE)


def test_ebur128_filter_uses_dual_mono_only_for_mono() -> None:
    assert loudness.ebur128_filter(1) == "ebur128=peak=true:framelog=verbose:dualmono=true"
    for channels in (2, 6):
        spec = loudness.ebur128_filter(channels)
        assert spec.startswith("ebur128=peak=true") and "framelog=verbose" in spec and "dualmono" not in spec


# ---------------------------------------------------------------- the numpy meter against references


def reference_true_peak_db(x: np.ndarray) -> float:
    """scipy's resample_poly, 4x, the whole signal at once: slow but plain."""
    return 20 * math.log10(max(np.abs(resample_poly(x[:, c], 4, 1)).max() for c in range(x.shape[1])))


@pytest.mark.parametrize("channels", [1, 2])
@pytest.mark.parametrize("sr", RATES)
def test_numpy_meter_matches_pyloudnorm_and_resample_poly(sr: int, channels: int) -> None:
    import pyloudnorm

    x = music_like(12, sr, channels=channels, seed=5)
    reading = measure_pcm(x, sr)
    # pyloudnorm's own (looping) meter with the same filters; mono fed to it as two channels = dual mono.
    meter = pyloudnorm.Meter(sr, filter_class="DeMan")
    expected_i = meter.integrated_loudness(np.repeat(x, 2, axis=1) if channels == 1 else x)
    assert reading.integrated_lufs == pytest.approx(expected_i, abs=0.02)  # block framing differs by < 1 sample
    # Our 4x at 48 kHz is the same filter as resample_poly; at 44.1 kHz we oversample 5x, so allow 0.1 dB.
    assert reading.true_peak_dbtp == pytest.approx(reference_true_peak_db(x), abs=0.01 if sr == 48000 else 0.1)


def test_true_peak_matches_reference_on_odd_lengths_and_edges() -> None:
    rng = np.random.default_rng(3)
    for frames in (1, 31, 32, 33, 1000, 48_001):
        x = rng.uniform(-0.5, 0.5, (frames, 2))
        got = 20 * math.log10(loudness_meter.true_peak(x, 48000))
        assert got == pytest.approx(reference_true_peak_db(x), abs=0.01), frames


@pytest.mark.parametrize("channels", [1, 2])
@pytest.mark.parametrize("sr", RATES)
def test_meters_agree_on_music(sr: int, channels: int, tmp_path: Path) -> None:
    x = music_like(12, sr, channels=channels, seed=11)
    path = write_wav(tmp_path / "music.wav", x, sr, subtype="FLOAT")
    result = both_meters(path, x, sr)
    assert result.agrees, result.warnings
    assert abs(result.delta_lu) <= 0.15
    assert result.integrated_lufs == result.ffmpeg.integrated_lufs
    assert abs(result.ffmpeg.true_peak_dbtp - result.pyloudnorm.true_peak_dbtp) <= 0.2
    assert abs(result.ffmpeg.loudness_range_lu - result.pyloudnorm.loudness_range_lu) <= 1.0


# ---------------------------------------------------------------- silence


@pytest.mark.parametrize("signal", ["digital silence", "below the gate"])
def test_silence_gives_none_and_a_warning(signal: str, tmp_path: Path) -> None:
    sr = 48000
    x = np.zeros((sr * 5, 2)) if signal == "digital silence" else sine(1000, 5, sr, dbfs=-80.0)
    path = write_wav(tmp_path / "quiet.wav", x, sr, subtype="FLOAT")
    result = both_meters(path, x, sr)
    assert result.integrated_lufs is None and result.ffmpeg.integrated_lufs is None
    assert result.pyloudnorm.integrated_lufs is None
    assert result.loudness_range_lu is None and result.pyloudnorm.loudness_range_lu is None
    assert result.delta_lu is None
    assert any("no measurable loudness" in w for w in result.warnings)
    if signal == "digital silence":
        assert result.true_peak_dbtp is None and result.pyloudnorm.true_peak_dbtp is None
    else:
        assert result.pyloudnorm.true_peak_dbtp == pytest.approx(-80.0, abs=0.1)


def test_empty_and_too_short_input() -> None:
    assert measure_pcm(np.zeros((0, 2)), 48000) == LoudnessReading(None, None, None)
    short = sine(1000, 0.3, 48000, dbfs=-20.0)  # shorter than one 400 ms block
    reading = measure_pcm(short, 48000)
    assert reading.integrated_lufs is None and reading.true_peak_dbtp == pytest.approx(-20.0, abs=0.1)


# ---------------------------------------------------------------- the Summary parser


def ffmpeg_stderr(path: Path, filter_spec: str) -> str:
    return run(
        [
            ffmpeg_binary(),
            "-hide_banner",
            "-nostdin",
            "-nostats",
            "-i",
            as_input(path),
            "-af",
            filter_spec,
            "-f",
            "null",
            "-",
        ]
    ).stderr


def test_parser_reads_the_summary_not_the_running_values(tmp_path: Path) -> None:
    sr = 48000
    # Quiet first, loud after: the first running I: values (the original design's reading) are ~-30 LUFS.
    x = stepped_tone([(-30, 3), (-10, 7)], sr)
    path = write_wav(tmp_path / "steps.wav", x, sr, subtype="FLOAT")
    noisy = ffmpeg_stderr(path, "ebur128=peak=true")  # per-frame lines included
    running = [
        float(line.split("I:")[1].split()[0]) for line in noisy.split("Summary:")[0].splitlines() if " I:" in line
    ]
    first_measured = next(value for value in running if value > -70)
    from_summary = loudness.parse_ebur128_summary(noisy)
    assert abs(first_measured - from_summary.integrated_lufs) > 10
    assert from_summary == measure_ffmpeg(path, 2)
    assert from_summary.integrated_lufs == pytest.approx(measure_pcm(x, sr).integrated_lufs, abs=0.1 + EDGE)


def test_ebur128_cmd_is_an_argument_list_with_a_safe_input(tmp_path: Path) -> None:
    hostile = tmp_path / "concat:a;rm -rf ~ $(x).wav"
    write_wav(hostile, sine(1000, 1, 48000), 48000)
    cmd = build_ebur128_cmd(hostile, loudness.ebur128_filter(2))
    assert isinstance(cmd, list) and as_input(hostile) in cmd
    assert measure_ffmpeg(hostile, 2).integrated_lufs == pytest.approx(-20.0, abs=0.1 + EDGE)


SUMMARY = """[Parsed_ebur128_0 @ 0x55] t: 9.9  TARGET:-23 LUFS    M: -25.1 S: -24.9     I: -52.0 LUFS    LRA:   0.0 LU
[Parsed_ebur128_0 @ 0x55] Summary:

  Integrated loudness:
    I:         {i} LUFS
    Threshold: -33.0 LUFS

  Loudness range:
    LRA:         4.2 LU
    Threshold: -43.1 LUFS
    LRA low:   -26.0 LUFS
    LRA high:  -21.8 LUFS

  True peak:
    Peak:       {peak} dBFS
"""


def test_parser_values_and_no_measurable_loudness() -> None:
    assert loudness.parse_ebur128_summary(SUMMARY.format(i="-23.0", peak="-1.5")) == LoudnessReading(-23.0, 4.2, -1.5)
    silent = loudness.parse_ebur128_summary(SUMMARY.format(i="-70.0", peak="-inf"))
    assert silent == LoudnessReading(None, None, None)


@pytest.mark.parametrize("bad_line", ["    I:         abc LUFS", "    Peak:  -1.5 volts", "    Mystery:  1.0 LU"])
def test_parser_quotes_the_line_it_cannot_read(bad_line: str) -> None:
    text = SUMMARY.format(i="-23.0", peak="-1.5")
    text = text.replace("    Threshold: -33.0 LUFS", bad_line)
    with pytest.raises(ParseError) as err:
        loudness.parse_ebur128_summary(text)
    assert repr(bad_line.strip()) in str(err.value)


def test_parser_without_summary_quotes_the_last_line() -> None:
    with pytest.raises(ParseError, match="Invalid data found"):
        loudness.parse_ebur128_summary("Input #0, wav\nfile:x.wav: Invalid data found when processing input\n")
    with pytest.raises(ParseError, match="no integrated loudness"):
        loudness.parse_ebur128_summary("[Parsed_ebur128_0 @ 0x1] Summary:\n\n  True peak:\n    Peak: -1.0 dBFS\n")


# ---------------------------------------------------------------- the comparison and the database


def test_compare_warns_on_disagreement() -> None:
    ffmpeg_reading = LoudnessReading(-14.0, 6.0, -1.0)
    close = compare_loudness(ffmpeg_reading, LoudnessReading(-14.15, 6.8, -1.1), duration_s=200)
    assert close.agrees and close.warnings == () and close.delta_lu == pytest.approx(0.15)
    apart = compare_loudness(ffmpeg_reading, LoudnessReading(-14.5, 6.0, -1.0), duration_s=200)
    assert not apart.agrees and "0.50 LU apart" in apart.warnings[0]
    assert apart.integrated_lufs == -14.0 and apart.pyloudnorm.integrated_lufs == -14.5
    lra = compare_loudness(ffmpeg_reading, LoudnessReading(-14.0, 8.0, -1.0), duration_s=200)
    assert not lra.agrees and "loudness range" in lra.warnings[0]
    # Under 10 s the LRA rests on a handful of short-term blocks: not compared.
    short = compare_loudness(ffmpeg_reading, LoudnessReading(-14.0, 8.0, -1.0), duration_s=9.9)
    assert short.agrees and short.warnings == ()
    one_silent = compare_loudness(LoudnessReading(None, None, None), LoudnessReading(-69.5, 0.0, -60.0), 30)
    assert not one_silent.agrees and one_silent.integrated_lufs is None


def test_save_loudness_on_postgres(pg) -> None:
    from roadie.db.models import TrackVersion

    vid = new_version(pg, warnings=["earlier warning"]).id
    result = compare_loudness(LoudnessReading(-14.0, 6.0, -1.0), LoudnessReading(-14.6, 6.0, -1.0), 120)
    results.save_loudness(pg, str(vid), result)
    results.save_loudness(pg, vid, result)  # a rerun adds no second copy of the warning
    pg.expire_all()
    row = pg.get(TrackVersion, vid)
    assert (row.loudness_lufs, row.loudness_range, row.true_peak) == (-14.0, 6.0, -1.0)
    assert row.warnings == ["earlier warning", result.warnings[0]]
    silent = compare_loudness(LoudnessReading(None, None, None), LoudnessReading(None, None, None), 120)
    results.save_loudness(pg, vid, silent)
    pg.expire_all()
    row = pg.get(TrackVersion, vid)
    assert row.loudness_lufs is None and row.true_peak is None
    assert row.warnings[-1].startswith("no measurable loudness")
