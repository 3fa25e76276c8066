"""transcode: rebuild HLS renditions of one version (reprocessing; media-ingest does this for new uploads)."""

from __future__ import annotations

from prefect import flow

from roadie.params import Formats, VersionId
from tasks import catalog, versions
from tasks.media.transcode import transcode_rendition


@flow(name="transcode", flow_run_name="transcode-{version_id}")
def transcode(version_id: VersionId, formats: Formats = None) -> dict:
    """Re-encode and republish the given renditions. The version keeps its status; failures are recorded per
    rendition and fail the run."""
    wanted = catalog.parse_formats(formats)
    job = versions.load_job(version_id)
    with versions.scratch_dir("transcode") as workdir:
        src = versions.fetch_original(job, workdir)
        info = versions.probe_original(version_id, src)
        futures = {
            fmt: transcode_rendition.submit(version_id, src, info, fmt, workdir, i == 0) for i, fmt in enumerate(wanted)
        }
        failed = []
        for fmt, future in futures.items():
            try:
                future.result()
            except Exception as exc:
                catalog.record_transcode(version_id, fmt, status="failed", error=versions.failure_message(exc))
                failed.append(f"{fmt}: {versions.failure_message(exc)}")
    if failed:
        raise RuntimeError("; ".join(failed))
    return catalog.describe_version(version_id)
