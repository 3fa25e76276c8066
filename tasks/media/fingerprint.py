"""Chromaprint fingerprints: fpcalc run on a file or on decoded PCM, and its errors.

An exact hash of a fingerprint misses every re-encode (the original design's bug): two fingerprints are compared
AcoustID-style in `tasks.media.fingerprint_match`, which also picks the index keys. Storing fingerprints and
reporting duplicates is the catalogue's (roadie.catalog.results), scoring the candidates tasks.media.duplicates';
Prefect tasks live in `tasks.media.tasks`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import subprocess
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import numpy as np

from roadie.errors import RoadieError
from roadie.settings import get_settings
from tasks.media.pcm import as_frames

# Chromaprint's default algorithm: 4096-sample frames at 11025 Hz, hopping a third of a frame.
ITEM_SECONDS = 4096 / 3 / 11025
# AcoustID fingerprints the first 120 s; so do we, which bounds the stored items (~970) and the scoring cost.
FINGERPRINT_SECONDS = 120
FPCALC_TIMEOUT_S = 300


class FingerprintError(RoadieError):
    """No fingerprint could be made. Not transient; the ingest records a warning and carries on."""


class FpcalcNotFound(FingerprintError):
    """The fpcalc binary (libchromaprint-tools) is not installed or not where ROADIE_FPCALC_BINARY says."""


class FpcalcFailed(FingerprintError):
    def __init__(self, message: str, returncode: int, stderr: str):
        self.returncode, self.stderr = returncode, stderr
        super().__init__(message)


@dataclass(frozen=True)
class Fingerprint:
    items: tuple[int, ...]  # raw Chromaprint items, uint32
    duration_s: float
    # fpcalc's non-fatal complaints (a decode error after which it still produced a fingerprint).
    warnings: tuple[str, ...] = field(default=(), compare=False)

    @property
    def sha256(self) -> str:
        """Of the little-endian uint32 items: equal only for bit-identical fingerprints."""
        return hashlib.sha256(self.array().astype("<u4").tobytes()).hexdigest()

    def array(self) -> np.ndarray:
        return np.asarray(self.items, dtype=np.uint32)


# ---------------------------------------------------------------- making fingerprints


def fpcalc_binary(fpcalc: str | None = None) -> str:
    name = fpcalc or get_settings().fpcalc_binary
    found = shutil.which(name)
    if not found:
        raise FpcalcNotFound(f"fpcalc not found ({name!r}); install libchromaprint-tools or set ROADIE_FPCALC_BINARY")
    return found


def parse_fpcalc_json(stdout: str, returncode: int, stderr: str) -> Fingerprint:
    """fpcalc prints a good fingerprint and still exits 3 when decoding ends with an error, which ffmpeg-made
    WAVs do at their end ("Error decoding audio frame (End of file)"). So: exit 0 or 3 with items is a fingerprint
    (other decode errors kept as warnings); anything else, or no items, is a failure."""
    errors = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    reason = errors[-1] if errors else f"exit code {returncode}"
    if returncode not in (0, 3):
        raise FpcalcFailed(f"fpcalc failed: {reason}", returncode, stderr)
    try:
        data = json.loads(stdout)
        items = tuple(int(v) for v in data["fingerprint"])
        duration = float(data.get("duration") or 0.0)
    except (ValueError, KeyError, TypeError) as exc:
        raise FpcalcFailed(f"fpcalc printed no fingerprint ({reason}): {stdout[:200]!r}", returncode, stderr) from exc
    if not items:
        raise FpcalcFailed(f"fpcalc printed an empty fingerprint ({reason})", returncode, stderr)
    if any(v < 0 or v > 0xFFFFFFFF for v in items):
        raise FpcalcFailed("fpcalc items are not uint32 (was -signed passed?)", returncode, stderr)
    unexpected = tuple(e for e in errors if "(End of file)" not in e)
    return Fingerprint(items, duration, unexpected)


def _run_fpcalc(cmd: list[str], stdin: bytes | None = None) -> Fingerprint:
    try:
        out = subprocess.run(
            cmd,
            input=stdin,
            stdin=None if stdin is not None else subprocess.DEVNULL,
            capture_output=True,
            timeout=FPCALC_TIMEOUT_S,
        )
    except FileNotFoundError as exc:
        raise FpcalcNotFound(f"fpcalc not found ({cmd[0]!r})") from exc
    except subprocess.TimeoutExpired as exc:
        raise FpcalcFailed(f"fpcalc took longer than {FPCALC_TIMEOUT_S} s", -1, "") from exc
    return parse_fpcalc_json(
        out.stdout.decode("utf-8", "replace"), out.returncode, out.stderr.decode("utf-8", "replace")
    )


def fingerprint_file(path: Path, fpcalc: str | None = None) -> Fingerprint:
    """Fingerprint a file with fpcalc. The absolute path starts with "/", so fpcalc (and the libavformat under it)
    cannot take a file name for an option or a protocol."""
    binary = fpcalc_binary(fpcalc)
    src = Path(path).resolve()
    if not src.is_file():
        raise FpcalcFailed(f"{path} is not a file", 2, "")
    cmd = [binary, "-raw", "-json", "-length", str(FINGERPRINT_SECONDS), str(src)]
    return _run_fpcalc(cmd)


def pcm_to_s16_mono(samples: np.ndarray) -> bytes:
    """Frames x channels floats as mono 16-bit little-endian. Chromaprint averages the channels to mono anyway, so
    downmixing here halves what goes through the pipe without changing the fingerprint's input."""
    x = as_frames(samples)
    # Column by column, in place: a generic mean over axis 1 is ten times slower on frames x channels.
    mono = np.array(x[:, 0], dtype=np.float32)
    for channel in range(1, x.shape[1]):
        mono += x[:, channel]
    mono *= 32767.0 / x.shape[1]
    np.rint(mono, out=mono)
    np.clip(mono, -32768, 32767, out=mono)
    return mono.astype("<i2").tobytes()


def fingerprint_chunks(chunks: Iterable[np.ndarray], sample_rate: int, fpcalc: str | None = None) -> Fingerprint:
    """Fingerprint decoded PCM (chunks of frames x channels, floats in [-1, 1]) by piping its first
    FINGERPRINT_SECONDS to fpcalc's stdin as it arrives: no second decode of the original, no temp file of audio,
    and memory bounded by one chunk. The rest of the stream is only counted: the duration is the signal's own."""
    cmd = [
        fpcalc_binary(fpcalc),
        "-raw",
        "-json",
        "-length",
        str(FINGERPRINT_SECONDS),
        "-format",
        "s16le",
        "-rate",
        str(int(sample_rate)),
        "-channels",
        "1",
        "-",
    ]
    wanted = FINGERPRINT_SECONDS * int(sample_rate)
    frames = sent = 0
    # fpcalc's output is small and comes at the end: files (unnamed, gone on close) rule out a pipe deadlock.
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        try:
            proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=out, stderr=err)
        except FileNotFoundError as exc:
            raise FpcalcNotFound(f"fpcalc not found ({cmd[0]!r})") from exc
        assert proc.stdin is not None
        try:
            for chunk in chunks:
                frames += len(chunk)
                if sent < wanted:
                    part = chunk[: wanted - sent]
                    sent += len(part)
                    try:
                        proc.stdin.write(pcm_to_s16_mono(part))
                    except OSError:  # a broken pipe: fpcalc stopped reading, and its exit code says why
                        sent = wanted
                    if sent >= wanted:  # fpcalc has all it analyses: let it work while the rest is counted
                        _close_quietly(proc.stdin)
            _close_quietly(proc.stdin)
            returncode = proc.wait(timeout=FPCALC_TIMEOUT_S)
        except subprocess.TimeoutExpired as exc:
            raise FpcalcFailed(f"fpcalc took longer than {FPCALC_TIMEOUT_S} s", -1, "") from exc
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        out.seek(0)
        err.seek(0)
        fp = parse_fpcalc_json(out.read().decode("utf-8", "replace"), returncode, err.read().decode("utf-8", "replace"))
    return Fingerprint(fp.items, frames / sample_rate, fp.warnings)


def _close_quietly(stream: IO[bytes]) -> None:
    with contextlib.suppress(OSError):
        stream.close()


def fingerprint_pcm(samples: np.ndarray, sample_rate: int, fpcalc: str | None = None) -> Fingerprint:
    """Fingerprint a whole decoded signal held in memory (see `fingerprint_chunks`)."""
    return fingerprint_chunks([np.asarray(samples)], sample_rate, fpcalc)
