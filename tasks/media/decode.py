"""Decode an upload once into PCM in memory; ffmpeg's own loudness measured on that same decode.

One ffmpeg process reads the file and writes float32 PCM at the native rate and channel count to a pipe: the
waveform, the numpy loudness meter and the fingerprint all work from that array. ffmpeg's ebur128 gets the same
decoded audio one of three ways:
- `measure_pcm_feed`: a second ffmpeg that only measures, fed the PCM chunk by chunk while the decode writes it
  (`decode(on_pcm=feed.put)`): what the analysis uses, the slow true-peak meter starts at once and runs beside
  the decode and then the numpy work;
- `measure_with_ffmpeg`: the same, fed the finished array through stdin;
- `decode(measure_loudness=True)`: an `asplit` branch inside the decoding process (one process, but the PCM only
  arrives when the meter is done).
Each way the file is read and decoded exactly once, and truncated or corrupt input fails (-xerror).
"""
from __future__ import annotations

import json
import queue
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from tasks.media import ffmpeg
from tasks.media import loudness as loudness_mod
from tasks.media.ffmpeg import FFmpegError, ParseError, UnreadableMedia
from tasks.media.loudness import LoudnessReading

# ffmpeg sample formats that hold integers: their float32 decode is exact (up to 24 bits), so the int16 a
# libsndfile-based reader (audiowaveform) would see can be recovered exactly from it.
INTEGER_SAMPLE_FORMATS = frozenset({"u8", "u8p", "s16", "s16p", "s32", "s32p", "s64", "s64p"})
# The whole signal is held in memory as float32 (and the meters make copies): 90 minutes of 48 kHz stereo is
# about 2 GB. Longer audio is refused with a clear message rather than taking the worker down.
MAX_DECODE_SECONDS = 90 * 60
# Codecs whose output is integer PCM, for when no ffprobe tells us the sample format.
_INTEGER_CODEC_PREFIXES = ("pcm_s", "pcm_u", "flac", "alac", "wavpack", "tta", "ape", "mlp", "truehd")


@dataclass(frozen=True)
class StreamInfo:
    """The first audio stream, as the decoder will produce it."""

    codec: str
    sample_rate: int
    channels: int
    sample_format: str  # ffmpeg's name (s16, s32, fltp, …); "" when unknown
    bits_per_sample: int | None  # the source's precision (24 for a 24-bit FLAC decoded as s32); None if unknown
    channel_layout: str | None = None  # ffmpeg's name (stereo, 3.0, 5.1(side)); None when unknown

    @property
    def integer_pcm(self) -> bool:
        if self.sample_format:
            return self.sample_format in INTEGER_SAMPLE_FORMATS
        return self.codec.startswith(_INTEGER_CODEC_PREFIXES)


@dataclass(frozen=True, eq=False)
class DecodedAudio:
    """The whole decoded signal, float32 frames x channels in [-1, 1] at the native rate, and what ffmpeg's
    ebur128 measured on the same decode (None when not asked for, or unreadable, with a warning saying why)."""

    samples: np.ndarray
    stream: StreamInfo
    loudness: LoudnessReading | None
    ebur128_stderr: str
    warnings: tuple[str, ...]
    seconds: float  # wall time of the decode

    @property
    def sample_rate(self) -> int:
        return self.stream.sample_rate

    @property
    def channels(self) -> int:
        return self.stream.channels

    @property
    def frames(self) -> int:
        return int(self.samples.shape[0])

    @property
    def duration_s(self) -> float:
        return self.frames / self.sample_rate


def probe_stream(src: Path) -> StreamInfo:
    """What the first audio stream is. Raises UnreadableMedia for empty files, non-audio and garbage."""
    src = Path(src)
    if not src.is_file():
        raise UnreadableMedia(f"{src.name} is not a file")
    if src.stat().st_size == 0:
        raise UnreadableMedia("the file is empty")
    if not ffmpeg.ffprobe_binary():  # imageio-ffmpeg ships no ffprobe: read ffmpeg's banner instead
        info = ffmpeg.probe(src)
        return StreamInfo(info.codec, info.sample_rate, info.channels, "", None)
    try:
        out = ffmpeg.run(ffmpeg.build_probe_audio_cmd(src), capture_stdout=True, timeout_s=120)
    except FFmpegError as exc:
        if exc.returncode == 127:
            raise
        raise UnreadableMedia(f"not a readable audio file ({_reason(exc)})") from None
    try:
        streams = json.loads(out.stdout.decode("utf-8", "replace") or "{}").get("streams", [])
    except json.JSONDecodeError as exc:
        raise ParseError(f"ffprobe printed no JSON: {out.stdout[:200]!r}") from exc
    if not streams:
        raise UnreadableMedia("the file has no audio stream")
    s = streams[0]
    sample_rate, channels = int(s.get("sample_rate") or 0), int(s.get("channels") or 0)
    if sample_rate <= 0 or channels <= 0:
        raise UnreadableMedia(f"the audio stream has no usable format ({sample_rate} Hz, {channels} channels)")
    bits = int(s.get("bits_per_raw_sample") or 0) or int(s.get("bits_per_sample") or 0) or None
    layout = str(s.get("channel_layout") or "")
    return StreamInfo(str(s.get("codec_name") or "unknown"), sample_rate, channels, str(s.get("sample_fmt") or ""),
                      bits, layout if layout and layout != "unknown" else None)


_COMPONENT = re.compile(r"^\[[^\]@]+@ 0x[0-9a-f]+\]\s*")
_GENERIC = ("Conversion failed!", "Error while decoding stream", "Nothing was written", "Exiting normally")


def _reason(exc: FFmpegError) -> str:
    """The most telling line of ffmpeg's complaint, without our own file path (a person reads this)."""
    lines = [ln.strip() for ln in exc.stderr_tail.splitlines() if ln.strip()]
    summary = next((i for i in range(len(lines) - 1, -1, -1) if lines[i].endswith("] Summary:")), None)
    if summary is not None:  # ebur128 still prints its Summary after a decode error: the cause is above it
        lines = lines[:summary]
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


def decode(src: Path, *, measure_loudness: bool = False, stream: StreamInfo | None = None,
           timeout_s: float | None = 600, max_seconds: float = MAX_DECODE_SECONDS,
           on_pcm: Callable[[bytes], None] | None = None) -> DecodedAudio:
    """Decode `src` once into memory. With `measure_loudness`, ffmpeg's ebur128 (true peak on; dual mono for mono
    input) runs on a split of the same decode in the same process, and its final Summary is parsed into `loudness`:
    one process, but the PCM only arrives once the (slower) meter is done. `analysis` instead decodes without it
    and runs `measure_with_ffmpeg` on the PCM beside the numpy work.

    A decode error anywhere in the file (truncated or corrupt data) raises UnreadableMedia, as does a file with
    no audio samples; a missing ffmpeg raises FFmpegError (not the upload's fault). Pass `stream` from an
    earlier `probe_stream` to skip probing again. `on_pcm` sees each chunk of PCM as the decoder writes it
    (see PcmFeed)."""
    src = Path(src)
    stream = stream or probe_stream(src)
    meter = loudness_mod.ebur128_filter(stream.channels) if measure_loudness else None
    # Reading a little past the limit tells "exactly max_seconds long" from "cut off at the limit".
    limit_frames = int(max_seconds * stream.sample_rate)
    cmd = ffmpeg.build_decode_measure_cmd(src, sample_rate=stream.sample_rate, meter_filter=meter,
                                          max_seconds=limit_frames / stream.sample_rate + 0.05)
    try:
        result = ffmpeg.run(cmd, capture_stdout=True, on_stdout=on_pcm, timeout_s=timeout_s)
    except FFmpegError as exc:
        if exc.returncode == 127:
            raise
        raise UnreadableMedia(f"could not decode the audio ({_reason(exc)}); the file is truncated or corrupt") \
            from None
    raw = result.stdout
    frame_bytes = 4 * stream.channels
    if len(raw) % frame_bytes:  # a partial frame can only come from a broken pipe; keep whole frames
        raw = raw[: len(raw) - len(raw) % frame_bytes]
    if not raw:
        raise UnreadableMedia("the file contains no audio samples")
    if len(raw) // frame_bytes > limit_frames:
        raise UnreadableMedia(f"the audio is longer than {max_seconds / 60:g} minutes, the most roadie analyses")
    samples = np.frombuffer(raw, dtype="<f4").reshape(-1, stream.channels)
    warnings: list[str] = []
    reading = None
    if meter:
        try:
            reading = loudness_mod.parse_ebur128_summary(result.stderr)
        except ParseError as exc:
            warnings.append(f"ffmpeg loudness unavailable: {exc}")
    return DecodedAudio(samples, stream, reading, result.stderr if meter else "", tuple(warnings), result.seconds)


def measure_with_ffmpeg(decoded: DecodedAudio, timeout_s: float | None = 600) -> LoudnessReading:
    """ffmpeg's ebur128 over the decoded PCM, fed through stdin: the same samples the numpy meter reads, so the
    cross-check compares the meters and nothing else, and the original is not decoded twice."""
    pcm = memoryview(np.ascontiguousarray(decoded.samples, dtype="<f4")).cast("B")
    return _measure_stdin(decoded.stream, pcm, timeout_s)


class PcmFeed:
    """The decoder's PCM handed on chunk by chunk while it decodes, so ffmpeg's meter starts at once instead of
    after the whole decode (bench/analyze.py). `put` is the decode's `on_pcm`; iterating yields the chunks until
    `close`, which must always follow the decode, failed or not, or the meter waits for input forever."""

    def __init__(self) -> None:
        self._chunks: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()

    def put(self, chunk: bytes) -> None:
        self._chunks.put(chunk)

    def close(self) -> None:
        self._chunks.put(None)

    def __iter__(self) -> Iterator[bytes]:
        while (chunk := self._chunks.get()) is not None:
            yield chunk


def measure_pcm_feed(feed: PcmFeed, stream: StreamInfo, timeout_s: float | None = 600) -> LoudnessReading:
    """ffmpeg's ebur128 over PCM as it arrives from a decode (the same bytes the numpy meter will read)."""
    return _measure_stdin(stream, feed, timeout_s)


def _measure_stdin(stream: StreamInfo, pcm: memoryview | PcmFeed, timeout_s: float | None) -> LoudnessReading:
    cmd = ffmpeg.build_measure_pcm_cmd(stream.sample_rate, stream.channels,
                                       loudness_mod.ebur128_filter(stream.channels), stream.channel_layout)
    result = ffmpeg.run(cmd, stdin_data=pcm, timeout_s=timeout_s)
    return loudness_mod.parse_ebur128_summary(result.stderr)
