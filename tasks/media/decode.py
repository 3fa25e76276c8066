"""Decode an upload once, as a stream of fixed-size PCM chunks, and hand every chunk to each consumer.

One ffmpeg process reads the file and writes float32 PCM at the native rate and channel count to a pipe. The
pipe's bytes are cut into chunks of `CHUNK_FRAMES` frames (frames x channels arrays); `PcmFanout` gives each
chunk to every consumer (the waveform, the numpy meter, ffmpeg's ebur128 and fpcalc through their stdin), each
in a thread of its own behind a queue of at most `QUEUE_BYTES` of PCM. A slow consumer makes the decoder wait
(back-pressure) instead of letting chunks pile up, so memory does not grow with the length of the upload.

Truncated or corrupt input fails (-xerror), and the decode stops at the length limit whatever the header says.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from roadie.cpu import lower_thread_priority
from roadie.errors import RoadieError
from roadie.settings import get_settings
from tasks.media import ffmpeg
from tasks.media import loudness as loudness_mod
from tasks.media.ffmpeg import FFmpegError, MediaInfo, UnreadableMedia
from tasks.media.loudness import LoudnessReading

# 65536 frames: 1.4 s at 48 kHz, 512 KiB of stereo float32. Big enough that per-chunk Python overhead is noise,
# small enough that a queue of them is a few MiB.
CHUNK_FRAMES = 1 << 16
# What a consumer may fall behind by. The numpy meter's first chunk pays ~0.6 s of one-off costs (scipy and
# pyloudnorm imports, filter design, the BLAS scan): with 16 MiB (22 s of 48 kHz stereo) of slack the decoder and
# ebur128 run on meanwhile, and the meter, four times faster than ebur128, catches up.
QUEUE_BYTES = 16 << 20
MIN_QUEUE_CHUNKS = 4
# A consumer that takes no chunk for this long is stuck (its subprocess hung): the decode gives up on it.
STALL_TIMEOUT_S = 600.0


class ConsumerStalled(RoadieError):
    """A consumer of the decoded PCM stopped taking chunks."""


@dataclass(frozen=True)
class DecodeStats:
    frames: int
    seconds: float  # wall time of the decode, consumers included (they set its pace)


# ---------------------------------------------------------------- the decoder


class _Chunker:
    """Bytes from the pipe in, whole fixed-size frame arrays out. Holds at most one chunk of bytes."""

    def __init__(self, channels: int, chunk_frames: int, limit_frames: int, on_chunk: Callable[[np.ndarray], None]):
        self.channels, self.frame_bytes = channels, 4 * channels
        self.chunk_bytes = chunk_frames * self.frame_bytes
        self.limit_frames, self.on_chunk = limit_frames, on_chunk
        self.pending = bytearray()
        self.frames = 0

    def write(self, data: bytes) -> None:
        self.pending += data
        while len(self.pending) >= self.chunk_bytes:
            self._emit(bytes(self.pending[: self.chunk_bytes]))
            del self.pending[: self.chunk_bytes]

    def flush(self) -> None:
        # A partial frame can only come from a broken pipe: keep whole frames.
        whole = len(self.pending) - len(self.pending) % self.frame_bytes
        if whole:
            self._emit(bytes(self.pending[:whole]))
        self.pending.clear()

    def _emit(self, raw: bytes) -> None:
        chunk = np.frombuffer(raw, dtype="<f4").reshape(-1, self.channels)
        self.frames += chunk.shape[0]
        if self.frames > self.limit_frames:
            raise _TooLong()
        self.on_chunk(chunk)


class _TooLong(Exception):
    pass


def decode_stream(
    src: Path,
    info: MediaInfo,
    on_chunk: Callable[[np.ndarray], None],
    *,
    max_seconds: float | None = None,
    chunk_frames: int = CHUNK_FRAMES,
    timeout_s: float | None = None,
) -> DecodeStats:
    """Decode `src` once, calling `on_chunk` with each `chunk_frames` x channels float32 array (the last one
    shorter). Raises UnreadableMedia for a decode error anywhere in the file (truncated or corrupt data), for a
    file with no audio samples, and for audio longer than `max_seconds` (ROADIE_MAX_DURATION_S by default) however
    long its header says it is; a missing ffmpeg raises FFmpegError (not the upload's fault)."""
    limit_s = max_seconds if max_seconds is not None else get_settings().max_duration_s
    limit_frames = int(limit_s * info.sample_rate)
    chunker = _Chunker(info.channels, chunk_frames, limit_frames, on_chunk)
    # Reading a little past the limit tells "exactly max_seconds long" from "cut off at the limit".
    cmd = ffmpeg.build_decode_pcm_cmd(
        src, sample_rate=info.sample_rate, max_seconds=limit_frames / info.sample_rate + 0.05
    )
    started = time.perf_counter()
    try:
        ffmpeg.run(cmd, on_stdout=chunker.write, timeout_s=timeout_s)
        chunker.flush()
    except _TooLong:
        raise UnreadableMedia(
            f"the audio is longer than {limit_s / 60:g} minutes, the most roadie accepts (ROADIE_MAX_DURATION_S="
            f"{limit_s:g}), although its header says {info.duration_s / 60:.1f} minutes"
        ) from None
    except FFmpegError as exc:
        if exc.returncode == 127:
            raise
        raise UnreadableMedia(
            f"could not decode the audio ({ffmpeg.readable_reason(exc)}); the file is truncated or corrupt"
        ) from None
    if chunker.frames == 0:
        raise UnreadableMedia("the file contains no audio samples")
    return DecodeStats(chunker.frames, time.perf_counter() - started)


# ---------------------------------------------------------------- fan-out to the consumers

_END = None


@dataclass(frozen=True)
class StepResult:
    value: Any
    error: str | None
    seconds: float


def queue_depth(channels: int, chunk_frames: int = CHUNK_FRAMES) -> int:
    """Chunks per consumer queue: QUEUE_BYTES of PCM, at least MIN_QUEUE_CHUNKS."""
    return max(MIN_QUEUE_CHUNKS, QUEUE_BYTES // (chunk_frames * 4 * channels))


def describe(exc: BaseException) -> str:
    return str(exc) if isinstance(exc, RoadieError) and str(exc) else f"{type(exc).__name__}: {exc}"


class PcmFanout:
    """Every chunk to every consumer. A consumer is a function of an iterator of chunks that returns its result;
    it runs in its own thread behind a queue of at most `depth` chunks. A consumer that fails (or returns early, like
    fpcalc after its 120 s) keeps draining its queue, so it never blocks the decoder or the others; its error becomes
    data.

    `niced` consumers run at a lower CPU priority (their subprocesses inherit it): they yield to the others."""

    def __init__(
        self,
        consumers: Mapping[str, Callable[[Iterator[np.ndarray]], Any]],
        *,
        niced: Iterable[str] = (),
        nice: int = 0,
        depth: int = MIN_QUEUE_CHUNKS,
    ) -> None:
        self._queues: dict[str, queue.Queue] = {name: queue.Queue(maxsize=depth) for name in consumers}
        self._results: dict[str, StepResult] = {}
        low = set(niced)
        self._threads = [
            threading.Thread(
                target=self._run, args=(name, fn, nice if name in low else 0), name=f"pcm-{name}", daemon=True
            )
            for name, fn in consumers.items()
        ]
        for thread in self._threads:
            thread.start()

    def _run(self, name: str, fn: Callable[[Iterator[np.ndarray]], Any], nice: int) -> None:
        if nice:
            lower_thread_priority(nice)
        chunks = self._queues[name]
        finished = threading.Event()

        def stream() -> Iterator[np.ndarray]:
            while (chunk := chunks.get()) is not _END:
                yield chunk
            finished.set()

        started = time.perf_counter()
        try:
            result = StepResult(fn(stream()), None, time.perf_counter() - started)
        except Exception as exc:
            result = StepResult(None, describe(exc), time.perf_counter() - started)
        self._results[name] = result
        if not finished.is_set():  # returned or failed before the end: keep the decoder moving
            while chunks.get() is not _END:
                pass

    def put(self, chunk: np.ndarray) -> None:
        for name, chunks in self._queues.items():
            try:
                chunks.put(chunk, timeout=STALL_TIMEOUT_S)
            except queue.Full:
                raise ConsumerStalled(f"the {name} step took no audio for {STALL_TIMEOUT_S:g} s") from None

    def close(self) -> dict[str, StepResult]:
        """End of stream: wait for every consumer and return what each made. Call it however the decode ended.
        A consumer still stuck after STALL_TIMEOUT_S (a hung subprocess) is left behind as a failed step."""
        deadline = time.monotonic() + STALL_TIMEOUT_S
        for chunks in self._queues.values():
            with contextlib.suppress(queue.Full):
                chunks.put(_END, timeout=max(0.0, deadline - time.monotonic()))
        for thread in self._threads:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))
        stalled = StepResult(None, f"took no audio for {STALL_TIMEOUT_S:g} s", STALL_TIMEOUT_S)
        return {name: self._results.get(name, stalled) for name in self._queues}


# ---------------------------------------------------------------- consumers that run ffmpeg


def measure_ebur128(chunks: Iterable[np.ndarray], info: MediaInfo, timeout_s: float | None = None) -> LoudnessReading:
    """ffmpeg's ebur128 (true peak on; dual mono for mono) over decoded PCM fed through its stdin as it comes:
    the same samples the numpy meter reads, so the cross-check compares the meters and nothing else."""
    cmd = ffmpeg.build_measure_pcm_cmd(
        info.sample_rate, info.channels, loudness_mod.ebur128_filter(info.channels), info.channel_layout
    )
    feed = (np.ascontiguousarray(chunk, dtype="<f4").data.cast("B") for chunk in chunks)
    result = ffmpeg.run(cmd, stdin_data=feed, timeout_s=timeout_s)
    return loudness_mod.parse_ebur128_summary(result.stderr)


# ---------------------------------------------------------------- the whole signal, for small inputs


@dataclass(frozen=True, eq=False)
class DecodedAudio:
    """A whole decoded signal in memory, float32 frames x channels: for tests, references and short clips only.
    Everything that may see a long upload consumes `decode_stream` instead."""

    samples: np.ndarray
    stream: MediaInfo

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


def decode(src: Path, *, info: MediaInfo | None = None, max_seconds: float | None = None) -> DecodedAudio:
    """The whole signal as one array (see DecodedAudio): `decode_stream`, collected."""
    info = info or ffmpeg.probe(Path(src))
    chunks: list[np.ndarray] = []
    decode_stream(Path(src), info, chunks.append, max_seconds=max_seconds)
    return DecodedAudio(np.concatenate(chunks), info)
