"""media-ingest: one upload to playable HLS, with its analysis alongside."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

from prefect import flow, get_run_logger
from prefect.futures import PrefectFuture

from roadie.params import Formats, VersionId
from tasks.media.tasks import (
    analyze_audio,
    extract_artwork,
    publish_artwork,
    publish_playable,
    record_fingerprint,
    transcode_rendition,
)
from tasks.versions.report import failure_message, ingest_report
from tasks.versions.scratch import scratch_dir
from tasks.versions.tasks import (
    add_warning,
    discard_outputs,
    fetch_original,
    mark_failed,
    probe_original,
    record_transcode,
    start_processing,
)

T = TypeVar("T")


@flow(name="media-ingest", flow_run_name="ingest-{version_id}", log_prints=False)
def media_ingest(version_id: VersionId, formats: Formats = None) -> dict:
    """Transcode a registered version to HLS and analyse it from one decode, side by side. The version is `ready`
    (playable) once the primary rendition (the first format), its waveform and its loudness are published; the
    other renditions, the fingerprint check and the cover art finish in the same run, each failing as a warning."""
    started = time.monotonic()
    job = start_processing(version_id, formats)
    timings: dict[str, float] = {}
    with scratch_dir("ingest") as workdir:
        submitted: list[PrefectFuture[Any]] = []
        try:
            src = fetch_original(job, workdir)
            info = probe_original(version_id, src, job.formats)
            primary, *others = job.formats
            first = transcode_rendition.submit(version_id, src, info, primary, workdir, True)
            analyzed = analyze_audio.submit(src, info)
            rest = {fmt: transcode_rendition.submit(version_id, src, info, fmt, workdir, False) for fmt in others}
            cover = extract_artwork.submit(src, workdir, info.has_cover)
            submitted = [first, analyzed, cover, *rest.values()]
            first.result()
            result = analyzed.result()
            waveform_keys = publish_playable(version_id, result, [primary])
            timings["playable_s"] = round(time.monotonic() - started, 3)
            get_run_logger().info(
                "version %s is playable (%s) after %.2f s", version_id, primary, timings["playable_s"]
            )
        except Exception as exc:
            for future in submitted:  # nothing may publish after the discard below
                future.wait()
            try:
                discard_outputs(version_id)
            finally:  # storage still down: the version is failed all the same, with the first cause
                mark_failed(version_id, failure_message(exc))
            raise
        duplicates = _finish_as_warning(
            version_id,
            "duplicate check",
            lambda: record_fingerprint(version_id, result.fingerprint) if result.fingerprint is not None else [],
        )
        artwork_keys = _finish_as_warning(version_id, "cover art", lambda: publish_artwork(version_id, cover.result()))
        for fmt, future in rest.items():
            _finish_as_warning(version_id, fmt, future.result, failed_rendition=fmt)
    timings["total_s"] = round(time.monotonic() - started, 3)
    return ingest_report(version_id, result, waveform_keys, artwork_keys, duplicates or [], timings)


def _finish_as_warning(
    version_id: str, what: str, step: Callable[[], T], failed_rendition: str | None = None
) -> T | None:
    """Work after `ready`: a failure is recorded on the playable version, never fails it."""
    try:
        return step()
    except Exception as exc:
        reason = failure_message(exc)
        if failed_rendition:
            record_transcode(version_id, failed_rendition, "failed", reason)
        add_warning(version_id, f"{what} failed: {reason}")
        return None
