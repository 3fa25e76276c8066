"""Music-like test audio: notes with harmonics over a beat. It fingerprints and measures like music,
unlike a pure tone, and needs no file shipped with the project."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf


def music_like(seconds: float, sr: int, channels: int = 2, seed: int = 0, gain_db: float = -12.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n = round(seconds * sr)
    out = np.zeros(n)
    scale = 220.0 * 2 ** (np.array([0, 2, 3, 5, 7, 8, 10, 12]) / 12)
    note_len = int(sr * rng.uniform(0.2, 0.4))
    for start in range(0, n, note_len):
        length = min(note_len, n - start)
        t = np.arange(length) / sr
        f0 = rng.choice(scale) * rng.choice([1, 2])
        tone = sum((0.6 / h) * np.sin(2 * np.pi * f0 * h * t) for h in range(1, 5))
        out[start : start + length] += tone * np.exp(-3 * t)
    beat = int(sr * 0.5)
    for start in range(0, n, beat):
        length = min(int(sr * 0.05), n - start)
        out[start : start + length] += rng.normal(0, 0.5, length) * np.exp(-np.arange(length) / (sr * 0.01))
    out /= np.max(np.abs(out)) + 1e-9
    out *= 10 ** (gain_db / 20)
    if channels == 1:
        return out[:, None]
    pan = np.linspace(0.8, 1.0, channels)
    return out[:, None] * pan[None, :]


def write_sample(path: Path, seconds: float = 30.0, sr: int = 48000, channels: int = 2, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), music_like(seconds, sr, channels, seed), sr, subtype="PCM_16")
    return path
