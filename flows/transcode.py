"""transcode: rebuild HLS renditions of one version (reprocessing; media-ingest does this for new uploads)."""

from __future__ import annotations

from prefect import flow

from roadie.catalog import inputs, views
from roadie.params import Formats, VersionId
from tasks.media.tasks import transcode_rendition
from tasks.versions.report import failure_message
from tasks.versions.scratch import scratch_dir
from tasks.versions.tasks import fetch_original, load_job, probe_original, record_transcode


@flow(name="transcode", flow_run_name="transcode-{version_id}")
def transcode(version_id: VersionId, formats: Formats = None) -> dict:
    """Re-encode and republish the given renditions. The version keeps its status; failures are recorded per
    rendition and fail the run."""
    wanted = inputs.parse_formats(formats)
    job = load_job(version_id)
    with scratch_dir("transcode") as workdir:
        src = fetch_original(job, workdir)
        info = probe_original(version_id, src, wanted)
        futures = {
            fmt: transcode_rendition.submit(version_id, src, info, fmt, workdir, i == 0) for i, fmt in enumerate(wanted)
        }
        failed = []
        for fmt, future in futures.items():
            try:
                future.result()
            except Exception as exc:
                record_transcode(version_id, fmt, "failed", failure_message(exc))
                failed.append(f"{fmt}: {failure_message(exc)}")
    if failed:
        raise RuntimeError("; ".join(failed))
    return views.describe_version(version_id)
