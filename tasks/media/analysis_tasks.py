"""Prefect tasks around `tasks.media.analysis` and `tasks.media.artwork`: analyse, publish the waveform, the cover.

Making things (decode, cover extraction) never retries: a bad upload stays bad. Publishing (storage, database)
retries on transient errors only.
"""

from __future__ import annotations

import base64
import functools
from pathlib import Path

from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from roadie import limits
from roadie.db.session import session_scope
from roadie.errors import RoadieError
from roadie.progress import in_prefect_run
from roadie.retries import transient_retries
from roadie.storage import get_storage
from tasks import catalog
from tasks.catalog import results
from tasks.catalog.results import WaveformKeys
from tasks.media import analysis, artwork
from tasks.media.analysis import Analysis
from tasks.media.artwork import Artwork, ArtworkKeys
from tasks.media.ffmpeg import MediaInfo
from tasks.media.loudness_tasks import loudness_artifact

# The primary encode is the playable path's longest step: the analysis (done sooner) yields it a little CPU.
# bench/ingest-style runs, 240 s on 2 cores: time to playable 5.45-5.5 s at nice 0, 4.78-4.8 s at nice 3,
# 4.8-5.0 s at 5, 5.1-5.6 s at 7-10 (the analysis then becomes the longest step).
ANALYSIS_NICE = 3


class AnalysisStepFailed(RoadieError):
    """A reprocessing flow's one step produced nothing (the ingest records this as a warning instead)."""


# NO_CACHE: a cache key would hash the waveform and fingerprint inside the result, for nothing.
@task(name="analyze-audio", cache_policy=NO_CACHE)
def analyze_audio(src: Path, info: MediaInfo | None = None, steps: tuple[str, ...] = analysis.STEPS) -> Analysis:
    """One streamed decode feeding the asked-for steps (all by default). `info`: the ingest's one probe. Raises
    InvalidInput (too long, unreadable) only."""
    with limits.cpu_lane("playable"):  # beside the primary encode, off the secondary renditions' CPU
        return limits.run_niced(ANALYSIS_NICE, functools.partial(analysis.analyze_file, src, info=info, steps=steps))


def require(result: Analysis, step: str) -> Analysis:
    """For a flow that runs `step` alone: its failure is the run's failure, with the reason."""
    if getattr(result, step) is None:
        reasons = [w for w in result.warnings if w.startswith(f"{step} unavailable")]
        raise AnalysisStepFailed("; ".join(reasons) or f"{step} unavailable")
    return result


@task(name="publish-waveform", cache_policy=NO_CACHE, **transient_retries())
def publish_waveform(version_id: str, result: Analysis) -> WaveformKeys:
    with session_scope() as session:
        keys = results.save_waveform(session, get_storage(), version_id, result)
    waveform_artifact(version_id, result, keys)
    return keys


@task(name="publish-analysis", cache_policy=NO_CACHE, **transient_retries())
def publish_analysis(version_id: str, result: Analysis) -> WaveformKeys | None:
    """What a version needs before it is playable: waveform and loudness, plus every analysis warning, in one
    transaction. A step that failed is already a warning; the rest is published."""
    with session_scope() as session:
        keys = None
        if result.waveform is not None:
            keys = results.save_waveform(session, get_storage(), version_id, result)
        if result.loudness is not None:
            results.save_loudness(session, version_id, result.loudness)
        catalog.append_warnings(session, version_id, result.warnings)
    if keys is not None:
        waveform_artifact(version_id, result, keys)
    if result.loudness is not None:
        loudness_artifact(version_id, result.loudness)
    return keys


def waveform_artifact(version_id: str, result: Analysis, keys: WaveformKeys) -> None:
    """The whole-track PNG inline (a data URI: the UI cannot read s3:// or file:// links)."""
    if not in_prefect_run():
        return
    lines = [
        f"# Waveform of track version {version_id}",
        "",
        f"{result.duration_s:.1f} s, {result.sample_rate} Hz, {result.channels} channel(s)",
        "",
    ]
    if result.png:
        lines += [f"![waveform](data:image/png;base64,{base64.b64encode(result.png).decode('ascii')})", ""]
    lines += [f"- JSON: `{keys.json_key}`"] + ([f"- PNG: `{keys.png_key}`"] if keys.png_key else [])
    create_markdown_artifact(
        "\n".join(lines), key=f"waveform-{version_id}", description=f"Waveform of track version {version_id}"
    )


@task(name="extract-artwork", cache_policy=NO_CACHE)
def extract_artwork(src: Path, workdir: Path, has_cover: bool | None = None) -> Artwork:
    """The embedded cover, or the default (with a warning when the embedded one is broken)."""
    return artwork.artwork_or_default(src, workdir, has_cover=has_cover)


@task(name="publish-artwork", cache_policy=NO_CACHE, **transient_retries())
def publish_artwork(version_id: str, art: Artwork) -> ArtworkKeys:
    with session_scope() as session:
        keys = results.save_artwork(session, get_storage(), version_id, art)
        catalog.append_warnings(session, version_id, art.warnings)
    return keys
