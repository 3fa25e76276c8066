"""EBU R128 loudness measured twice: ffmpeg's `ebur128` filter and an independent numpy meter.

ffmpeg's values are the ones roadie publishes; the numpy meter (pyloudnorm's K-weighting, BS.1770-4 gating,
EBU Tech 3342 loudness range, BS.1770 Annex 2 true peak) cross-checks them, and a disagreement becomes a
warning on the version. The numpy meter is `LoudnessMeter`, fed chunk by chunk in bounded memory (hour-long
uploads), in `tasks.media.loudness_meter`, with the gating in `tasks.media.loudness_gating`; `measure_pcm` feeds
the meter a decoded array. This module holds the readings, ffmpeg's side and the comparison. Prefect tasks live in
`tasks.media.tasks`, so this module imports fast.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from tasks.media import ffmpeg
from tasks.media.ffmpeg import ParseError
from tasks.media.loudness_gating import ABSOLUTE_GATE_LUFS

# Above these the two meters are said to disagree (field notes: realistic agreement is |ΔI| <= 0.15 LU).
MAX_DELTA_I_LU = 0.2
MAX_DELTA_LRA_LU = 1.0
LRA_COMPARE_MIN_S = 10.0


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
