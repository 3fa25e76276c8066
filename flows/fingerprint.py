"""fingerprint: refingerprint one version and look for duplicates again (reprocessing)."""

from __future__ import annotations

from prefect import flow

from roadie.params import VersionId
from tasks import versions
from tasks.media.analysis_tasks import analyze_audio, require
from tasks.media.fingerprint_tasks import record_fingerprint


@flow(name="fingerprint", flow_run_name="fingerprint-{version_id}")
def fingerprint(version_id: VersionId) -> dict:
    """Chromaprint of the original, stored; every other track with the same audio is reported (once)."""
    job = versions.load_job(version_id)
    with versions.scratch_dir("fingerprint") as workdir:
        src = versions.fetch_original(job, workdir)
        result = require(analyze_audio(src, steps=("fingerprint",)), "fingerprint")
    matches = record_fingerprint(version_id, result.fingerprint)
    return {
        "version_id": version_id,
        "items": len(result.fingerprint.items),
        "duplicates": [m.as_dict() for m in matches],
    }
