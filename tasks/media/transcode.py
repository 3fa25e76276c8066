"""Prefect tasks around the HLS functions: encode under the global limits, publish, record, report progress."""

from __future__ import annotations

import time
from pathlib import Path

from prefect import get_run_logger, task
from prefect.artifacts import create_progress_artifact, update_progress_artifact

from roadie import limits, progress
from roadie.retries import transient_retries
from roadie.storage import get_storage
from tasks import catalog
from tasks.media import hls
from tasks.media.ffmpeg import MediaInfo

# Without CPU lanes, the secondary renditions yield the CPU to the primary one and the analysis: playable sooner.
SECONDARY_NICE = 10
ENCODE_MARK = "encode slot"


class _ProgressArtifact:
    """A Prefect progress artifact per rendition, mirrored to CLI listeners. The artifact moves by 5 % at least and
    at most once every UPDATE_EVERY_S, then at 100 %: a short track's encode is over in a fraction of a second, and
    each update is an API call (a dozen per rendition was a tenth of a short ingest's own CPU)."""

    UPDATE_EVERY_S = 1.0

    def __init__(self, version_id: str, fmt: str):
        self.version_id, self.fmt, self.last = version_id, fmt, 0.0
        self.last_at = time.monotonic()
        self.artifact_id = create_progress_artifact(
            progress=0.0, key=f"transcode-{fmt.replace('_', '-')}", description=f"{fmt} encode of {version_id}"
        )

    def __call__(self, percent: float) -> None:
        progress.report(self.version_id, self.fmt, percent)
        now = time.monotonic()
        if (percent - self.last >= 5 and now - self.last_at >= self.UPDATE_EVERY_S) or (percent >= 100 > self.last):
            self.last, self.last_at = percent, now
            update_progress_artifact(self.artifact_id, progress=percent)


@task(name="transcode-rendition", task_run_name="transcode-{fmt}")
def transcode_rendition(
    version_id: str, src: Path, info: MediaInfo, fmt: str, workdir: Path, primary: bool
) -> hls.Rendition:
    from roadie.settings import get_settings

    if primary:  # one slot of the per-minute rate per version, taken here so the analysis need not wait for it
        limits.transcode_started()
    mark_transcoding(version_id, fmt)
    reporter = _ProgressArtifact(version_id, fmt)
    logger = get_run_logger()
    with limits.encode_slot(), limits.cpu_lane("playable" if primary else "background") as pinned:
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


# Its own task so that a lost database connection is retried here, not the whole encode (or nothing at all).
@task(name="mark-transcoding", **transient_retries())
def mark_transcoding(version_id: str, fmt: str) -> None:
    catalog.record_transcode(version_id, fmt, status="processing")


@task(name="publish-rendition", **transient_retries())
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
        for t in catalog.ready_transcodes(version_id)
    ]
    key = hls.master_key(version_id)
    storage.put_bytes(key, hls.build_master_playlist(variants).encode(), "application/vnd.apple.mpegurl")
    return key
