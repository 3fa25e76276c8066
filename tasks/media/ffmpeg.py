"""The one place roadie runs ffmpeg.

Builders (tasks.media.ffmpeg_args) return argument lists (never a shell string), built with ffmpeg-python
(`_compile`); `run` executes one and raises `FFmpegError` with the tail of stderr; parsers (tasks.media.ffmpeg_output)
quote the line they could not read. Only this module starts a process; it exposes the builders, errors and parsers
too, so an ffmpeg step imports all of it from here.

Two commands stay plain lists because ffmpeg-python cannot express them: it builds ffmpeg commands that have an
output (`compile` refuses a graph without one), while the probe is ffprobe and its fallback is a bare `ffmpeg -i`.
"""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

from roadie.errors import InvalidInput
from tasks.media.ffmpeg_args import (
    HLS_FORMATS,
    as_input,
    build_decode_cmd,
    build_decode_pcm_cmd,
    build_ebur128_cmd,
    build_extract_cover_cmd,
    build_hls_cmd,
    build_measure_pcm_cmd,
    ffmpeg_binary,
    ffprobe_binary,
)
from tasks.media.ffmpeg_output import (
    INTEGER_SAMPLE_FORMATS,
    FFmpegError,
    MediaInfo,
    ParseError,
    UnreadableMedia,
    check_duration,
    parse_ffmpeg_banner,
    parse_ffprobe_json,
    readable_reason,
)

# Everything an ffmpeg step needs, from here: the builders and binaries (ffmpeg_args), the errors and the probe's
# parsers (ffmpeg_output), and what runs them (below).
__all__ = [
    "HLS_FORMATS",
    "INTEGER_SAMPLE_FORMATS",
    "STDERR_TAIL_LINES",
    "STDOUT_CHUNK_BYTES",
    "FFmpegError",
    "FFmpegRun",
    "InvalidInput",
    "MediaInfo",
    "ParseError",
    "ProgressCallback",
    "UnreadableMedia",
    "as_input",
    "build_decode_cmd",
    "build_decode_pcm_cmd",
    "build_ebur128_cmd",
    "build_extract_cover_cmd",
    "build_hls_cmd",
    "build_measure_pcm_cmd",
    "check_duration",
    "ffmpeg_binary",
    "ffprobe_binary",
    "parse_ffmpeg_banner",
    "parse_ffprobe_json",
    "probe",
    "readable_reason",
    "run",
]

STDERR_TAIL_LINES = 25
STDOUT_CHUNK_BYTES = 1 << 18  # what one read of a streamed stdout may return


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
