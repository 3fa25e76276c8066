"""What a run says about its version: the reason it failed, and the ingest's result."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from sqlalchemy.exc import DBAPIError

from roadie.catalog import views
from roadie.errors import InvalidInput, is_transient, redact
from tasks.media import ffmpeg

if TYPE_CHECKING:
    from roadie.catalog.results import ArtworkKeys, WaveformKeys
    from tasks.media.analysis import Analysis
    from tasks.media.fingerprint_match import DuplicateMatch


def failure_message(exc: BaseException) -> str:
    """What a person reads in track_versions.error: the cause, and what to do about it (never a secret)."""
    if isinstance(exc, InvalidInput):
        return redact(exc)
    if isinstance(exc, ffmpeg.FFmpegError):
        return redact(f"could not transcode the upload ({exc}); check that it is a complete, playable audio file")
    if is_transient(exc):
        what = "database" if isinstance(exc, DBAPIError) else "storage"
        return redact(f"{what} unavailable after retries ({type(exc).__name__}: {exc}); retry the job")
    return redact(f"internal error ({type(exc).__name__}: {exc}); retry the job, and report it if it persists")


def ingest_report(
    version_id: str,
    analysis: Analysis,
    waveform_keys: WaveformKeys | None,
    artwork_keys: ArtworkKeys | None,
    duplicates: Sequence[DuplicateMatch],
    timings: dict[str, float],
) -> dict[str, Any]:
    """What `roadie ingest --json` and the flow's result show: the version as stored, plus what only this run
    knows (both loudness meters and their comparison, whether the cover was embedded, the duplicate scores)."""
    report = views.describe_version(version_id)
    if analysis.loudness is not None:
        report["loudness"] = analysis.as_dict()["loudness"]
    if waveform_keys is not None:
        report["waveform"] = waveform_keys.as_dict()
    if artwork_keys is not None:
        report["artwork"] = artwork_keys.as_dict()
    report["duplicates"] = [match.as_dict() for match in duplicates]
    return {**report, "timings": timings}
