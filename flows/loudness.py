"""loudness: remeasure one version (reprocessing; media-ingest does this for new uploads)."""

from __future__ import annotations

from prefect import flow

from roadie.params import VersionId
from tasks.media.analysis import require_loudness
from tasks.media.tasks import analyze_audio, record_loudness
from tasks.versions.scratch import scratch_dir
from tasks.versions.tasks import fetch_original, load_job


@flow(name="loudness", flow_run_name="loudness-{version_id}")
def loudness(version_id: VersionId) -> dict:
    """EBU R128 by ffmpeg, cross-checked by the numpy meter; the values and a table artifact replace the old."""
    job = load_job(version_id)
    with scratch_dir("loudness") as workdir:
        src = fetch_original(job, workdir)
        result = analyze_audio(src, steps=("loudness",))
        measured = require_loudness(result)
    record_loudness(version_id, measured)
    return result.as_dict()["loudness"]
