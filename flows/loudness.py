"""loudness: remeasure one version (reprocessing; media-ingest does this for new uploads)."""

from __future__ import annotations

from prefect import flow

from roadie.params import VersionId
from tasks import versions
from tasks.media.analysis_tasks import analyze_audio, require
from tasks.media.loudness_tasks import record_loudness


@flow(name="loudness", flow_run_name="loudness-{version_id}")
def loudness(version_id: VersionId) -> dict:
    """EBU R128 by ffmpeg, cross-checked by the numpy meter; the values and a table artifact replace the old."""
    job = versions.load_job(version_id)
    with versions.scratch_dir("loudness") as workdir:
        src = versions.fetch_original(job, workdir)
        result = require(analyze_audio(src, steps=("loudness",)), "loudness")
    record_loudness(version_id, result.loudness)
    return result.as_dict()["loudness"]
