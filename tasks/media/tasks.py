"""Thin Prefect tasks over tasks.media: analyse, encode and publish under the global limits, record in the catalogue,
show artifacts and progress.

Making things (decode, encode, cover extraction) never retries: a bad upload stays bad. Publishing and recording
(storage, database) retry on transient errors only.
"""

from __future__ import annotations

import base64
import functools
import time
from pathlib import Path
from typing import cast
from uuid import UUID

from prefect import get_run_logger, task
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.cache_policies import NO_CACHE

from roadie import catalog, cpu, limits, progress
from roadie.catalog import results, views
from roadie.catalog.results import Artwork, ArtworkKeys, WaveformKeys
from roadie.db.session import session_scope
from roadie.progress import in_prefect_run
from roadie.retries import transient_retries
from roadie.settings import get_settings
from roadie.storage import get_storage
from tasks.media import analysis, artwork, duplicates, fingerprint_match, hls
from tasks.media.analysis import Analysis
from tasks.media.ffmpeg import MediaInfo
from tasks.media.fingerprint import Fingerprint
from tasks.media.fingerprint_match import DuplicateMatch
from tasks.media.loudness import LoudnessResult

RETRY = transient_retries()

# The primary encode is the playable path's longest step: the analysis (done sooner) yields it a little CPU.
# bench/ingest-style runs, 240 s on 2 cores: time to playable 5.45-5.5 s at nice 0, 4.78-4.8 s at nice 3,
# 4.8-5.0 s at 5, 5.1-5.6 s at 7-10 (the analysis then becomes the longest step).
ANALYSIS_NICE = 3
# Without CPU lanes, the secondary renditions yield the CPU to the primary one and the analysis: playable sooner.
SECONDARY_NICE = 10
ENCODE_MARK = "encode slot"


# ---------------------------------------------------------------- analysis: waveform, loudness


# NO_CACHE: a cache key would hash the waveform and fingerprint inside the result, for nothing.
@task(cache_policy=NO_CACHE)
def analyze_audio(src: Path, info: MediaInfo | None = None, steps: tuple[str, ...] = analysis.STEPS) -> Analysis:
    """One streamed decode feeding the asked-for steps (all by default). `info`: the ingest's one probe. Raises
    InvalidInput (too long, unreadable) only."""
    with cpu.cpu_lane("playable"):  # beside the primary encode, off the secondary renditions' CPU
        return cpu.run_niced(ANALYSIS_NICE, functools.partial(analysis.analyze_file, src, info=info, steps=steps))


@task(cache_policy=NO_CACHE, **RETRY)
def publish_waveform(version_id: str, result: Analysis) -> WaveformKeys:
    with session_scope() as session:
        keys = results.save_waveform(session, get_storage(), version_id, result)
    waveform_artifact(version_id, result, keys)
    return keys


@task(cache_policy=NO_CACHE, **RETRY)
def publish_playable(version_id: str, result: Analysis, required: list[str]) -> WaveformKeys | None:
    """What a version needs before it is playable: waveform and loudness, plus every analysis warning, in one
    transaction; then `ready`, once the required renditions' playlists are in storage. A step that failed is
    already a warning; the rest is published. One task, not two: both are writes a retry may repeat, and each task
    run costs the Prefect server its state events and its records."""
    with session_scope() as session:
        keys = None
        if result.waveform is not None:
            keys = results.save_waveform(session, get_storage(), version_id, result)
        if result.loudness is not None:
            results.save_loudness(session, version_id, result.loudness)
        catalog.append_warnings(session, version_id, result.warnings)
    catalog.mark_ready(version_id, required)
    if keys is not None:
        waveform_artifact(version_id, result, keys)
    if result.loudness is not None:
        loudness_artifact(version_id, result.loudness)
    return keys


@task(cache_policy=NO_CACHE, **RETRY)
def record_loudness(version_id: str, result: LoudnessResult) -> None:
    """ffmpeg's values onto the version, the warnings into its list, and a table a person can read."""
    with session_scope() as session:
        results.save_loudness(session, version_id, result)
    loudness_artifact(version_id, result)


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


def loudness_table(result: LoudnessResult) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    for meter, reading in (("ffmpeg ebur128", result.ffmpeg), ("pyloudnorm + numpy", result.pyloudnorm)):
        rows.append(
            {
                "meter": meter,
                "integrated (LUFS)": _round(reading.integrated_lufs),
                "range (LU)": _round(reading.loudness_range_lu),
                "true peak (dBTP)": _round(reading.true_peak_dbtp),
            }
        )
    rows.append(
        {"meter": "difference", "integrated (LUFS)": result.delta_lu, "range (LU)": None, "true peak (dBTP)": None}
    )
    return rows


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


def loudness_artifact(version_id: str, result: LoudnessResult) -> None:
    if not in_prefect_run():
        return
    verdict = "the meters agree" if result.agrees else "the meters DISAGREE: " + "; ".join(result.warnings)
    create_table_artifact(
        loudness_table(result),
        key=f"loudness-{version_id}",
        description=f"Loudness of track version {version_id}: {verdict}",
    )


# ---------------------------------------------------------------- artwork


@task(cache_policy=NO_CACHE)
def extract_artwork(src: Path, workdir: Path, has_cover: bool | None = None) -> Artwork:
    """The embedded cover, or the default (with a warning when the embedded one is broken)."""
    return artwork.artwork_or_default(src, workdir, has_cover=has_cover)


@task(cache_policy=NO_CACHE, **RETRY)
def publish_artwork(version_id: str, art: Artwork) -> ArtworkKeys:
    with session_scope() as session:
        keys = results.save_artwork(session, get_storage(), version_id, art)
        catalog.append_warnings(session, version_id, art.warnings)
    return keys


# ---------------------------------------------------------------- fingerprint and duplicates


@task(cache_policy=NO_CACHE, **RETRY)
def record_fingerprint(
    version_id: str, fp: Fingerprint, threshold: float = fingerprint_match.DUPLICATE_THRESHOLD
) -> list[DuplicateMatch]:
    """Store the fingerprint, look for other tracks with the same audio, report each one found. One transaction,
    so a retry after a lost connection starts clean."""
    with session_scope() as session:
        results.store_fingerprint(session, version_id, fp, fingerprint_match.index_keys(fp))
        matches = duplicates.find_duplicates(session, version_id, fp, threshold)
        results.report_duplicates(session, version_id, matches)
    if matches:
        create_table_artifact(
            [
                {
                    "matched version": m.version_id,
                    "track": m.track_id,
                    "score": m.score,
                    "bit error rate": m.ber,
                    "offset (s)": m.offset_s,
                }
                for m in matches
            ],
            key=f"duplicates-{version_id}",
            description=f"Track version {version_id} has the same audio as {len(matches)} other version(s)",
        )
    return matches


# ---------------------------------------------------------------- HLS renditions


class _ProgressArtifact:
    """A Prefect progress artifact per rendition, mirrored to CLI listeners. The artifact moves by 5 % at least and
    at most once every UPDATE_EVERY_S, then at 100 %: a short track's encode is over in a fraction of a second, and
    each update is an API call (a dozen per rendition was a tenth of a short ingest's own CPU)."""

    UPDATE_EVERY_S = 1.0

    def __init__(self, version_id: str, fmt: str):
        self.version_id, self.fmt, self.last = version_id, fmt, 0.0
        self.last_at = time.monotonic()
        # Called from sync code, this returns the id: Prefect's async_dispatch types it as maybe a coroutine.
        self.artifact_id = cast(
            UUID,
            create_progress_artifact(
                progress=0.0, key=f"transcode-{fmt.replace('_', '-')}", description=f"{fmt} encode of {version_id}"
            ),
        )

    def __call__(self, percent: float) -> None:
        progress.report(self.version_id, self.fmt, percent)
        now = time.monotonic()
        if (percent - self.last >= 5 and now - self.last_at >= self.UPDATE_EVERY_S) or (percent >= 100 > self.last):
            self.last, self.last_at = percent, now
            update_progress_artifact(self.artifact_id, progress=percent)


@task(task_run_name="transcode-{fmt}")
def transcode_rendition(
    version_id: str, src: Path, info: MediaInfo, fmt: str, workdir: Path, primary: bool
) -> hls.Rendition:
    if primary:  # one slot of the per-minute rate per version, taken here so the analysis need not wait for it
        limits.transcode_started()
    reporter = _ProgressArtifact(version_id, fmt)
    logger = get_run_logger()
    with limits.encode_slot(), cpu.cpu_lane("playable" if primary else "background") as pinned:
        # Both lines fall inside the slot's hold: their timestamps bound when the encode really ran, which is what
        # bench/load checks the limit against (Prefect's own slot events are emitted after the release returns).
        logger.info("%s: %s encode started", ENCODE_MARK, fmt)
        local = hls.encode_rendition(
            src,
            workdir / fmt,
            fmt,
            source_duration_s=info.duration_s,
            source_codec=info.codec,
            segment_seconds=get_settings().hls_segment_seconds,
            on_progress=reporter,
            nice=0 if primary or pinned else SECONDARY_NICE,
        )
        logger.info("%s: %s encode finished", ENCODE_MARK, fmt)
    rendition = publish_rendition(version_id, local)
    return rendition


@task(**RETRY)
def publish_rendition(version_id: str, local: hls.LocalRendition) -> hls.Rendition:
    storage = get_storage()
    with catalog.holding(version_id):  # a run that lost the version publishes nothing, and a newer claim waits
        rendition = hls.publish_rendition(storage, version_id, local)
        catalog.record_transcode(
            version_id,
            local.format,
            status="ready",
            storage=storage,
            playlist_key=rendition.playlist_key,
            playlist_size=rendition.playlist_size,
            prefix=rendition.prefix,
            bandwidth=rendition.bandwidth,
            segment_count=len(rendition.segment_keys),
            duration_s=rendition.duration_s,
        )
        publish_master(version_id)
    return rendition


def publish_master(version_id: str) -> str:
    """Rewrite `{version_id}/master.m3u8` from the ready renditions. A single object write: never half a list."""
    storage = get_storage()
    variants = [
        hls.VariantEntry(
            t.format,
            f"{t.format}/playlist.m3u8",
            t.bandwidth or hls.HLS_FORMATS[t.format][2],
            None,
            hls.HLS_FORMATS[t.format][1],
        )
        for t in views.ready_transcodes(version_id)
    ]
    key = views.master_key(version_id)
    storage.put_bytes(key, hls.build_master_playlist(variants).encode(), "application/vnd.apple.mpegurl")
    return key
