"""Prefect tasks around `tasks.media.analysis` and `tasks.media.artwork`: analyse, publish the waveform, the cover.

Making things (decode, cover extraction) never retries: a bad upload stays bad. Publishing (storage, database)
retries on transient errors only.
"""
from __future__ import annotations

from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from roadie.db.session import session_scope
from roadie.retries import transient_retries
from roadie.storage import get_storage
from tasks.media import analysis, artwork
from tasks.media.analysis import Analysis, WaveformKeys
from tasks.media.artwork import Artwork, ArtworkKeys


# NO_CACHE: the default cache key would hash the whole PCM inside the result.
@task(name="analyze-audio", cache_policy=NO_CACHE, tags=["analysis"])
def analyze_audio(src: Path, waveform_pps: int = analysis.WAVEFORM_PPS) -> Analysis:
    """One decode, then waveform, both loudness meters and the fingerprint. Raises UnreadableMedia only."""
    return analysis.analyze_file(src, waveform_pps=waveform_pps)


@task(name="publish-waveform", cache_policy=NO_CACHE, **transient_retries())
def publish_waveform(version_id: str, result: Analysis) -> WaveformKeys:
    with session_scope() as session:
        return analysis.save_waveform(session, get_storage(), version_id, result)


@task(name="extract-artwork", cache_policy=NO_CACHE, tags=["analysis"])
def extract_artwork(src: Path, workdir: Path, has_cover: bool | None = None) -> Artwork:
    """The embedded cover, or the default (with a warning when the embedded one is broken)."""
    return artwork.artwork_or_default(src, workdir, has_cover=has_cover)


@task(name="publish-artwork", cache_policy=NO_CACHE, **transient_retries())
def publish_artwork(version_id: str, art: Artwork) -> ArtworkKeys:
    with session_scope() as session:
        return artwork.save_artwork(session, get_storage(), version_id, art)
