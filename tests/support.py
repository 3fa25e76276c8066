"""Test signals, synthesized here so no fixture file hides what a test checks."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import numpy as np
import soundfile as sf

from roadie.sample_audio import music_like  # noqa: F401  (re-exported for the tests)
from tasks.media import loudness, loudness_meter
from tasks.media.ffmpeg import ffmpeg_binary


def stack_env(
    home: Path,
    database_url: str,
    s3_endpoint: str,
    storage_prefix: str,
    key: str = "roadie",
    secret: str = "roadie-secret",
) -> dict[str, str]:
    """The ROADIE_* settings of a whole roadie under test: its home and scratch folder under `home`, its database,
    and its objects under s3://roadie/<storage_prefix> on an S3 endpoint that takes `key` and `secret`."""
    return {
        "ROADIE_HOME": str(home / "home"),
        "ROADIE_TMP_DIR": str(home / "tmp"),
        "ROADIE_DATABASE_URL": database_url,
        "ROADIE_STORAGE_URL": f"s3://roadie/{storage_prefix}",
        "ROADIE_S3_ENDPOINT_URL": s3_endpoint,
        "ROADIE_S3_ACCESS_KEY": key,
        "ROADIE_S3_SECRET_KEY": secret,
    }


def sine(
    freq: float, seconds: float, sr: int, dbfs: float = -20.0, channels: int = 2, phase: float = 0.0
) -> np.ndarray:
    t = np.arange(round(seconds * sr)) / sr
    mono = 10 ** (dbfs / 20) * np.sin(2 * np.pi * freq * t + phase)
    return np.repeat(mono[:, None], channels, axis=1)


def write_wav(path: Path, data: np.ndarray, sr: int, subtype: str = "PCM_16") -> Path:
    sf.write(str(path), data, sr, subtype=subtype)
    return path


def encode(src: Path, dst: Path, *args: str) -> Path:
    """Re-encode with ffmpeg (format from dst's suffix), e.g. encode(a, b.mp3, '-b:a', '192k')."""
    subprocess.run(
        [ffmpeg_binary(), "-hide_banner", "-loglevel", "error", "-nostdin", "-y", "-i", str(src), *args, str(dst)],
        check=True,
    )
    return dst


def new_version(session, warnings: list[str] | None = None):
    """A track version row (with its owner, track and original asset) to hang analysis results on."""
    import uuid

    from roadie.db.models import Asset, Track, TrackVersion, User

    user = User(username=f"artist-{uuid.uuid4().hex[:8]}")
    asset = Asset(bucket="roadie", key=f"originals/{uuid.uuid4()}/a.wav", size_bytes=1)
    session.add_all([user, asset])
    session.flush()
    track = Track(owner_user_id=user.id, title="t")
    session.add(track)
    session.flush()
    version = TrackVersion(track_id=track.id, original_asset_id=asset.id, warnings=list(warnings or []))
    session.add(version)
    session.flush()
    return version


def both_meters(path: Path, samples: np.ndarray, sample_rate: int) -> loudness.LoudnessResult:
    """ffmpeg's ebur128 on the file beside the numpy meter on the same samples, compared: the cross-check the
    analysis makes on its one decode, here on a test signal held whole."""
    frames = np.asarray(samples)
    channels = 1 if frames.ndim == 1 else frames.shape[1]
    measured = loudness.measure_ffmpeg(Path(path), channels)
    return loudness.compare_loudness(
        measured, loudness_meter.measure_pcm(frames, sample_rate), len(frames) / sample_rate
    )


T = TypeVar("T")


def wait_for(check: Callable[[], T], timeout_s: float, what: str, poll_s: float = 0.5) -> T:
    """Poll `check` until it returns something truthy; TimeoutError naming `what` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(poll_s)
    raise TimeoutError(f"{what} after {timeout_s:.0f} s")


def run_sql(url: str, query: str, **params):
    """One statement on the database at `url`, in its own transaction and engine: its rows, or [] when it returns
    none. The stacks of the e2e, Docker and security tests read and poke roadie's tables through this."""
    import sqlalchemy as sa

    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            result = conn.execute(sa.text(query), params)
            return result.all() if result.returns_rows else []
    finally:
        engine.dispose()
