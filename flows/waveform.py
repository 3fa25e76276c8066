"""waveform: redraw one version's waveform JSON and PNG (reprocessing; media-ingest does this for new uploads)."""

from __future__ import annotations

from prefect import flow

from roadie.params import VersionId
from tasks.media.analysis import require
from tasks.media.tasks import analyze_audio, publish_waveform
from tasks.versions.scratch import scratch_dir
from tasks.versions.tasks import fetch_original, load_job


@flow(name="waveform", flow_run_name="waveform-{version_id}")
def waveform(version_id: VersionId) -> dict:
    """Decode the original, draw the waveform, and replace the published one. The version keeps its status."""
    job = load_job(version_id)
    with scratch_dir("waveform") as workdir:
        src = fetch_original(job, workdir)
        result = require(analyze_audio(src, steps=("waveform",)), "waveform")
    return publish_waveform(version_id, result).as_dict()
