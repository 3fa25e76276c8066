"""Test signals, synthesized here so no fixture file hides what a test checks."""
from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import soundfile as sf

from roadie.sample import music_like  # noqa: F401  (re-exported for the tests)
from tasks.media.ffmpeg import ffmpeg_binary


def sine(freq: float, seconds: float, sr: int, dbfs: float = -20.0, channels: int = 2, phase: float = 0.0) -> np.ndarray:
    t = np.arange(int(round(seconds * sr))) / sr
    mono = 10 ** (dbfs / 20) * np.sin(2 * np.pi * freq * t + phase)
    return np.repeat(mono[:, None], channels, axis=1)


def write_wav(path: Path, data: np.ndarray, sr: int, subtype: str = "PCM_16") -> Path:
    sf.write(str(path), data, sr, subtype=subtype)
    return path


def encode(src: Path, dst: Path, *args: str) -> Path:
    """Re-encode with ffmpeg (format from dst's suffix), e.g. encode(a, b.mp3, '-b:a', '192k')."""
    subprocess.run([ffmpeg_binary(), "-hide_banner", "-loglevel", "error", "-nostdin", "-y", "-i", str(src), *args,
                    str(dst)], check=True)
    return dst
