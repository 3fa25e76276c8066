"""What ffmpeg says, read: its errors (FFmpegError with the tail of stderr, and the line that tells a person why),
and the probe's output parsed into MediaInfo (ffprobe's JSON, or the `ffmpeg -i` banner when there is no ffprobe).
Parsers quote the line they could not read. Running ffmpeg is tasks.media.ffmpeg's, which exposes all of these."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from roadie.errors import InvalidInput, RoadieError
from roadie.settings import get_settings


class FFmpegError(RoadieError):
    """ffmpeg (or ffprobe) exited non-zero. Carries the command and the last lines of stderr."""

    def __init__(self, cmd: Sequence[str], returncode: int, stderr_tail: str, summary: str | None = None):
        self.cmd = list(cmd)
        self.returncode = returncode
        self.stderr_tail = stderr_tail
        reason = summary or reason_from(stderr_tail) or f"exit code {returncode}"
        super().__init__(f"{Path(self.cmd[0]).name} failed: {reason}")


class UnreadableMedia(InvalidInput):
    """The upload is not audio ffmpeg can decode (empty, corrupt, truncated, or not audio at all)."""


class ParseError(RoadieError):
    """An ffmpeg output line was not in the expected form; the message quotes it."""


_NOISE = re.compile(
    r"^(\s*$|ffmpeg version|  built with|  configuration:|  lib|Input #|Output #|Stream mapping|Press \[q\])"
)


def reason_from(stderr_tail: str) -> str:
    lines = [ln.strip() for ln in stderr_tail.splitlines() if ln.strip() and not _NOISE.match(ln)]
    return lines[-1] if lines else ""


_COMPONENT = re.compile(r"^\[[^\]@]+@ 0x[0-9a-f]+\]\s*")
_GENERIC = ("Conversion failed!", "Error while decoding stream", "Nothing was written", "Exiting normally")


def readable_reason(exc: FFmpegError) -> str:
    """The most telling line of ffmpeg's complaint, without our own file path (a person reads this)."""
    lines = [ln.strip() for ln in exc.stderr_tail.splitlines() if ln.strip()]
    for line in reversed(lines):
        if line.startswith(_GENERIC) or line.startswith(("Input #", "Output #", "Stream ", "Duration:", "size=")):
            continue
        line = _COMPONENT.sub("", line)
        # "file:/abs/path: Invalid data found …" -> "Invalid data found …"
        if line.startswith("file:") and ": " in line:
            line = line.split(": ", 1)[1]
        if line:
            return line
    return str(exc)


# ffmpeg sample formats that hold integers: their float32 decode is exact (up to 24 bits), so the int16 a
# libsndfile-based reader (audiowaveform) would see can be recovered exactly from it.
INTEGER_SAMPLE_FORMATS = frozenset({"u8", "u8p", "s16", "s16p", "s32", "s32p", "s64", "s64p"})
# Codecs whose output is integer PCM, for when no ffprobe tells us the sample format.
_INTEGER_CODEC_PREFIXES = ("pcm_s", "pcm_u", "flac", "alac", "wavpack", "tta", "ape", "mlp", "truehd")


@dataclass(frozen=True)
class MediaInfo:
    """What the upload is, from one probe: the first audio stream as the decoder will produce it, its duration as
    the header states it (it can lie: the decode enforces limits on what it really reads), and whether a cover
    picture is attached. Every step of an ingest gets this one value."""

    codec: str
    sample_rate: int
    channels: int
    duration_s: float
    has_cover: bool
    sample_format: str = ""  # ffmpeg's name (s16, s32, fltp, …); "" when unknown
    bits_per_sample: int | None = None  # the source's precision (24 for a 24-bit FLAC decoded as s32)
    channel_layout: str | None = None  # ffmpeg's name (stereo, 3.0, 5.1(side)); None when unknown

    @property
    def integer_pcm(self) -> bool:
        if self.sample_format:
            return self.sample_format in INTEGER_SAMPLE_FORMATS
        return self.codec.startswith(_INTEGER_CODEC_PREFIXES)


def check_duration(info: MediaInfo, max_seconds: float | None = None) -> None:
    """Refuse an upload whose header says it is longer than ROADIE_MAX_DURATION_S, before any work is done."""
    limit = max_seconds if max_seconds is not None else get_settings().max_duration_s
    if info.duration_s > limit:
        raise InvalidInput(
            f"the audio is {_clock(info.duration_s)} long, over roadie's limit of {_clock(limit)} "
            f"(ROADIE_MAX_DURATION_S={limit:g}); split the upload, or raise ROADIE_MAX_DURATION_S on the workers"
        )


def _clock(seconds: float) -> str:
    whole = round(seconds)
    return f"{whole // 3600}:{whole // 60 % 60:02d}:{whole % 60:02d}"


def parse_ffprobe_json(text: str) -> MediaInfo:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ParseError(f"ffprobe printed no JSON: {text[:200]!r}") from exc
    streams = data.get("streams", [])
    audio = next((s for s in streams if s.get("codec_type") == "audio"), None)
    if audio is None:
        raise UnreadableMedia("the file has no audio stream")
    has_cover = any(s.get("codec_type") == "video" and s.get("disposition", {}).get("attached_pic") for s in streams)
    duration = audio.get("duration") or data.get("format", {}).get("duration")
    try:
        duration_s = float(duration)
    except (TypeError, ValueError):
        raise UnreadableMedia("the audio has no known duration") from None
    sample_rate, channels = int(audio.get("sample_rate") or 0), int(audio.get("channels") or 0)
    if sample_rate <= 0 or channels <= 0:
        raise UnreadableMedia(f"the audio stream has no usable format ({sample_rate} Hz, {channels} channels)")
    bits = int(audio.get("bits_per_raw_sample") or 0) or int(audio.get("bits_per_sample") or 0) or None
    layout = str(audio.get("channel_layout") or "")
    return MediaInfo(
        codec=audio.get("codec_name", "unknown"),
        sample_rate=sample_rate,
        channels=channels,
        duration_s=duration_s,
        has_cover=has_cover,
        sample_format=str(audio.get("sample_fmt") or ""),
        bits_per_sample=bits,
        channel_layout=layout if layout and layout != "unknown" else None,
    )


_DURATION = re.compile(r"Duration: (\d+):(\d\d):(\d\d(?:\.\d+)?)")
_AUDIO = re.compile(r"Stream #\S+.*?: Audio: (\w+).*?, (\d+) Hz, ([^,]+)(?:, (\w+)(?: \((\d+) bit\))?)?")
_LAYOUT_CHANNELS = {"mono": 1, "stereo": 2, "2.1": 3, "quad": 4, "5.0": 5, "5.1": 6, "7.1": 8}


def parse_ffmpeg_banner(stderr: str) -> MediaInfo:
    """Fallback probe from `ffmpeg -i` (imageio-ffmpeg ships no ffprobe)."""
    duration_line = next((ln for ln in stderr.splitlines() if "Duration:" in ln), None)
    audio_line = next((ln for ln in stderr.splitlines() if ": Audio: " in ln), None)
    if audio_line is None:
        raise UnreadableMedia(f"not a readable audio file ({reason_from(stderr) or 'no audio stream'})")
    match = _AUDIO.search(audio_line)
    if not match:
        raise ParseError(f"could not read the audio stream line: {audio_line.strip()!r}")
    dmatch = _DURATION.search(duration_line or "")
    if not dmatch:
        raise UnreadableMedia(f"the audio has no known duration: {(duration_line or '').strip()!r}")
    hours, minutes, seconds = dmatch.groups()
    layout = match.group(3).strip()
    channels = _LAYOUT_CHANNELS.get(layout.split("(")[0])
    if channels is None:
        digits = re.match(r"(\d+) channels", layout)
        if not digits:
            raise ParseError(f"could not read the channel layout in: {audio_line.strip()!r}")
        channels = int(digits.group(1))
    return MediaInfo(
        codec=match.group(1),
        sample_rate=int(match.group(2)),
        channels=channels,
        duration_s=int(hours) * 3600 + int(minutes) * 60 + float(seconds),
        has_cover="(attached pic)" in stderr,
        sample_format=match.group(4) or "",
        bits_per_sample=int(match.group(5)) if match.group(5) else None,
    )
