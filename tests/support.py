"""Test signals, synthesized here so no fixture file hides what a test checks."""
from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import soundfile as sf

from tasks.media.ffmpeg import ffmpeg_binary


def sine(freq: float, seconds: float, sr: int, dbfs: float = -20.0, channels: int = 2, phase: float = 0.0) -> np.ndarray:
    t = np.arange(int(round(seconds * sr))) / sr
    mono = 10 ** (dbfs / 20) * np.sin(2 * np.pi * freq * t + phase)
    return np.repeat(mono[:, None], channels, axis=1)


def music_like(seconds: float, sr: int, channels: int = 2, seed: int = 0, gain_db: float = -12.0) -> np.ndarray:
    """Notes with harmonics over a beat: fingerprints like music, unlike a pure tone."""
    rng = np.random.default_rng(seed)
    n = int(round(seconds * sr))
    out = np.zeros(n)
    scale = 220.0 * 2 ** (np.array([0, 2, 3, 5, 7, 8, 10, 12]) / 12)
    note_len = int(sr * rng.uniform(0.2, 0.4))
    for start in range(0, n, note_len):
        length = min(note_len, n - start)
        t = np.arange(length) / sr
        f0 = rng.choice(scale) * rng.choice([1, 2])
        tone = sum((0.6 / h) * np.sin(2 * np.pi * f0 * h * t) for h in range(1, 5))
        out[start:start + length] += tone * np.exp(-3 * t)
    beat = int(sr * 0.5)
    for start in range(0, n, beat):
        length = min(int(sr * 0.05), n - start)
        out[start:start + length] += rng.normal(0, 0.5, length) * np.exp(-np.arange(length) / (sr * 0.01))
    out /= np.max(np.abs(out)) + 1e-9
    out *= 10 ** (gain_db / 20)
    if channels == 1:
        return out[:, None]
    pan = np.linspace(0.8, 1.0, channels)
    return out[:, None] * pan[None, :]


def write_wav(path: Path, data: np.ndarray, sr: int, subtype: str = "PCM_16") -> Path:
    sf.write(str(path), data, sr, subtype=subtype)
    return path


def encode(src: Path, dst: Path, *args: str) -> Path:
    """Re-encode with ffmpeg (format from dst's suffix), e.g. encode(a, b.mp3, '-b:a', '192k')."""
    subprocess.run([ffmpeg_binary(), "-hide_banner", "-loglevel", "error", "-nostdin", "-y", "-i", str(src), *args,
                    str(dst)], check=True)
    return dst
