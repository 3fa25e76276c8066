"""media-ingest: one upload to playable HLS, with its analysis alongside."""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

from prefect import flow, get_run_logger

from roadie import limits
from roadie.settings import get_settings
from tasks import catalog, versions
from tasks.media.transcode import transcode_rendition


@flow(name="media-ingest", flow_run_name="ingest-{version_id}", log_prints=False)
def media_ingest(version_id: str, formats: list[str] | None = None) -> dict:
    """Transcode a registered version to HLS; `ready` once the primary rendition (the first format) is out."""
    started = time.monotonic()
    log = get_run_logger()
    job = versions.start_processing(version_id, formats)
    timings: dict[str, float] = {}
    tmp_root = get_settings().tmp_dir
    with tempfile.TemporaryDirectory(prefix="roadie-ingest-", dir=tmp_root) as tmp:
        workdir = Path(tmp)
        submitted = []
        try:
            src = versions.fetch_original(job, workdir)
            info = versions.probe_original(version_id, src)
            limits.transcode_started()
            primary, *others = job.formats
            first = transcode_rendition.submit(version_id, src, info, primary, workdir, True)
            rest = {fmt: transcode_rendition.submit(version_id, src, info, fmt, workdir, False) for fmt in others}
            submitted = [first, *rest.values()]
            first.result()
            versions.mark_ready(version_id, [primary])
            timings["playable_s"] = round(time.monotonic() - started, 3)
            log.info("version %s is playable (%s) after %.2f s", version_id, primary, timings["playable_s"])
            for fmt, future in rest.items():
                try:
                    future.result()
                except Exception as exc:  # a secondary rendition is a warning, not a failed version
                    catalog.record_transcode(version_id, fmt, status="failed", error=versions.failure_message(exc))
                    versions.add_warning(version_id, f"{fmt} failed: {versions.failure_message(exc)}")
        except Exception as exc:
            for future in submitted:  # nothing may publish after the discard below
                future.wait()
            versions.discard_outputs(version_id)
            versions.mark_failed(version_id, versions.failure_message(exc))
            raise
    timings["total_s"] = round(time.monotonic() - started, 3)
    return {**catalog.describe_version(version_id), "timings": timings}
