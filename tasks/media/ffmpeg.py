"""The one place roadie runs ffmpeg.

Builders return argument lists (never a shell string), built with ffmpeg-python (`_compile`); `run` executes one and
raises `FFmpegError` with the tail of stderr; parsers quote the line they could not read.

Two commands stay plain lists because ffmpeg-python cannot express them: it builds ffmpeg commands that have an
output (`compile` refuses a graph without one), while the probe is ffprobe and its fallback is a bare `ffmpeg -i`.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import cast

import ffmpeg as ffmpeg_python
import imageio_ffmpeg

from roadie.errors import InvalidInput, RoadieError
from roadie.settings import get_settings

STDERR_TAIL_LINES = 25
STDOUT_CHUNK_BYTES = 1 << 18  # what one read of a streamed stdout may return

# format -> (encoder options, CODECS attribute for the multivariant playlist, nominal bandwidth in bit/s)
HLS_FORMATS: dict[str, tuple[dict[str, str], str, int]] = {
    "hls_opus": ({"c:a": "libopus", "b:a": "160k"}, "opus", 160_000),
    "hls_aac": ({"c:a": "aac", "b:a": "256k"}, "mp4a.40.2", 256_000),
    "hls_alac": ({"c:a": "alac"}, "alac", 1_411_200),
}


class FFmpegError(RoadieError):
    """ffmpeg (or ffprobe) exited non-zero. Carries the command and the last lines of stderr."""

    def __init__(self, cmd: Sequence[str], returncode: int, stderr_tail: str, summary: str | None = None):
        self.cmd = list(cmd)
        self.returncode = returncode
        self.stderr_tail = stderr_tail
        reason = summary or _reason_from(stderr_tail) or f"exit code {returncode}"
        super().__init__(f"{Path(self.cmd[0]).name} failed: {reason}")


class UnreadableMedia(InvalidInput):
    """The upload is not audio ffmpeg can decode (empty, corrupt, truncated, or not audio at all)."""


class ParseError(RoadieError):
    """An ffmpeg output line was not in the expected form; the message quotes it."""


_NOISE = re.compile(
    r"^(\s*$|ffmpeg version|  built with|  configuration:|  lib|Input #|Output #|Stream mapping|Press \[q\])"
)


def _reason_from(stderr_tail: str) -> str:
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


@lru_cache(maxsize=1)
def ffmpeg_binary() -> str:
    """System ffmpeg first (it has ffprobe beside it), then the static build in imageio-ffmpeg."""
    configured = get_settings().ffmpeg_binary
    if configured:
        return configured
    found = shutil.which("ffmpeg")
    if found:
        return found
    return imageio_ffmpeg.get_ffmpeg_exe()


@lru_cache(maxsize=1)
def ffprobe_binary() -> str | None:
    candidate = Path(ffmpeg_binary()).with_name("ffprobe")
    return str(candidate) if candidate.exists() else shutil.which("ffprobe")


def as_input(path: Path | str) -> str:
    """An input argument ffmpeg cannot mistake for a protocol (`concat:`, `http:`) or an option."""
    return "file:" + str(Path(path).resolve())


# ---------------------------------------------------------------- builders


def build_hls_cmd(src: Path, out_dir: Path, fmt: str, segment_seconds: int = 6) -> list[str]:
    """HLS fMP4/CMAF: init.mp4 + segment_%03d.m4s + playlist.m3u8 in out_dir."""
    if fmt not in HLS_FORMATS:
        raise InvalidInput(f"unknown format {fmt!r}; choose from {', '.join(HLS_FORMATS)}")
    encoder, _, _ = HLS_FORMATS[fmt]
    stream = ffmpeg_python.input(as_input(src)).output(
        as_input(out_dir / "playlist.m3u8"),
        map="0:a:0",
        vn=None,
        **encoder,
        f="hls",
        hls_time=str(segment_seconds),
        hls_list_size="0",
        hls_playlist_type="vod",
        hls_segment_type="fmp4",
        hls_fmp4_init_filename="init.mp4",
        hls_segment_filename=str(out_dir / "segment_%03d.m4s"),
    )
    return _compile(stream)


def build_decode_cmd(
    src: Path,
    *,
    sample_rate: int | None = None,
    channels: int | None = None,
    sample_fmt: str = "f32le",
    start_s: float | None = None,
) -> list[str]:
    """Decode the first audio stream to raw interleaved PCM on stdout."""
    input_opts = {"ss": str(start_s)} if start_s else {}
    out_opts: dict[str, str] = {"map": "0:a:0", "f": sample_fmt, "c:a": f"pcm_{sample_fmt}"}
    if sample_rate:
        out_opts["ar"] = str(sample_rate)
    if channels:
        out_opts["ac"] = str(channels)
    stream = ffmpeg_python.input(as_input(src), **input_opts).output("pipe:1", **out_opts)
    return _compile(stream, progress=False)


def build_extract_cover_cmd(src: Path, dst: Path) -> list[str]:
    """Copy the attached picture stream (MP3 APIC, FLAC picture, M4A covr) out unchanged."""
    stream = ffmpeg_python.input(as_input(src)).output(as_input(dst), map="0:v:0", an=None, c="copy", frames="1")
    return _compile(stream, progress=False)


def _compile(stream: ffmpeg_python.nodes.OutputStream, *extra: str, progress: bool = True) -> list[str]:
    """The argument list of one ffmpeg command, roadie's global options first. -nostdin: a worker has no terminal;
    -y: outputs live in our own temp dirs; -progress pipe:1: `run` reads it for on_progress."""
    flags = ["-hide_banner", "-nostdin", "-y", *(["-progress", "pipe:1"] if progress else []), "-nostats", *extra]
    # Given as compile's command prefix, not .global_args() (which puts them after the outputs): ffmpeg looks for
    # -hide_banner in an early scan that skips the argument after a "-" output, so it must come before it.
    return list(stream.compile(cmd=[ffmpeg_binary(), *flags]))


# ---------------------------------------------------------------- runner


@dataclass(frozen=True)
class FFmpegRun:
    cmd: tuple[str, ...]
    stderr: str
    seconds: float
    stdout: bytes = field(default=b"", repr=False)  # only with run(..., capture_stdout=True)


ProgressCallback = Callable[[float], None]


def run(
    cmd: Sequence[str],
    *,
    duration_s: float | None = None,
    on_progress: ProgressCallback | None = None,
    stdout_path: Path | None = None,
    nice: int = 0,
    timeout_s: float | None = None,
    capture_stdout: bool = False,
    on_stdout: Callable[[bytes], None] | None = None,
    stdin_data: bytes | memoryview | Iterable[bytes | memoryview] | None = None,
) -> FFmpegRun:
    """Run one ffmpeg/ffprobe command. Progress (0-100) is reported from `-progress pipe:1` lines.

    With `stdout_path`, stdout goes to that file instead. With `capture_stdout`, stdout is read into memory whole
    and returned as `FFmpegRun.stdout` (ffprobe's JSON: small). With `on_stdout`, each chunk of stdout goes to that
    callback as it arrives and is not kept (decoded PCM: any length in bounded memory); an exception it raises
    stops the process.
    With `stdin_data`, those bytes (or each chunk of an iterable, as it comes) are fed to stdin from a thread
    (PCM read as `pipe:0`)."""
    if isinstance(cmd, str):  # a shell string is never acceptable here
        raise TypeError("ffmpeg commands are argument lists, not strings")
    if capture_stdout and stdout_path:
        raise ValueError("capture_stdout and stdout_path are exclusive")
    if on_stdout and (capture_stdout or stdout_path):
        raise ValueError("on_stdout streams stdout: it excludes capture_stdout and stdout_path")
    started = time.monotonic()
    stderr_lines: deque[str] = deque(maxlen=4000)
    stdout_file = open(stdout_path, "wb") if stdout_path else None  # noqa: SIM115 - closed in the finally below
    preexec = (lambda: os.nice(nice)) if nice else None
    try:
        proc = subprocess.Popen(
            list(cmd),
            stdin=subprocess.DEVNULL if stdin_data is None else subprocess.PIPE,
            stdout=stdout_file or subprocess.PIPE,
            stderr=subprocess.PIPE,
            preexec_fn=preexec,
        )
    except FileNotFoundError as exc:
        if stdout_file:
            stdout_file.close()
        raise FFmpegError(cmd, 127, "", summary=f"{cmd[0]} is not installed") from exc

    def drain_stderr() -> None:
        assert proc.stderr is not None
        for raw in iter(proc.stderr.readline, b""):
            stderr_lines.append(raw.decode("utf-8", "replace").rstrip("\n"))

    def feed_stdin() -> None:
        assert proc.stdin is not None and stdin_data is not None  # only started with a pipe and data for it
        try:
            if isinstance(stdin_data, (bytes, bytearray, memoryview)):
                proc.stdin.write(stdin_data)
            else:
                for chunk in stdin_data:
                    proc.stdin.write(chunk)
        except (BrokenPipeError, OSError):
            pass  # ffmpeg stopped reading (it failed): its exit code and stderr say why
        finally:
            with contextlib.suppress(OSError):
                proc.stdin.close()

    reader = threading.Thread(target=drain_stderr, daemon=True)
    reader.start()
    writer = threading.Thread(target=feed_stdin, daemon=True) if stdin_data is not None else None
    if writer:
        writer.start()
    captured = b""
    try:
        if proc.stdout is not None and on_stdout:
            # Popen's pipes are buffered (bufsize -1), so stdout is a BufferedReader; typeshed says IO[bytes].
            while chunk := cast(io.BufferedReader, proc.stdout).read1(STDOUT_CHUNK_BYTES):
                on_stdout(chunk)
        elif proc.stdout is not None and capture_stdout:
            captured = proc.stdout.read()
        elif proc.stdout is not None:
            for raw in iter(proc.stdout.readline, b""):
                line = raw.decode("utf-8", "replace").strip()
                if on_progress and duration_s and line.startswith("out_time_us="):
                    value = line.partition("=")[2]
                    if value.isdigit():
                        on_progress(min(100.0, int(value) / 1e6 / duration_s * 100))
                elif on_progress and line == "progress=end":
                    on_progress(100.0)
        returncode = proc.wait(timeout=timeout_s)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    finally:
        if writer:
            writer.join(timeout=5)
        reader.join(timeout=5)
        if stdout_file:
            stdout_file.close()
    stderr = "\n".join(stderr_lines)
    if returncode != 0:
        raise FFmpegError(cmd, returncode, "\n".join(list(stderr_lines)[-STDERR_TAIL_LINES:]))
    return FFmpegRun(tuple(cmd), stderr, time.monotonic() - started, captured)


# ---------------------------------------------------------------- probing


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


def probe(src: Path) -> MediaInfo:
    """What the upload is. Raises UnreadableMedia with a person-readable reason."""
    src = Path(src)
    if not src.is_file():
        raise UnreadableMedia(f"{src.name} is not a file")
    if src.stat().st_size == 0:
        raise UnreadableMedia("the file is empty")
    probe_bin = ffprobe_binary()
    if probe_bin:
        cmd = [
            probe_bin,
            "-hide_banner",
            "-v",
            "error",
            "-print_format",
            "json",
            "-show_format",
            "-show_streams",
            as_input(src),
        ]
        try:
            out = run(cmd, capture_stdout=True, timeout_s=120)
        except FFmpegError as exc:
            if exc.returncode == 127:
                raise
            raise UnreadableMedia(f"not a readable audio file ({readable_reason(exc)})") from None
        except subprocess.TimeoutExpired as exc:
            raise UnreadableMedia("probing the file took longer than 120 s") from exc
        return parse_ffprobe_json(out.stdout.decode("utf-8", "replace"))
    cmd = [ffmpeg_binary(), "-hide_banner", "-nostdin", "-i", as_input(src)]
    out_banner = subprocess.run(cmd, capture_output=True, stdin=subprocess.DEVNULL, timeout=120)
    return parse_ffmpeg_banner(out_banner.stderr.decode("utf-8", "replace"))


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
        raise UnreadableMedia(f"not a readable audio file ({_reason_from(stderr) or 'no audio stream'})")
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


def build_ebur128_cmd(src: Path, filter_spec: str) -> list[str]:
    """Run the first audio stream through a measuring filter (ebur128) and discard the audio."""
    stream = ffmpeg_python.input(as_input(src)).output("-", map="0:a:0", af=filter_spec, f="null")
    return _compile(stream, progress=False)


def build_decode_pcm_cmd(src: Path, *, sample_rate: int, max_seconds: float | None = None) -> list[str]:
    """Decode the first audio stream once: float32 interleaved PCM at `sample_rate` on stdout, channels as they
    are (no -ac: it would remix a 3.0 layout into 2.1). -xerror turns a decode error (a truncated FLAC) into a
    failure instead of silently concealed audio. `max_seconds` stops reading there (-t on the input), whatever
    the header says."""
    limit = {"t": f"{max_seconds:.6f}"} if max_seconds else {}
    stream = ffmpeg_python.input(as_input(src), **limit).output(
        "pipe:1", map="0:a:0", f="f32le", ar=str(int(sample_rate)), **{"c:a": "pcm_f32le"}
    )
    return _compile(stream, "-xerror", progress=False)


def build_measure_pcm_cmd(
    sample_rate: int, channels: int, filter_spec: str, channel_layout: str | None = None
) -> list[str]:
    """Run a measuring filter (ebur128) over float32 interleaved PCM read from stdin: audio roadie has already
    decoded, so the original is not decoded a second time. The source's channel layout, when known, keeps
    ebur128's channel weights right (raw PCM alone would be guessed as the default layout, 3 channels as 2.1)."""
    layout = {"ch_layout": channel_layout} if channel_layout else {"ac": str(int(channels))}
    stream = ffmpeg_python.input("pipe:0", f="f32le", ar=str(int(sample_rate)), **layout).output(
        "-", af=filter_spec, f="null"
    )
    return _compile(stream, progress=False)
